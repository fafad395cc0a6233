"""Runs that survive preemption: a run stopped within a task (SIGTERM or SIGUSR1, or SIGKILL after a step checkpoint) and resumed
ends with the accuracy matrix of the uninterrupted run, bit for bit on the CPU, with several steps per Lightning step and with one."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import clarena.loop
from clarena.checkpoints import PREEMPTED_EXIT, STEP_CHECKPOINT, load_checkpoint
from clarena.core import ConfigError
from clarena.train import compose_config

if not hasattr(clarena.loop, "checkpoint_options"):  # until the loop chapter wires step checkpoints in (and config.yaml's checkpoint block)
    pytest.skip("step checkpoints are not wired into clarena.loop yet", allow_module_level=True)

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
# HAT: its step hooks see the batch index (s is annealed over the epoch); 3 epochs of 100 batches per task; SGD with momentum,
# a plateau scheduler and the HAT paper's PatienceLR callback, whose states a step checkpoint must carry
BASE = ["experiment=pmnist_hat", "data.num_tasks=2", "trainer.max_epochs=3", "trainer.limit_train_batches=100", "measure_fwt=false",
        "model.backbone.hidden_dims=[64,64]", "trainer.deterministic=true", "trainer.enable_progress_bar=false",
        "model.optimizer.momentum=0.9", "model/scheduler=plateau", "callbacks=hat_paper_lr"]
MODES = {"chunks": [], "one_step": ["speed.steps_per_call=1"]}


def cli(args, cwd):
    return subprocess.run([sys.executable, "-m", "clarena.train", *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)


def start(args, cwd):
    return subprocess.Popen([sys.executable, "-m", "clarena.train", *args], cwd=cwd, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def metrics(run): return json.loads((run / "metrics.json").read_text())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    "The metrics of the uninterrupted run of each mode, made on first use."
    done = {}
    def get(mode):
        if mode not in done:
            d = tmp_path_factory.mktemp(f"whole_{mode}")
            r = cli([*BASE, *MODES[mode], f"paths.data_dir={d / 'none'}", f"paths.output_dir={d / 'run'}"], d)
            assert r.returncode == 0, r.stderr[-3000:]
            assert not (d / "run" / "checkpoints" / STEP_CHECKPOINT).exists()  # a task's checkpoint supersedes it
            done[mode] = metrics(d / "run")
        return done[mode]
    return get


def wait_for_step_checkpoint(run, p, task_id=1, timeout=400):
    "Wait until the run has written a step checkpoint within task `task_id`; return it."
    path, deadline = run / "checkpoints" / STEP_CHECKPOINT, time.time() + timeout
    while time.time() < deadline and p.poll() is None:
        if path.exists():
            try:
                ck = load_checkpoint(path)
                if ck["step"]["task_id"] == task_id: return ck
            except Exception: pass  # being replaced
        time.sleep(0.02)
    raise AssertionError(f"no step checkpoint of task {task_id} (exit status {p.poll()})")


@pytest.mark.parametrize("mode,sig", [("chunks", signal.SIGTERM), ("one_step", signal.SIGUSR1)])
def test_signal_mid_task_then_resume_gives_the_uninterrupted_matrix(tmp_path, uninterrupted, mode, sig):
    args = [*BASE, *MODES[mode], f"paths.data_dir={tmp_path / 'none'}", "checkpoint.every_n_steps=5"]
    run = tmp_path / "run"
    p = start([*args, f"paths.output_dir={run}"], tmp_path)
    wait_for_step_checkpoint(run, p)
    p.send_signal(sig)
    out, err = p.communicate(timeout=300)
    assert p.returncode == PREEMPTED_EXIT, err[-3000:]
    assert f"clarena: preempted ({sig.name}): step checkpoint written" in err and not (run / "metrics.json").exists()
    step = load_checkpoint(run / "checkpoints" / STEP_CHECKPOINT)["step"]
    assert step["task_id"] == 1 and set(step) >= {"optimizers", "schedulers", "callbacks", "loops", "data", "rng", "global_step"}
    assert step["optimizers"][0]["state"], "SGD's momentum is in it"
    r = cli([f"resume={run}"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resuming {run} in task 1 at step {step['global_step']} (epoch {step['epoch']}, batch {step['batch']})" in r.stdout + r.stderr
    a, b = metrics(run), uninterrupted(mode)
    assert a["acc_matrix"] == b["acc_matrix"] and a["loss_matrix"] == b["loss_matrix"]  # bit for bit


@pytest.mark.slow
def test_sigkill_after_a_step_checkpoint_then_the_same_command_goes_on(tmp_path, uninterrupted):
    "SIGKILL (no warning) after a periodic step checkpoint within an epoch; the same command again (a requeued job) goes on from it."
    args = [*BASE, *MODES["one_step"], f"paths.data_dir={tmp_path / 'none'}", "checkpoint.every_n_steps=7", f"paths.output_dir={tmp_path / 'run'}"]
    p = start(args, tmp_path)
    wait_for_step_checkpoint(tmp_path / "run", p)
    p.kill(); p.communicate()
    ck = load_checkpoint(tmp_path / "run" / "checkpoints" / STEP_CHECKPOINT)  # the last one written before the kill
    assert ck["step"]["batch"] > 0  # within an epoch: every 7 steps of 100-batch epochs lands on batch 0 only at step 700
    r = cli(args, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    log = r.stdout + r.stderr
    assert "stopped before it finished: going on with it" in log and f"in task 1 at step {ck['step']['global_step']}" in log
    a, b = metrics(tmp_path / "run"), uninterrupted("one_step")
    assert a["acc_matrix"] == b["acc_matrix"] and a["loss_matrix"] == b["loss_matrix"]


def test_bad_checkpoint_options_are_refused(tmp_path):
    checkpoint_options = clarena.loop.checkpoint_options
    test = {"checkpoint.every_n_steps=0": "checkpoint.every_n_steps must be", "checkpoint.every_minutes=-1": "checkpoint.every_minutes must be",
            "+checkpoint.every_epochs=1": "unknown checkpoint option"}
    for bad, msg in test.items():
        with pytest.raises(ConfigError, match=msg): checkpoint_options(compose_config(None, [bad]))
    assert checkpoint_options(compose_config()) == dict(every_n_steps=None, every_minutes=10, on_signal=True)
    r = cli([*BASE, f"paths.data_dir={tmp_path / 'none'}", f"paths.output_dir={tmp_path / 'x'}", "checkpoint.every_n_steps=0"], tmp_path)
    assert r.returncode == 2 and "checkpoint.every_n_steps must be" in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "x" / "config.yaml").exists()  # refused before the run directory is written
