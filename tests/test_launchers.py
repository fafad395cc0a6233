"""The same small arena through joblib, submitit's local executor and a local Ray cluster (the `cluster` extra):
the same runs and matrices, finished runs skipped by a second call, failed runs reported without stopping the others;
and the errors a sweep gives, before any run starts, for a launcher that cannot run it."""
import json
import os
import socket
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest

from clarena.arena import collect

ENV = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
ARENA = [sys.executable, "-c", "from clarena.arena import main; main()"]
SMALL = ["model/algorithm=finetuning", "data=split_mnist", "data.num_tasks=2", "trainer.limit_train_batches=5", "measure_fwt=false",
         "trainer.enable_progress_bar=false", "arena.name=t",
         "~hydra.callbacks.arena_report"]  # the report notebook (papermill) is the arena's, tested in test_experiment_notebooks
# Two seeds; each with the config's own learning rate (0.05: finishes) and one whose loss is non-finite at the first step (fails).
# The sweep runs its jobs two at a time (Hydra's basic sweeper hands the launcher batches of two), each batch one run that
# finishes beside one that fails; a second call with the two finished seeds must skip both.
FIRST, SECOND = ["seed=0,1", "model.optimizer.lr=0.05,1e30", "hydra.sweeper.max_batch_size=2"], ["seed=0,1"]
LAUNCHERS = {"joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
             "slurm_local": ["hydra/launcher=slurm_local"],
             "ray_cluster": ["hydra/launcher=ray_cluster", "hydra.launcher.ray.init.num_cpus=2"]}
CLUSTER = find_spec("hydra_plugins.hydra_submitit_launcher") is not None and find_spec("hydra_plugins.hydra_ray_launcher") is not None
needs_cluster = pytest.mark.skipif(not CLUSTER, reason='the cluster extra is not installed (pip install -e ".[cluster]"): '
                                                       "hydra-submitit-launcher and hydra-ray-launcher are needed")


def arena(tmp_path, *args, python=None, data_dir=None):
    "clarena-arena in `tmp_path`; the data root: an empty folder (the bundled MNIST sample) unless `data_dir` names another."
    cmd = ARENA if python is None else [sys.executable, "-c", python]
    return subprocess.run([*cmd, *SMALL, f"paths.data_dir={data_dir or tmp_path / 'none'}", f"paths.log_dir={tmp_path / 'logs'}", *args],
                          cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)


def summary(arena_dir):
    "What must not depend on the launcher: each run's identity, status, seed, matrix and error."
    return {r["identity"]: (r["status"], r.get("seed"), r.get("acc_matrix"), r.get("error")) for r in collect(arena_dir)}


def sweep(tmp_path, launcher, data_dir):
    "Both calls of the arena through `launcher`; the runs they leave, and what each call said."
    first = arena(tmp_path, *FIRST, *LAUNCHERS[launcher], data_dir=data_dir)
    assert first.returncode == 1, first.stderr[-3000:]  # two runs failed: exit 1, the others finished
    assert "2 of 4 sweep jobs failed" in first.stderr and "non-finite loss" in first.stderr, first.stderr[-3000:]
    runs = tmp_path / "logs" / "arena" / "t"
    stamps = {p: p.stat().st_mtime_ns for p in runs.glob("runs/*/metrics.json")}
    second = arena(tmp_path, *SECOND, *LAUNCHERS[launcher], data_dir=data_dir)
    assert second.returncode == 0, second.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in runs.glob("runs/*/metrics.json")} == stamps  # skipped, not run again
    return summary(runs), first, second


@pytest.fixture(scope="module")
def no_data(tmp_path_factory):
    return tmp_path_factory.mktemp("no-data")


@pytest.fixture(scope="module")
def joblib_runs(tmp_path_factory, no_data):
    return sweep(tmp_path_factory.mktemp("joblib"), "joblib", no_data)


def test_joblib_reference(joblib_runs):
    runs, first, second = joblib_runs
    assert sorted(s for s, *_ in runs.values()) == ["failed", "failed", "finished", "finished"]
    assert all("non-finite loss" in e for s, _, _, e in runs.values() if s == "failed")
    assert second.stdout.count("finished before: skipped") == 2, second.stdout[-2000:]


@needs_cluster
@pytest.mark.parametrize("launcher", ["slurm_local", "ray_cluster"])
def test_same_arena_through_each_launcher(tmp_path, launcher, joblib_runs, no_data):
    runs, first, second = sweep(tmp_path, launcher, no_data)
    assert runs == joblib_runs[0]  # the same run identities, statuses, errors and (bit for bit, on the CPU) matrices
    if launcher == "slurm_local":  # submitit keeps each job's output in its own files, under the sweep's .submitit/
        logs = [l for p in (tmp_path / "logs" / "arena" / "t" / "hydra").glob("*/.submitit/*/*_log.out") for l in p.read_text().splitlines()
                if l.startswith("[clarena-arena] ")]
        assert sum("finished before: skipped" in l for l in logs) == 2, logs
        assert sum("failed: TrainingError: non-finite loss" in l for l in logs) == 2, logs
    else:  # Ray forwards its workers' output to the driver's
        assert second.stdout.count("finished before: skipped") == 2, second.stdout[-2000:]


