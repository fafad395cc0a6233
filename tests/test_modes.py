"""The other modes (evaluate, predict, debug, resume) and the faults a long run must survive."""
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from clarena.checkpoints import load_checkpoint, restore, write_checkpoint
from clarena.core import ConfigError
from clarena.loop import build
from clarena.train import compose_config

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
QUICK = ["data.num_tasks=2", "trainer.limit_train_batches=10", "trainer.enable_progress_bar=false", "measure_fwt=false"]


def cli(module, args, cwd, **kw):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600, **kw)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    "A finished 2-task Split MNIST run (TIL, Finetuning) on the bundled sample."
    d = tmp_path_factory.mktemp("trained")
    r = cli("clarena.train", ["experiment=smnist_til_finetuning", *QUICK, f"paths.output_dir={d / 'run'}", f"paths.data_dir={d / 'none'}"], d)
    assert r.returncode == 0, r.stderr[-3000:]
    return d / "run"


def test_eval_recomputes_the_recorded_row(trained, tmp_path):
    recorded = json.loads((trained / "metrics.json").read_text())["acc_matrix"]
    for k in (0, 1):
        r = cli("clarena.evaluate", [f"ckpt_path={trained / 'checkpoints' / f'task_{k}.ckpt'}", f"hydra.run.dir={tmp_path / str(k)}"], tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
        e = json.loads((tmp_path / str(k) / "eval.json").read_text())
        assert e["acc"] == recorded[k] and e["max_abs_diff"] == 0.0


def test_eval_fails_when_the_row_differs_and_refuses_a_step_checkpoint(trained, tmp_path):
    ck = load_checkpoint(trained / "checkpoints" / "task_1.ckpt")
    ck["progress"]["acc_matrix"][1][1] -= 0.002  # a recorded row that the weights do not give again (its sha256 recomputed)
    write_checkpoint(tmp_path / "edited.ckpt", ck)
    r = cli("clarena.evaluate", [f"ckpt_path={tmp_path / 'edited.ckpt'}", f"hydra.run.dir={tmp_path / 'e'}"], tmp_path)
    lines = [l for l in r.stderr.splitlines() if l.startswith("clarena:")]
    assert r.returncode == 1 and len(lines) == 1 and "differs from the recorded one by 0.002 (more than tolerance=1e-06)" in lines[0], r.stderr[-2000:]
    assert json.loads((tmp_path / "e" / "eval.json").read_text())["matches"] is False
    r = cli("clarena.evaluate", [f"ckpt_path={tmp_path / 'edited.ckpt'}", f"hydra.run.dir={tmp_path / 'f'}", "tolerance=0.01"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    ck["step"] = dict(task_id=1, global_step=12)
    write_checkpoint(tmp_path / "step.ckpt", ck)
    r = cli("clarena.evaluate", [f"ckpt_path={tmp_path / 'step.ckpt'}", f"hydra.run.dir={tmp_path / 'g'}"], tmp_path)
    assert r.returncode == 2 and "is a step checkpoint (task 1 stopped at global step 12)" in r.stderr and "Traceback" not in r.stderr


def test_predict_writes_a_grid_and_a_table(trained, tmp_path):
    r = subprocess.run([str(Path(sys.executable).parent / "clarena-predict"), f"ckpt_path={trained / 'checkpoints' / 'task_1.ckpt'}",
                        "task_id=1", "num_samples=12", f"hydra.run.dir={tmp_path}"], cwd=tmp_path, env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "predictions.png").read_bytes()[:4] == b"\x89PNG"
    rows = (tmp_path / "predictions.csv").read_text().splitlines()
    assert rows[0] == "index,true,pred,confidence" and len(rows) == 13
    assert {int(r.split(",")[1]) for r in rows[1:]} <= {2, 3}  # task 1 of Split MNIST: digits 2 and 3
    r = subprocess.run([str(Path(sys.executable).parent / "clarena-predict"), f"ckpt_path={trained / 'checkpoints' / 'task_0.ckpt'}",
                        "task_id=1", f"hydra.run.dir={tmp_path / 'x'}"], cwd=tmp_path, env=ENV, capture_output=True, text=True)
    assert r.returncode == 2 and "the checkpoint has seen tasks 0..0" in r.stderr


@pytest.mark.parametrize("args", [["debug=fdr"], ["debug=overfit", "trainer.max_epochs=3"], ["debug=profiler", "trainer.limit_train_batches=3"],
                                  ["debug=limit", "+trainer.detect_anomaly=true"]])
def test_debug_configs_run(tmp_path, args):
    r = cli("clarena.train", ["data.num_tasks=2", "trainer.enable_progress_bar=false", f"paths.output_dir={tmp_path / 'run'}",
                              f"paths.data_dir={tmp_path / 'none'}", *args], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [len(row) for row in m["acc_matrix"]] == [1, 2]


def test_resume_after_kill_gives_the_uninterrupted_matrix(tmp_path):
    common = ["experiment=pmnist_hat", "data.num_tasks=3", "trainer.max_epochs=3", "trainer.limit_train_batches=100",
              "model.backbone.hidden_dims=[64,64]", "trainer.deterministic=true", "trainer.enable_progress_bar=false",
              f"paths.data_dir={tmp_path / 'none'}"]
    killed = tmp_path / "killed"
    p = subprocess.Popen([sys.executable, "-m", "clarena.train", *common, f"paths.output_dir={killed}"], cwd=tmp_path, env=ENV,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None:
        prog = killed / "progress.json"
        if prog.exists() and json.loads(prog.read_text())["tasks_done"] == 1: break
        time.sleep(0.05)
    time.sleep(0.1)  # into task 1 (300 steps of it)
    p.send_signal(signal.SIGKILL); p.wait()
    assert not (killed / "metrics.json").exists()
    done = json.loads((killed / "progress.json").read_text())["tasks_done"]
    assert done in (1, 2), done
    r = cli("clarena.train", [f"resume={killed}"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resuming {killed} after task {done - 1}" in r.stdout
    r = cli("clarena.train", [*common, f"paths.output_dir={tmp_path / 'whole'}"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    resumed, whole = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("killed", "whole"))
    assert resumed["acc_matrix"] == whole["acc_matrix"] and resumed["loss_matrix"] == whole["loss_matrix"]  # bit for bit
    assert resumed["pre_acc"] == whole["pre_acc"] and resumed["untrained_acc"] == whole["untrained_acc"]
    assert resumed["resumed_at_task"] == done


def test_bad_checkpoints_are_refused(trained, tmp_path):
    garbage = tmp_path / "garbage.ckpt"; garbage.write_bytes(os.urandom(5000))
    with pytest.raises(ConfigError, match="is corrupted or not a torch file"): load_checkpoint(garbage)
    truncated = tmp_path / "truncated.ckpt"; truncated.write_bytes((trained / "checkpoints" / "task_1.ckpt").read_bytes()[:20000])
    with pytest.raises(ConfigError, match="is corrupted"): load_checkpoint(truncated)
    unsafe = tmp_path / "unsafe.ckpt"; torch.save({"state_dict": {}, "x": Path("/etc")}, unsafe)  # an object that needs code to build
    with pytest.raises(ConfigError, match="a safe load \\(weights_only=True\\) refuses"): load_checkpoint(unsafe)
    bare = load_checkpoint(trained / "checkpoints" / "task_1.ckpt"); del bare["sha256"]
    torch.save(bare, tmp_path / "bare.ckpt")  # the contents without the sha256 wrapper: nothing shows they are unchanged
    with pytest.raises(ConfigError, match="has no sha256"): load_checkpoint(tmp_path / "bare.ckpt")
    with pytest.raises(ConfigError, match="is not a clarena checkpoint"):
        torch.save({"weights": torch.zeros(1)}, tmp_path / "other.ckpt"); load_checkpoint(tmp_path / "other.ckpt")
    ckpt = load_checkpoint(trained / "checkpoints" / "task_1.ckpt")
    dm, hat = build(compose_config("smnist_til_finetuning", ["model/algorithm=hat", f"paths.data_dir={tmp_path}"]))
    with pytest.raises(ConfigError, match="from algorithm Finetuning, the config builds HAT"): restore(hat, dm, ckpt)
    dm, ft = build(compose_config("smnist_til_finetuning", ["data.num_tasks=4", f"paths.data_dir={tmp_path}"]))
    with pytest.raises(ConfigError, match="from a run of 2 tasks, the config has num_tasks=4"): restore(ft, dm, ckpt)
    r = cli("clarena.evaluate", [f"ckpt_path={garbage}", f"hydra.run.dir={tmp_path / 'e'}"], tmp_path)
    assert r.returncode == 2 and "is corrupted or not a torch file" in r.stderr


def test_unwritable_output_dir(tmp_path):
    blocker = tmp_path / "a_file"; blocker.write_text("not a directory")
    r = cli("clarena.train", [*QUICK, f"paths.output_dir={blocker / 'run'}"], tmp_path)
    assert r.returncode == 2 and f"cannot create the run directory: [Errno 20] Not a directory: '{blocker / 'run'}'" in r.stderr


def _small_files():
    resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))  # every file this process writes stays under 300 kB
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)                  # so a write past it fails with EFBIG, like a full disk


def test_disk_full_leaves_nothing_that_looks_finished(tmp_path):
    run = tmp_path / "run"
    r = cli("clarena.train", [*QUICK, f"paths.output_dir={run}", f"paths.data_dir={tmp_path / 'none'}"], tmp_path, preexec_fn=_small_files)
    assert r.returncode == 3, (r.returncode, r.stderr[-2000:])
    assert "could not write results" in r.stderr and "File too large" in r.stderr
    assert not (run / "metrics.json").exists()
    assert not list(run.rglob("*.ckpt")) and not list(run.rglob(".*tmp*"))  # no half-written checkpoint left behind


def test_corrupted_dataset_files(tmp_path):
    src = Path(__file__).resolve().parents[1] / "clarena" / "assets"
    data = tmp_path / "data"; data.mkdir()
    for split in ("t10k", "train"):  # train-* are copies of the test files: not the official training files
        shutil.copy(src / "t10k-images-idx3-ubyte.gz", data / f"{split}-images-idx3-ubyte.gz")
        shutil.copy(src / "t10k-labels-idx1-ubyte.gz", data / f"{split}-labels-idx1-ubyte.gz")
    r = cli("clarena.train", [*QUICK, f"paths.data_dir={data}", "data.source=idx", f"paths.output_dir={tmp_path / 'run'}"], tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "train-images-idx3-ubyte.gz does not match the official mnist file" in r.stderr
    assert not (tmp_path / "run" / "checkpoints" / "task_0.ckpt").exists()


def test_nan_loss_stops_with_task_and_step(tmp_path):
    r = cli("clarena.train", [*QUICK, "model.optimizer.lr=1e30", f"paths.output_dir={tmp_path / 'run'}", f"paths.data_dir={tmp_path / 'none'}"], tmp_path)
    assert r.returncode == 3, r.stderr[-2000:]
    assert "training failed: non-finite loss" in r.stderr and "in task 0 at step" in r.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_resume_after_the_last_task_only_writes_results(tmp_path):
    run = tmp_path / "run"
    r = cli("clarena.train", [*QUICK, f"paths.output_dir={run}", f"paths.data_dir={tmp_path / 'none'}"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    finished = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").unlink()  # as if killed while writing the results
    r = cli("clarena.train", [f"resume={run}"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((run / "metrics.json").read_text())["acc_matrix"] == finished["acc_matrix"]
    r = cli("clarena.train", [f"resume={run}"], tmp_path)
    assert r.returncode == 2 and "holds a finished run" in r.stderr
