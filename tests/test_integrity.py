"""Results that cannot lie (issue 15): data and checkpoint integrity, run directories, resume, sweeps, interrupts, speed options."""
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import pytest

from clarena.checkpoints import new_run_dir
from clarena.core import ConfigError, DataError
from clarena.data.base import load_source
from clarena.loop import build, run_experiment
from clarena.train import compose_config

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
QUICK = ["data.num_tasks=2", "trainer.limit_train_batches=5", "trainer.enable_progress_bar=false", "measure_fwt=false"]
ASSETS = resources.files("clarena") / "assets"


def cli(module, args, cwd, **kw):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600, **kw)


def fake_mnist(root, gz=False):
    "MNIST in torchvision's layout, made of the official test files (so the training files are not the official ones)."
    raw = Path(root) / "MNIST" / "raw"; raw.mkdir(parents=True, exist_ok=True)
    for split in ("train", "t10k"):
        for kind in ("images-idx3", "labels-idx1"):
            data = gzip.decompress((ASSETS / f"t10k-{kind}-ubyte.gz").read_bytes())
            (raw / f"{split}-{kind}-ubyte{'.gz' if gz else ''}").write_bytes(gzip.compress(data) if gz else data)
    return raw


@pytest.mark.parametrize("gz", [False, True])
def test_torchvision_layout_is_checked_never_a_fallback(tmp_path, gz):
    raw = fake_mnist(tmp_path, gz)
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    with pytest.raises(DataError, match=f"{raw / name} does not match the official mnist file"):
        load_source("mnist", tmp_path)
    t10k = raw / ("t10k-labels-idx1-ubyte" + (".gz" if gz else ""))
    t10k.write_bytes(t10k.read_bytes()[:3000])  # truncated: still an error naming it, not the bundled sample
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        load_source("mnist", tmp_path, verify_checksums=False)
    for f in raw.iterdir():
        if not f.name.startswith("t10k-labels"): f.unlink()
    with pytest.raises(DataError, match="holds only part of mnist"):
        load_source("mnist", tmp_path)


def test_cifar_hint_names_torchvision_folders(tmp_path):
    with pytest.raises(DataError, match=f"put the files in {tmp_path / 'cifar-10-batches-py'}"): load_source("cifar10", tmp_path)
    with pytest.raises(DataError, match=f"put the files in {tmp_path / 'cifar-100-python'}"): load_source("cifar100", tmp_path)


@pytest.mark.parametrize("val_size", [1.5, -0.1, "10%", 1.0])
def test_invalid_val_size_is_refused(tmp_path, val_size):
    with pytest.raises(ConfigError, match=r"data.val_size must be a fraction in \[0, 1\) or a whole number"):
        build(compose_config(None, [f"data.val_size={val_size}", f"paths.data_dir={tmp_path}"]))


def test_run_dirs_are_unique():
    dirs = {new_run_dir("logs", "e") for _ in range(200)}
    assert len(dirs) == 200


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    "A finished 2-task run, started in its own working directory with a relative (empty) data root."
    d = tmp_path_factory.mktemp("finished")
    r = cli("clarena.train", [*QUICK, "paths.output_dir=run", "paths.data_dir=data", "data.verify_checksums=false"], d)
    assert r.returncode == 0, r.stderr[-3000:]
    return d


