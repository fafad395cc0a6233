"""The DER paper's protocol at its batch sizes: each der_paper row's training steps per second against the plain-PyTorch yardstick.

Batch 10 (the paper's Seq-MNIST batch) is almost all per-step overhead. Each row of `preset=der_paper` on Seq-FMNIST TIL (batch 10)
and P-FMNIST DIL (batch 128) runs in this process, cut to `--tasks` tasks of `--steps` steps (its config is otherwise the preset's:
MLP 100-100, SGD, the paper's hyperparameters); its steps/s is its training steps over its training time (`task_train_s`: the steps
alone, without testing or the task-boundary work). The yardstick (`../shared/bench/limit_pmnist.py`: MLP 784-100-100, a head per task,
SGD, no framework) runs the same number of steps at each batch size; its testing is taken out by subtracting the loop time of a run
of one step a task. Then the whole Fashion-MNIST league (every row, 10 seeds, `n_jobs` at once) is estimated from the
measured times per step and per task, scaled to each benchmark's full steps. The load average is recorded with every number: on a
shared machine the figures are only as steady as the machine was.

    OMP_NUM_THREADS=1 python bench/bench_batch10.py --out bench/results/batch10-cpu.jsonl
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from omegaconf import OmegaConf

from clarena.league import load_preset, preset_configs, shrink_preset, train_steps
from clarena.loop import run_experiment

ROOT = Path(__file__).resolve().parents[1]
BENCHES = {"Seq-FMNIST TIL": 10, "P-FMNIST DIL": 128}  # measured benchmark: its batch size (the other benchmarks borrow, below)
PROXY = {"Seq-FMNIST CIL": "Seq-FMNIST TIL", "Seq-FMNIST TIL": "Seq-FMNIST TIL", "P-FMNIST DIL": "P-FMNIST DIL", "R-FMNIST DIL": "P-FMNIST DIL"}


def yardstick(script, data, batch, steps, tasks, device):
    """The plain-PyTorch loop's training steps/s at `batch`, `steps` a task: its loop time less that of a run of one step a task
    (its testing of every task seen, which its `wall_s` includes), over the steps."""
    def wall(n):
        cmd = [sys.executable, script, "--data", data, "--device", device, "--tasks", str(tasks), "--batch", str(batch), "--hidden", "100",
               "--train-limit", str(n * batch), "--lr", "0.03"]
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        if out.returncode: sys.exit(f"yardstick failed: {out.stderr[-2000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])["wall_s"]
    return tasks * (steps - 1) / (wall(steps) - wall(1))


def measure(cfg, tmp):
    "One run of `cfg`: its training steps/s, and its time per task outside the steps (testing, boundary work)."
    cfg = cfg.copy()
    cfg.paths.output_dir = str(tmp / f"{cfg.arena.benchmark}-{cfg.arena.label}".replace(" ", "_"))
    OmegaConf.update(cfg, "overwrite", True, force_add=True)
    load0 = os.getloadavg()[0]
    m = run_experiment(cfg)
    steps = sum(train_steps(OmegaConf.to_container(cfg, resolve=True)))
    train_s = sum(m["task_train_s"])
    T = m["num_tasks"]  # the rest of the run (testing every task seen after each task, the boundary work), per task tested
    return dict(steps=steps, steps_per_s=steps / train_s, ms_per_step=1000 * train_s / steps, total_wall_s=m["total_wall_s"],
                other_s_per_task_test=(m["total_wall_s"] - train_s) / (T * (T + 1) / 2), final_avg_acc=m["final_avg_acc"],
                load_before=round(load0, 2), load_after=round(os.getloadavg()[0], 2))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=2)
    ap.add_argument("--steps", type=int, default=300, help="training steps per task")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--algorithms", nargs="*", help="rows of der_paper (default: all)")
    ap.add_argument("--yardstick", default=str(ROOT.parent.parent / "shared" / "bench" / "limit_pmnist.py"))
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--n-jobs", type=int, default=2, help="runs at once in the estimated league")
    ap.add_argument("--out")
    a = ap.parse_args()
    if not Path(a.yardstick).exists(): a.yardstick = "/work/shared/bench/limit_pmnist.py"
    der = load_preset("der_paper")
    small = shrink_preset(der, [0], None, list(BENCHES), a.algorithms)
    tiny = [f"data.num_tasks={a.tasks}", f"trainer.limit_train_batches={a.steps}", f"trainer.accelerator={a.device}"]
    runs, _ = preset_configs(small, tiny)
    tmp = Path(tempfile.mkdtemp())
    ys = {b: yardstick(a.yardstick, a.data, batch, a.steps, a.tasks, a.device) for b, batch in BENCHES.items()}
    rows = []
    for bench, label, cfg in runs:
        r = dict(benchmark=bench, label=label, batch=cfg.data.batch_size, **measure(cfg, tmp))
        r["vs_yardstick"] = r["steps_per_s"] / ys[bench]
        rows.append(r)
        print(f"{bench:15s} {label:13s} batch {r['batch']:3d}: {r['steps_per_s']:7.1f} steps/s (yardstick {ys[bench]:7.1f}, ratio "
              f"{r['vs_yardstick']:.2f}), {r['other_s_per_task_test']:.2f} s per task tested besides, load {r['load_before']}->{r['load_after']}", flush=True)
    # the whole Fashion-MNIST league: each row's full steps at its measured ms/step, plus the rest at its measured time per task
    # tested (T (T + 1) / 2 task tests in a run of T tasks), times the seeds; a benchmark whose config does not compose here (the
    # fixed CIL head, the rotated benchmark: other branches) is counted as its proxy's rows (iCaRL in CIL at ER's cost)
    full, skipped = preset_configs(shrink_preset(der, [0]), [])
    absent = {b for b in PROXY if b not in {x for x, _, _ in full}}
    cost = {(r["benchmark"], r["label"]): r for r in rows}
    steps_of, total_s, parts = {}, 0.0, {}
    for bench, label, cfg in full:
        if "FMNIST" not in bench: continue
        m = cost.get((PROXY.get(bench), label)) or cost.get((PROXY.get(bench), "Finetuning"))
        if m is None: continue
        key = json.dumps(OmegaConf.to_container(cfg.data, resolve=True), sort_keys=True)
        if key not in steps_of: steps_of[key] = train_steps(OmegaConf.to_container(cfg, resolve=True))
        T = len(steps_of[key])
        s = (sum(steps_of[key]) * m["ms_per_step"] / 1000 + T * (T + 1) / 2 * m["other_s_per_task_test"]) * len(der["seeds"])
        for b in [bench] + [x for x in absent if PROXY[x] == bench and x != bench]:
            parts[b] = parts.get(b, 0.0) + s
            total_s += s
            if b == "Seq-FMNIST CIL" and label.startswith("ER ("):  # iCaRL (CIL only) at ER's cost
                parts[b] += s; total_s += s
    est = dict(kind="league_estimate", runs_per_seed_composed_here=sum(1 for b, _, _ in full if "FMNIST" in b), seeds=len(der["seeds"]),
               n_jobs=a.n_jobs, cpu_hours_by_benchmark={b: round(v / 3600, 2) for b, v in parts.items()},
               wall_hours=round(total_s / a.n_jobs / 3600, 2), estimated_as_proxy=sorted(absent))
    print(json.dumps(est), flush=True)
    if a.out:
        head = dict(kind="setup", date=time.strftime("%Y-%m-%d %H:%M"), host=platform.node(), cpus=os.cpu_count(), device=a.device,
                    tasks=a.tasks, steps=a.steps, yardstick_steps_per_s=ys, omp=os.environ.get("OMP_NUM_THREADS"),
                    commit=subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip())
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        with open(a.out, "a") as f:
            for r in [head, *rows, est]: f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
