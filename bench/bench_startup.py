"""What `clarena-train` costs before it trains: the imports of a real run, and how soon bad input and --help are answered.

    OMP_NUM_THREADS=1 python bench/bench_startup.py --repeat 3
    OMP_NUM_THREADS=1 python bench/bench_startup.py --cases clarena-     # the entry points only
    PYTHONPATH=/tmp/old OMP_NUM_THREADS=1 python bench/bench_startup.py --label before   # another checkout's clarena/

Each case is its own fresh process; the median wall time of `--repeat` runs is reported, with `python -X importtime`'s
cumulative time of the heaviest imports of a real run (`clarena.loop` and what it imports directly). Writes one JSON line
to bench/results/startup.jsonl. Each entry point answers `--help` itself, from the config tree's files (Hydra's own listing
builds a config repository per group: over a second here). Times are measured here, never asserted in tests
(tests/test_cli.py checks that --help and bad input import neither torch nor Lightning).
"""
import argparse, datetime, json, os, re, statistics, subprocess, sys, tempfile, time
from pathlib import Path

CASES = {
    "python": ["-c", "pass"],
    "import torch": ["-c", "import torch"],
    "import lightning": ["-c", "import lightning"],
    "import clarena.train": ["-c", "import clarena.train"],
    "import clarena.loop (a real run's imports)": ["-c", "import clarena.loop"],
    "clarena-train --help": ["-m", "clarena.train", "--help"],
    "clarena-train data=foo": ["-m", "clarena.train", "data=foo"],
    "clarena-train seed=abc": ["-m", "clarena.train", "seed=abc"],
    "clarena-train data.num_tasks=-1": ["-m", "clarena.train", "data.num_tasks=-1"],
    "clarena-train -m seed=1,2 data.batch_size=0": ["-m", "clarena.train", "-m", "seed=1,2", "data.batch_size=0"],
    "clarena-eval --help": ["-m", "clarena.evaluate", "--help"],
    "clarena-eval ckpt_path=nowhere.ckpt": ["-m", "clarena.evaluate", "ckpt_path=nowhere.ckpt"],
    "clarena-predict num_samples=0": ["-c", "from clarena.evaluate import predict_main; predict_main()", "ckpt_path=x.ckpt", "num_samples=0"],
    "clarena-arena --help": ["-c", "from clarena.arena import main; main()", "--help"],
    "clarena-arena data.num_tasks=-1": ["-c", "from clarena.arena import main; main()", "data.num_tasks=-1"],
}

def wall(args, cwd) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=cwd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t

def heaviest_imports(module: str, n: int = 8) -> dict:
    "What `import module` imports itself (cumulative seconds of each direct import, heaviest first), from -X importtime."
    r = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"], env=ENV, capture_output=True, text=True)
    top = {}
    for line in r.stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)", line)
        if m and len(m.group(2)) in (1, 3): top[m.group(3)] = int(m.group(1)) / 1e6  # the module itself and its direct imports
    return dict(sorted(top.items(), key=lambda kv: -kv[1])[:n])

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "startup.jsonl"))
    ap.add_argument("--cases", default="", help="only the cases whose name contains this")
    ap.add_argument("--label", default="", help="recorded with the result (e.g. before, after)")
    a = ap.parse_args()
    ENV = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "HYDRA_FULL_ERROR": "0"}
    with tempfile.TemporaryDirectory() as cwd:
        times = {name: statistics.median(wall(args, cwd) for _ in range(a.repeat)) for name, args in CASES.items() if a.cases in name}
    result = dict(when=datetime.datetime.now().isoformat(timespec="seconds"), label=a.label, cpus=os.cpu_count(), repeat=a.repeat,
                  load_avg=os.getloadavg()[0], median_wall_s={k: round(v, 3) for k, v in times.items()},
                  real_run_imports_s=heaviest_imports("clarena.loop") if not a.cases else None)
    for k, v in result["median_wall_s"].items(): print(f"{k:45s} {v:7.2f} s")
    print("heaviest imports of a real run:", result["real_run_imports_s"])
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    with open(a.out, "a") as f: f.write(json.dumps(result) + "\n")
