"""What the benchmark scripts share (each runs as `python bench/<script>.py`, so this folder is on its path)."""
import subprocess
import sys
import time


def timed(cmd: list, env: dict) -> float:
    "Run `cmd` to its end and return its wall time in seconds; a failure stops the benchmark with the command and its stderr's end."
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0: sys.exit(f"command failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-3000:]}")
    return wall
