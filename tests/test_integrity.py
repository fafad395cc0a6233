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


@pytest.mark.parametrize("val_size", [1.5, -0.1, "10%"])
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
