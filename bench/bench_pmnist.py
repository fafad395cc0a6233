"""clarena's default experiment against the plain-PyTorch yardstick, same settings, one invocation.

Runs `../shared/bench/limit_pmnist.py` (a hand-written loop over tensors held on the device) and
`clarena-train` on permuted Fashion-MNIST, task-incremental, MLP, one head per task, with the same
tasks, epochs, batch size, hidden sizes, learning rate and seed, each as its own process, and times
each end to end (process start, imports and data loading included). Each is run `--repeat` times,
interleaved, and medians are reported (timings on a shared machine vary by tens of percent). Prints a
table and one JSON line per algorithm: wall seconds of both, their ratio, steps per second, peak RSS.

    python bench/bench_pmnist.py --algo finetuning hat --tasks 3 --epochs 1 --batch 128 --variant fast=speed.steps_per_call=16
    python bench/bench_pmnist.py --device cuda --tasks 10 --batch 64 --variant capture=speed.capture=true,speed.steps_per_call=32

Anything after `--` is passed to every clarena run as extra overrides. Each `--variant NAME=OVERRIDE,OVERRIDE` adds
a clarena run with those overrides beside the default one, timed in the same interleaved rounds against the same
yardstick runs. The loop times compare the work both do after start-up (training and testing every task): the
yardstick's own `wall_s` and clarena's `total_wall_s`.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(cmd, env, fail_ok=False):
    "Run `cmd`; return (wall seconds, peak RSS in MB of that process, its stdout); with `fail_ok`, None if it fails."
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, text=True)
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        out.seek(0); err.seek(0)
        if os.waitstatus_to_exitcode(status) != 0:
            if fail_ok:
                print(f"FAILED: {' '.join(cmd)}\n{err.read()[-3000:]}", flush=True)
                return None
            sys.exit(f"command failed: {' '.join(cmd)}\n{err.read()[-3000:]}")
        return wall, usage.ru_maxrss / 1024, out.read()


def gpu_name(device):
    if device != "cuda": return None
    out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
    return out.stdout.strip() or None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--algo", nargs="+", default=["finetuning", "hat"], choices=["finetuning", "hat"])
    ap.add_argument("--tasks", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--yardstick", default=str(ROOT.parent / "shared" / "bench" / "limit_pmnist.py"))
    ap.add_argument("--threads", default=os.environ.get("OMP_NUM_THREADS", "1"), help="OMP_NUM_THREADS for both")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each, interleaved; medians are reported (this machine's timings vary)")
    ap.add_argument("--variant", action="append", default=[], help="NAME=OVERRIDE[,OVERRIDE...]: another clarena configuration to time")
    ap.add_argument("--json", help="also write the JSON lines to this file")
    ap.add_argument("overrides", nargs="*", help="extra clarena-train overrides (after --)")
    a = ap.parse_args()
    if not Path(a.yardstick).exists(): sys.exit(f"yardstick not found: {a.yardstick} (pass --yardstick)")
    if not Path(a.data, "train-images-idx3-ubyte.gz").exists():
        sys.exit(f"Fashion-MNIST not found in {a.data}: apt-get install dataset-fashion-mnist, or pass --data")
    env = {**os.environ, "OMP_NUM_THREADS": a.threads, "MKL_NUM_THREADS": a.threads}
    n_train = 60000
    steps = a.tasks * a.epochs * math.ceil(n_train / a.batch)
    results = []
    variants = [("default", [])]
    for v in a.variant:
        name, _, ov = v.partition("=")
        if not name or not ov: sys.exit(f"--variant must be NAME=OVERRIDE[,OVERRIDE...], got {v!r}")
        variants.append((name, ov.split(",")))
    for algo in a.algo:
        ycmd = [sys.executable, a.yardstick, "--data", a.data, "--device", a.device, "--algo", algo, "--tasks", str(a.tasks),
                "--epochs", str(a.epochs), "--batch", str(a.batch), "--hidden", str(a.hidden), "--layers", str(a.layers),
                "--seed", str(a.seed), "--lr", "0.05"]
        runs = dict(y=[], **{name: [] for name, _ in variants})
        for rep in range(a.repeat):  # interleaved, so a slow spell of the machine hits all of them
            y_wall, y_peak, y_out = timed(ycmd, env)
            runs["y"].append((y_wall, y_peak, json.loads(y_out.strip().splitlines()[-1])))
            for name, extra in variants:
                with tempfile.TemporaryDirectory() as d:
                    ccmd = [sys.executable, "-m", "clarena.train", f"experiment=pmnist_{'hat' if algo == 'hat' else 'finetuning'}",
                            "data=permuted_fashion_mnist", f"data.num_tasks={a.tasks}", f"trainer.max_epochs={a.epochs}",
                            f"data.batch_size={a.batch}", "data.val_size=0", "data.eval_batch_size=1000", "measure_fwt=false",
                            f"model.backbone.hidden_dims=[{','.join([str(a.hidden)] * a.layers)}]", "model.optimizer.lr=0.05",
                            f"seed={a.seed}", "trainer.enable_progress_bar=false", f"trainer.accelerator={'gpu' if a.device == 'cuda' else 'cpu'}",
                            "data.source=idx", f"paths.data_dir={a.data}",
                            f"paths.output_dir={d}/run", *a.overrides, *extra]
                    got = timed(ccmd, env, fail_ok=True)
                    if got: runs[name].append((got[0], got[1], json.loads(Path(d, "run", "metrics.json").read_text())))
        med = lambda xs: sorted(xs)[len(xs) // 2]
        y_wall, y_peak = med([w for w, _, _ in runs["y"]]), max(p for _, p, _ in runs["y"])
        y, y_loop = runs["y"][0][2], med([r["wall_s"] for _, _, r in runs["y"]])
        for name, extra in variants:
            c = runs[name]
            if not c:
                results.append(dict(algo=algo, variant=name, overrides=a.overrides + extra, device=a.device, failed=True)); continue
            c_wall, c_peak, m = med([w for w, _, _ in c]), max(p for _, p, _ in c), c[0][2]
            c_train, c_loop = med([sum(r["task_wall_s"]) for _, _, r in c]), med([r["total_wall_s"] for _, _, r in c])
            r = dict(algo=algo, variant=name, overrides=a.overrides + extra, device=a.device, gpu=gpu_name(a.device), tasks=a.tasks, epochs=a.epochs, batch=a.batch,
                     hidden=a.hidden, layers=a.layers, threads=a.threads, steps=steps, repeat=a.repeat,
                     yardstick_e2e_s=round(y_wall, 2), clarena_e2e_s=round(c_wall, 2), ratio_e2e=round(c_wall / y_wall, 3),
                     all_e2e_s=dict(yardstick=[round(w, 2) for w, _, _ in runs["y"]], clarena=[round(w, 2) for w, _, _ in c]),
                     yardstick_loop_s=y_loop, clarena_loop_s=round(c_loop, 3), ratio_loop=round(c_loop / y_loop, 3),
                     clarena_data_load_s=round(med([r.get("data_load_s", 0) for _, _, r in c]), 3),
                     clarena_train_s=round(c_train, 3), yardstick_steps_per_s=round(steps / y_loop, 1), clarena_steps_per_s=round(steps / c_train, 1),
                     yardstick_avg_acc=y["avg_acc"], clarena_avg_acc=round(m["final_avg_acc"], 4),
                     yardstick_peak_rss_mb=round(y_peak, 1), clarena_peak_rss_mb=round(c_peak, 1))
            results.append(r)
            print(f"{algo:10s} {name:8s} e2e yardstick {y_wall:6.2f} s clarena {c_wall:6.2f} s ratio {c_wall / y_wall:5.2f} | "
                  f"loop {y_loop:6.2f} vs {c_loop:6.2f} s ratio {c_loop / y_loop:5.2f} | steps/s {r['yardstick_steps_per_s']} vs "
                  f"{r['clarena_steps_per_s']} | avg acc {y['avg_acc']:.4f} vs {m['final_avg_acc']:.4f} | peak RSS {y_peak:.0f} vs {c_peak:.0f} MB", flush=True)
        if a.json: Path(a.json).write_text("".join(json.dumps(r) + "\n" for r in results))  # after each algorithm: kept if a later one is cut short
    for r in results: print(json.dumps(r))


if __name__ == "__main__":
    main()
