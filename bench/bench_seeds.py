"""Several seeds of a small experiment at once on one device, against one seed alone, in one invocation.

Times, end to end (process start included), `clarena-train` for one seed and then `clarena-train -m` for `--seeds`
seeds with `hydra/launcher=parallel` (all runs at once, each its own process sharing the device), and prints both
wall times and their ratio, with each run's own loop time and final average accuracy (the same seed gives the same
result whether it runs alone or beside others). Target on an H100: 8 seeds of the default experiment in under 3x
the time of one.

    python bench/bench_seeds.py --seeds 8 -- trainer=gpu speed.capture=true
    OMP_NUM_THREADS=1 python bench/bench_seeds.py --seeds 2 -- data.num_tasks=3      # a CPU smoke run

Anything after `--` is passed to every run (the default experiment otherwise).
"""
import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from common import timed


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--json", help="also write the JSON line to this file")
    ap.add_argument("overrides", nargs="*", help="clarena-train overrides for every run (after --)")
    a = ap.parse_args()
    env = {**os.environ}
    base = [sys.executable, "-m", "clarena.train", "trainer.enable_progress_bar=false", *a.overrides]
    with tempfile.TemporaryDirectory() as d:
        one = timed(base + ["seed=0", f"paths.output_dir={d}/one"], env)
        seeds = ",".join(str(s) for s in range(a.seeds))
        many = timed(base[:3] + ["-m"] + base[3:] + [f"seed={seeds}", "hydra/launcher=parallel", f"hydra.launcher.n_jobs={a.seeds}",
                             f"hydra.sweep.dir={d}/many"], env)
        m1 = json.loads(Path(d, "one", "metrics.json").read_text())
        ms = [json.loads(Path(d, "many", str(k), "metrics.json").read_text()) for k in range(a.seeds)]
    r = dict(seeds=a.seeds, overrides=a.overrides, one_e2e_s=round(one, 2), many_e2e_s=round(many, 2), ratio=round(many / one, 3),
             one_loop_s=round(m1["total_wall_s"], 2), many_loop_s=[round(m["total_wall_s"], 2) for m in ms],
             one_avg_acc=round(m1["final_avg_acc"], 4), many_avg_acc=[round(m["final_avg_acc"], 4) for m in ms],
             seed0_same_alone_and_beside_others=m1["acc_matrix"] == ms[0]["acc_matrix"])
    print(f"1 seed {one:.2f} s, {a.seeds} seeds at once {many:.2f} s: ratio {many / one:.2f} "
          f"(per-run loop {r['one_loop_s']} s alone, {min(r['many_loop_s'])}..{max(r['many_loop_s'])} s together)", flush=True)
    print(json.dumps(r))
    if a.json: Path(a.json).write_text(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
