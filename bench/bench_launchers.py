"""The small arena through each launcher on this machine, in one invocation: runs per hour and each launcher's cost per job.

For each launcher (joblib, `hydra/launcher=slurm_local`: submitit's local executor, `hydra/launcher=ray_cluster`: a local
Ray cluster started by the sweep), `clarena-arena` is timed end to end (process start included) twice in a fresh arena:
the first call runs `--runs` runs (seeds 0..runs-1 of Finetuning on Split MNIST, 2 tasks, 5 training batches per task,
the bundled MNIST sample), two at a time; the second call sends the same sweep again, every run already finished, so
it times what the launcher costs with no training (a Python process per job for joblib's loky pool and for submitit, a
Ray cluster and its workers for Ray). Reported: runs per hour of the first call, and per job, the extra wall time of
each launcher over joblib in both calls. The report notebook (papermill) is left out: its cost is per sweep, the same
for every launcher. The runs' matrices must be the same through every launcher (checked).

    OMP_NUM_THREADS=1 python bench/bench_launchers.py --runs 4 --json bench/results/launchers.jsonl

Needs the cluster extra (pip install -e ".[cluster]") for slurm_local and ray_cluster.
"""
import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from common import timed

SMALL = ["model/algorithm=finetuning", "data=split_mnist", "data.num_tasks=2", "trainer.limit_train_batches=5", "measure_fwt=false",
         "trainer.enable_progress_bar=false", "arena.name=bench", "~hydra.callbacks.arena_report"]
LAUNCHERS = {"joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
             "slurm_local": ["hydra/launcher=slurm_local", "hydra.sweeper.max_batch_size=2"],  # the local executor has no queue
             "ray_cluster": ["hydra/launcher=ray_cluster", "hydra.launcher.ray.init.num_cpus=2"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--launchers", nargs="+", default=list(LAUNCHERS), choices=list(LAUNCHERS))
    ap.add_argument("--json", help="also append the JSON line to this file")
    a = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    seeds = "seed=" + ",".join(str(s) for s in range(a.runs))
    res, matrices = {}, {}
    with tempfile.TemporaryDirectory() as d:
        for name in a.launchers:
            cmd = [sys.executable, "-c", "from clarena.arena import main; main()", *SMALL, seeds, *LAUNCHERS[name],
                   f"paths.data_dir={d}/none", f"paths.log_dir={d}/{name}"]
            first, second = timed(cmd, env), timed(cmd, env)
            runs = [json.loads(p.read_text()) for p in sorted(Path(d, name, "arena", "bench", "runs").glob("*/metrics.json"))]
            assert len(runs) == a.runs, f"{name}: {len(runs)} of {a.runs} runs finished"
            matrices[name] = {m["seed"]: m["acc_matrix"] for m in runs}
            res[name] = dict(first_s=round(first, 2), second_s=round(second, 2), runs_per_hour=round(a.runs / first * 3600),
                             mean_run_loop_s=round(sum(m["total_wall_s"] for m in runs) / a.runs, 2))
            print(f"{name:12s} {a.runs} runs {first:7.2f} s ({res[name]['runs_per_hour']} runs/hour), again (all skipped) {second:6.2f} s",
                  flush=True)
    ref = res.get("joblib")
    for name, r in res.items():
        if ref and name != "joblib":
            r["overhead_per_job_s"] = round((r["first_s"] - ref["first_s"]) / a.runs, 2)
            r["overhead_per_skipped_job_s"] = round((r["second_s"] - ref["second_s"]) / a.runs, 2)
            print(f"{name:12s} per job over joblib: {r['overhead_per_job_s']:+.2f} s running, {r['overhead_per_skipped_job_s']:+.2f} s skipped")
    same = all(m == next(iter(matrices.values())) for m in matrices.values())
    print("same matrices through every launcher:", same)
    line = dict(runs=a.runs, parallel=2, cpu_count=os.cpu_count(), load_avg_1m=round(os.getloadavg()[0], 2), launchers=res,
                same_matrices=same)
    print(json.dumps(line))
    if a.json:
        with open(a.json, "a") as f: f.write(json.dumps(line) + "\n")
    if not same: sys.exit("the matrices differ between launchers")


if __name__ == "__main__":
    main()