def test_flipped_checkpoint_bytes_stop_eval_and_resume(finished, tmp_path):
    run = tmp_path / "run"; shutil.copytree(finished / "run", run)
    ckpt = run / "checkpoints" / "task_1.ckpt"
    b = bytearray(ckpt.read_bytes()); b[len(b) // 2] ^= 0xFF; b[len(b) // 2 + 7] ^= 0x01; ckpt.write_bytes(bytes(b))
    r = cli("clarena.evaluate", [f"ckpt_path={ckpt}"], tmp_path)
    assert r.returncode == 2 and f"checkpoint {ckpt} is corrupted" in r.stderr, r.stderr[-2000:]
    (run / "metrics.json").unlink()
    r = cli("clarena.train", [f"resume={run}"], tmp_path)
    assert r.returncode == 2 and f"checkpoint {ckpt} is corrupted" in r.stderr, r.stderr[-2000:]


def test_eval_checks_the_data_the_run_recorded(finished, tmp_path):
    ckpt = finished / "run" / "checkpoints" / "task_1.ckpt"
    fake_mnist(tmp_path / "data")  # another working directory with other data under the same relative name
    r = cli("clarena.evaluate", [f"ckpt_path={ckpt}"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]  # the run recorded its data root absolute: the same data
    e = json.loads(next(tmp_path.rglob("eval.json")).read_text())
    assert e["max_abs_diff"] == 0.0 and e["data_source"] == "mnist-bundled-10k"
    m = json.loads((finished / "run" / "metrics.json").read_text())
    assert m["config"]["data"]["root"] == str(finished / "data") and len(m["data_fingerprint"]) == 32
    moved = finished / "data"; fake_mnist(moved)  # the run's own data root now holds other data
    try:
        r = cli("clarena.evaluate", [f"ckpt_path={ckpt}"], tmp_path)
        assert r.returncode == 2 and "the run was trained on mnist-bundled-10k" in r.stderr, r.stderr[-2000:]
    finally:
        shutil.rmtree(moved)


def test_output_dir_with_results_needs_overwrite(finished, tmp_path):
    run = tmp_path / "run"; shutil.copytree(finished / "run", run)
    before = (run / "metrics.json").read_text()
    r = cli("clarena.train", [*QUICK, f"paths.output_dir={run}", f"paths.data_dir={tmp_path / 'none'}", "seed=5"], tmp_path)
    assert r.returncode == 2 and f"the output directory {run} holds another run's results" in r.stderr, r.stderr[-2000:]
    assert (run / "metrics.json").read_text() == before
    r = cli("clarena.train", [*QUICK, f"paths.output_dir={run}", f"paths.data_dir={tmp_path / 'none'}", "seed=5", "overwrite=true"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((run / "metrics.json").read_text())["seed"] == 5


def test_experiment_name_with_path_is_refused(tmp_path):
    (tmp_path / "cwd").mkdir()
    r = cli("clarena.train", ["experiment_name=../../x"], tmp_path / "cwd")
    assert r.returncode == 2 and "experiment_name must be a plain name" in r.stderr, r.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd"] and not list((tmp_path / "cwd").iterdir())


def test_resume_refuses_overrides_and_keeps_results(finished, tmp_path):
    run = tmp_path / "run"; shutil.copytree(finished / "run", run)
    (run / "metrics.json").unlink()  # as if killed while writing the results
    r = cli("clarena.train", [f"resume={run}", "seed=3", "trainer.max_epochs=2"], tmp_path)
    assert r.returncode == 2 and "it cannot change seed, trainer.max_epochs" in r.stderr and "trainer.accelerator" in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "logs").exists()  # no stray run directory
    csv_log = (run / "csv" / "task_1" / "metrics.csv").read_text()
    r = cli("clarena.train", [f"resume={run}", "trainer.enable_progress_bar=false"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (run / "csv" / "task_1" / "metrics.csv").read_text() == csv_log  # the last task's log is kept
    m = json.loads((run / "metrics.json").read_text())
    first = json.loads((finished / "run" / "metrics.json").read_text())
    assert m["acc_matrix"] == first["acc_matrix"] and len(m["wall_s_parts"]) == 2
    assert m["total_wall_s"] == pytest.approx(sum(m["wall_s_parts"])) and m["total_wall_s"] >= sum(first["task_wall_s"])
    assert not (tmp_path / "logs").exists()


def test_a_failed_job_does_not_stop_the_sweep(tmp_path):
    r = cli("clarena.train", ["-m", "model.optimizer.lr=1e30,0.05", *QUICK, f"paths.data_dir={tmp_path / 'none'}"], tmp_path)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "1 of 2 sweep jobs failed" in r.stderr and "non-finite loss" in r.stderr
    sweep = next((tmp_path / "logs" / "pmnist_finetuning" / "multiruns").iterdir())
    assert (sweep / "0" / "failed.json").exists() and (sweep / "1" / "metrics.json").exists()


def test_ctrl_c_says_where_the_run_is_and_how_to_resume(tmp_path):
    run = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "clarena.train", "data.num_tasks=3", "trainer.max_epochs=20", "measure_fwt=false",
                          "trainer.enable_progress_bar=false", f"paths.output_dir={run}", f"paths.data_dir={tmp_path / 'none'}"],
                         cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None and not (run / "progress.json").exists(): time.sleep(0.05)
    time.sleep(0.3)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, (p.returncode, err[-2000:])
    assert f"resume it with: clarena-train resume={run}" in err and "Traceback" not in err, err[-2000:]


def test_fractional_limit_counts_batches_in_every_mode(tmp_path):
    common = ["experiment=smnist_til_finetuning", "data.num_tasks=2", "trainer.limit_train_batches=0.5", "measure_fwt=false",
              "trainer.enable_progress_bar=false", "trainer.deterministic=true", f"paths.data_dir={tmp_path / 'none'}"]
    one = run_experiment(compose_config(None, [*common, "speed.steps_per_call=1", f"paths.output_dir={tmp_path / 'one'}"]))
    auto = run_experiment(compose_config(None, [*common, f"paths.output_dir={tmp_path / 'auto'}"]))
    assert one["acc_matrix"] == auto["acc_matrix"] and one["loss_matrix"] == auto["loss_matrix"]


def test_profiler_report_is_shown_and_saved(tmp_path):
    r = cli("clarena.train", [*QUICK, "debug=profiler", "trainer.limit_train_batches=3", f"paths.output_dir={tmp_path / 'run'}",
                              f"paths.data_dir={tmp_path / 'none'}"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Profiler Report" in r.stdout
    assert "run_training_epoch" in (tmp_path / "run" / "profiler_task_1.txt").read_text()


# ---- issue 22: no wrong number with exit 0, no user file deleted, every bad value one line before training ----

def test_a_model_blown_up_by_its_last_step_is_a_failed_run(tmp_path, monkeypatch):
    "What `model.optimizer.lr=1e38` did in one step: the weights NaN after the last per-step check; the run used to report accuracy 0.101."
    import torch
    import clarena.loop as loop
    from clarena.core import TrainingError
    fit = loop.fit_task
    def fit_and_blow_up(trainer, algo, dm, resume_step=None):
        fit(trainer, algo, dm, resume_step)
        with torch.no_grad(): next(algo.backbone.parameters()).fill_(float("nan"))
    monkeypatch.setattr(loop, "fit_task", fit_and_blow_up)
    out = tmp_path / "run"
    cfg = compose_config(None, ["data.num_tasks=1", "trainer.limit_train_batches=1", "trainer.enable_progress_bar=false", "measure_fwt=false",
                                f"paths.output_dir={out}", f"paths.data_dir={tmp_path / 'none'}"])
    with pytest.raises(TrainingError, match=r"task 0 ended with a model that is not finite \(test loss on task\(s\) \[0\]; weights backbone"):
        run_experiment(cfg)
    assert not (out / "metrics.json").exists()


def test_lr_1e38_for_one_step_is_a_failed_run(tmp_path):
    "The issue's case: one step at lr=1e38 leaves NaN weights (the step's own loss was finite); it reported accuracy 0.101 with exit 0."
    out = tmp_path / "run"
    r = cli("clarena.train", ["data.num_tasks=1", "trainer.limit_train_batches=1", "trainer.enable_progress_bar=false", "measure_fwt=false",
                              "model.optimizer.lr=1e38", f"paths.output_dir={out}", f"paths.data_dir={tmp_path / 'none'}"], tmp_path)
    assert r.returncode == 3 and "task 0 ended with a model that is not finite" in r.stderr, (r.returncode, r.stderr[-2000:])
    assert not (out / "metrics.json").exists()


def test_a_refused_run_removes_only_what_it_created(tmp_path):
    mine = tmp_path / "mine"; mine.mkdir(); (mine / "important.log").write_text("keep me")
    r = cli("clarena.train", ["experiment=smnist_cil_finetuning", "model/head=til", f"paths.output_dir={mine}",
                              f"paths.data_dir={tmp_path / 'none'}"], tmp_path)
    assert r.returncode == 2 and "needs a CIL head" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert sorted(p.name for p in mine.iterdir()) == ["important.log"] and (mine / "important.log").read_text() == "keep me"


def test_overwrite_refuses_a_folder_that_is_not_a_clarena_run(tmp_path):
    d = tmp_path / "photos"; (d / "csv").mkdir(parents=True)
    (d / "photo.png").write_bytes(b"png"); (d / "config.yaml").write_text("camera: x\n")
    r = cli("clarena.train", [*QUICK, "data.num_tasks=1", "trainer.limit_train_batches=1", "overwrite=true", f"paths.output_dir={d}",
                              f"paths.data_dir={tmp_path / 'none'}"], tmp_path)
    assert r.returncode == 2 and "is not a clarena run" in r.stderr, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr and r.stderr.strip().splitlines()[-1].startswith("clarena: ")
    assert sorted(p.name for p in d.iterdir()) == ["config.yaml", "csv", "photo.png"] and (d / "config.yaml").read_text() == "camera: x\n"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_a_run_stopped_before_its_first_checkpoint_starts_over(tmp_path, sig):
    "Ctrl-C in task 0 says 'start the run again', and a job killed there is requeued by Slurm as the same command: both start over."
    run = tmp_path / "run"
    args = ["data.num_tasks=1", "trainer.max_epochs=20", "measure_fwt=false", "trainer.enable_progress_bar=false",
            f"paths.output_dir={run}", f"paths.data_dir={tmp_path / 'none'}"]
    p = subprocess.Popen([sys.executable, "-m", "clarena.train", *args], cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None and not (run / "config.yaml").exists(): time.sleep(0.05)
    time.sleep(0.3)
    p.send_signal(sig)
    _, err = p.communicate(timeout=120)
    assert not (run / "metrics.json").exists() and not list(run.rglob("*.ckpt")), "stopped too late: task 0 finished"
    if sig == signal.SIGINT: assert p.returncode == 130 and "start the run again" in err, (p.returncode, err[-2000:])
    r = cli("clarena.train", args, tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((run / "metrics.json").read_text())["num_tasks"] == 1


def test_labels_that_do_not_fit_their_images_stop_before_training(tmp_path):
    "With checksums off (files of one's own): out-of-range labels were an IndexError in training, a short labels file went unnoticed."
    raw = fake_mnist(tmp_path)
    labels = raw / "train-labels-idx1-ubyte"
    b = bytearray(labels.read_bytes()); b[8 + 5] = 200; labels.write_bytes(bytes(b))
    with pytest.raises(DataError, match="the training labels run from 0 to 200, outside its 10 classes"):
        load_source("mnist", tmp_path, verify_checksums=False)
    n = int.from_bytes(b[4:8], "big")
    b = b[:8 + n - 10]; b[4:8] = (n - 10).to_bytes(4, "big"); b[8 + 5] = 1
    labels.write_bytes(bytes(b))
    with pytest.raises(DataError, match=f"the training split has {n} images but {n - 10} labels"):
        load_source("mnist", tmp_path, verify_checksums=False)


def test_a_corrupt_gz_is_a_data_error_not_a_zlib_traceback(tmp_path):
    from clarena.data.sources import read_idx
    packed = bytearray(gzip.compress(gzip.decompress((ASSETS / "t10k-labels-idx1-ubyte.gz").read_bytes())))
    packed[12:40] = b"\xff" * 28  # a broken deflate stream: zlib.error, not gzip's OSError
    bad = tmp_path / "t10k-labels-idx1-ubyte.gz"; bad.write_bytes(bytes(packed))
    with pytest.raises(DataError, match=f"{bad} is corrupted"): read_idx(bad)
    raw = fake_mnist(tmp_path / "tv")  # the same beside a good raw file (torchvision keeps both): checked, and named
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(bytes(packed))
    with pytest.raises(DataError, match="is corrupted|does not match the official"): load_source("mnist", tmp_path / "tv")


def test_resume_on_two_devices_is_refused_up_front(finished, tmp_path):
    "trainer.devices=2 on resume made a DDP without unused-parameter detection: a traceback in task 1 (an earlier head gets no gradient)."
    run = tmp_path / "run"; shutil.copytree(finished / "run", run)
    (run / "metrics.json").unlink(); (run / "checkpoints" / "task_1.ckpt").unlink()
    before = sorted(p.name for p in run.iterdir())
    r = cli("clarena.train", [f"resume={run}", "trainer.devices=2"], tmp_path)
    assert r.returncode == 2 and "trainer.devices=2 runs 2 processes" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert sorted(p.name for p in run.iterdir()) == before  # the run to resume keeps everything
