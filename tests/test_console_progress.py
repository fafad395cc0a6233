"""What a run prints on the console: each task's place in the sequence with the elapsed and remaining time, and the labels of
runs that run at once in an arena."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from clarena.loop import task_timing

BIN = Path(sys.executable).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TINY = ["data.num_tasks=3", "trainer.limit_train_batches=3", "measure_fwt=false", "trainer.enable_progress_bar=false"]
TASK_LINE = re.compile(r"task (\d) \((\d)/(\d)\): accuracy on tasks 0\.\.\d = \[[^\]]*\] \[elapsed (\d+)s, remaining ~(\d+)s\]")


def test_task_timing_worked_values():
    assert task_timing(2, 5, 60) == "elapsed 1m00s, remaining ~1m30s"  # 30 s a task, 3 left
    assert task_timing(3, 4, 3 * 1200) == "elapsed 1h00m, remaining ~20m00s"
    assert task_timing(4, 4, 10) == "elapsed 10s, remaining ~0s"
    assert task_timing(0, 4, 0) == "elapsed 0s, remaining unknown"


def test_three_task_run_prints_place_and_times(tmp_path, no_data_root):
    r = subprocess.run([sys.executable, "-m", "clarena.train", "experiment=smnist_til_finetuning", *TINY, f"paths.data_dir={no_data_root}",
                        f"paths.output_dir={tmp_path / 'run'}"], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads((tmp_path / "run" / "metrics.json").read_text())
    lines = [TASK_LINE.search(l) for l in r.stdout.splitlines() if "accuracy on tasks" in l]
    assert all(lines) and [m.group(1, 2, 3) for m in lines] == [("0", "1", "3"), ("1", "2", "3"), ("2", "3", "3")], lines
    elapsed = [int(m.group(4)) for m in lines]
    assert elapsed == sorted(elapsed) and elapsed[-1] <= round(out["total_wall_s"]) + 1 and lines[-1].group(5) == "0"


def test_parallel_arena_runs_label_their_lines(tmp_path):
    args = [str(BIN / "clarena-arena"), "model/algorithm=finetuning", "seed=0,1", "data=split_mnist", "data.num_tasks=2",
            "trainer.limit_train_batches=3", "measure_fwt=false", "trainer.enable_progress_bar=false", "hydra.launcher.n_jobs=2",
            f"paths.data_dir={tmp_path / 'none'}", f"paths.log_dir={tmp_path / 'logs'}", "arena.name=t"]
    r = subprocess.run(args, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    text = r.stdout + r.stderr
    lines = [l for l in text.splitlines() if "accuracy on tasks" in l]
    assert len(lines) == 4, text[-3000:]  # 2 runs x 2 tasks
    labels = [re.search(r"\[Finetuning seed (\d) [0-9a-f]{6}\] task \d \(\d/2\)", l) for l in lines]
    assert all(labels), lines
    assert sorted(m.group(1) for m in labels) == ["0", "0", "1", "1"]


def _label_in_child(q):
    from omegaconf import OmegaConf
    from clarena.arena import job_label
    q.put(job_label(OmegaConf.create({"model": {"algorithm": {"_target_": "clarena.algorithms.er.ER"}}, "seed": 1}), "3fa2c1d0e9b8"))


def test_job_label_only_in_a_worker_process():
    import multiprocessing
    from omegaconf import OmegaConf
    from clarena.arena import job_label
    cfg = OmegaConf.create({"model": {"algorithm": {"_target_": "clarena.algorithms.er.ER"}}, "seed": 1})
    assert job_label(cfg, "3fa2c1d0e9b8") == ""  # n_jobs=1: the run in the sweep's own process prints as it did
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_label_in_child, args=(q,))
    p.start(); label = q.get(timeout=120); p.join()
    assert label == "[ER seed 1 3fa2c1] "


def test_resumed_run_counts_the_time_recorded_before_the_resume(tmp_path, no_data_root, caplog, monkeypatch):
    import logging
    import clarena.loop as loop
    from clarena.train import compose_config, resume_config
    from conftest import killed_during
    run_dir = tmp_path / "whole"
    loop.run_experiment(compose_config(None, ["experiment=smnist_til_finetuning", *TINY, f"paths.data_dir={no_data_root}", f"paths.output_dir={run_dir}"]))
    killed = killed_during(run_dir, 1, tmp_path / "killed")  # task 0's checkpoint is the last
    resume_point = loop._resume_point
    def long_before(*a, **k):  # the part before the resume took 10 minutes
        first, progress, step = resume_point(*a, **k)
        return first, dict(progress, total_wall_s=600.0), step
    monkeypatch.setattr(loop, "_resume_point", long_before)
    with caplog.at_level(logging.INFO, logger="clarena"):
        out = loop.run_experiment(resume_config(killed))
    assert out["resumed_at_task"] == 1
    lines = [r.getMessage() for r in caplog.records if "accuracy on tasks" in r.getMessage()]
    # task 1 (2/3): 600 s and a little, 2 tasks done, 1 left: ~300 s remaining; task 2 (3/3): none left
    m = re.search(r"task 1 \(2/3\): .* \[elapsed 10m0(\d)s, remaining ~5m0(\d)s\]", lines[0])
    assert m, lines
    assert re.search(r"task 2 \(3/3\): .* \[elapsed 10m\d\ds, remaining ~0s\]", lines[1]), lines