def test_missing_plugin_is_named_before_any_run(tmp_path):
    # the extra's modules hidden from this process whether or not they are installed here: the same as not installed
    hide = "import sys; [sys.modules.__setitem__(m, None) for m in ('hydra_plugins.hydra_submitit_launcher', 'submitit')]; "
    r = arena(tmp_path, "seed=0", "hydra/launcher=slurm_local", python=hide + "from clarena.arena import main; main()")
    assert r.returncode == 2, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("clarena: configuration error: hydra/launcher=slurm_local needs hydra-submitit-launcher"), r.stderr[-3000:]
    assert 'pip install -e ".[cluster]"' in last and "Traceback" not in r.stderr
    assert not (tmp_path / "logs" / "arena" / "t" / "runs").exists()


@needs_cluster
def test_ray_address_that_does_not_answer(tmp_path):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()  # nothing listens there
    r = arena(tmp_path, "seed=0", "hydra/launcher=ray_cluster", f"hydra.launcher.ray.init.address=127.0.0.1:{port}")
    assert r.returncode == 2, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert f"the Ray cluster at 127.0.0.1:{port}" in last and "does not answer" in last and "ray start --head" in last, r.stderr[-3000:]
    assert not (tmp_path / "logs" / "arena" / "t" / "runs").exists()


@needs_cluster
def test_slurm_job_script(tmp_path, monkeypatch):
    "What `hydra/launcher=slurm` asks Slurm for, in the script submitit would submit (stand-ins for srun and sbatch: no cluster here)."
    import submitit
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf
    from clarena.core import ConfigError
    from clarena.launchers import check_launcher
    def config(*overrides):
        GlobalHydra.instance().clear()
        with initialize_config_module("clarena.conf", version_base="1.3"):
            return compose("arena", overrides=["hydra/launcher=slurm", *overrides], return_hydra_config=True)
    with pytest.raises(ConfigError, match="sbatch, which is not on this machine's PATH"):
        monkeypatch.setenv("PATH", "/nonexistent"); check_launcher(config())
    monkeypatch.undo()
    for tool in ("srun", "sbatch"):
        (tmp_path / tool).write_text("#!/bin/sh\nexit 0\n"); (tmp_path / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(ConfigError, match="asks Slurm for no GPU"): check_launcher(config("trainer=gpu", "hydra.launcher.gpus_per_node=0"))
    cfg = check_launcher(config("hydra.launcher.partition=gpu", "trainer=gpu"))
    GlobalHydra.instance().clear()
    # as the plugin builds its executor (hydra_submitit_launcher's BaseSubmititLauncher.launch)
    p = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    p.pop("_target_"); p.pop("submitit_folder"); p["name"] = "arena"
    ex = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="slurm", slurm_max_num_timeout=p.pop("max_num_timeout"))
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    ex.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in p.items()})
    script = ex._executor._make_submission_file_text("python -m x", "0")
    for line in ("#SBATCH --gpus-per-node=1", "#SBATCH --partition=gpu", "#SBATCH --time=240", "#SBATCH --cpus-per-task=4",
                 "#SBATCH --mem=16GB", "#SBATCH --signal=USR2@120"):
        assert line in script, script


def write_idx(path, a):
    "`a` (uint8) as an IDX file: the format MNIST ships in."
    path.write_bytes(bytes([0, 0, 8, a.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in a.shape) + a.tobytes())


def test_identity_leaves_out_where_the_data_is(tmp_path):
    "The same run with its data elsewhere is the same run (skipped); under the same identity, other data is refused, the run kept."
    from clarena.data.sources import load_bundled_mnist
    one = ["seed=0", "hydra/launcher=basic", "data.verify_checksums=false"]  # unverified: the IDX files below are home-made
    first = arena(tmp_path, *one, data_dir=tmp_path / "here")
    assert first.returncode == 0, first.stderr[-3000:]
    [run] = list((tmp_path / "logs" / "arena" / "t" / "runs").iterdir())
    stamp = (run / "metrics.json").stat().st_mtime_ns
    moved = arena(tmp_path, *one, data_dir=tmp_path / "elsewhere")  # another machine's data path, the same (bundled) data
    assert moved.returncode == 0 and f"[clarena-arena] {run.name} finished before: skipped" in moved.stdout, moved.stdout[-3000:]
    other = tmp_path / "other"; other.mkdir()  # MNIST's four IDX files, but not the data the run had: the sample's images inverted
    s = load_bundled_mnist()
    for stem, t in zip(("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
                       (255 - s.x_train[:, 0], s.y_train, 255 - s.x_test[:, 0], s.y_test)):
        write_idx(other / stem, t.numpy().astype("uint8"))
    refused = arena(tmp_path, *one, data_dir=other)
    assert refused.returncode == 1, refused.stderr[-3000:]
    assert f"[clarena-arena] {run.name} failed: run {run.name} finished before on other data: it was trained on mnist-bundled" in refused.stdout, \
        refused.stdout[-3000:]
    assert "point data.root (or paths.data_dir) at the run's data" in refused.stdout
    assert (run / "metrics.json").stat().st_mtime_ns == stamp and [p.name for p in run.parent.iterdir()] == [run.name]
