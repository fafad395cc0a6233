"""Loggers that compare runs: one MLflow run per clarena run in a store shared under the log directory, tagged and with its results
as artifacts, its set-up outside the recorded wall time."""
import time
from pathlib import Path

import pytest

from clarena.loop import run_experiment
from clarena.train import compose_config

QUICK = ["experiment=smnist_til_finetuning", "data.num_tasks=2", "trainer.limit_train_batches=3", "measure_fwt=false",
         "trainer.enable_progress_bar=false"]


def test_two_runs_share_one_mlflow_store_and_compare(tmp_path, no_data_root):
    pytest.importorskip("mlflow")
    import mlflow
    logs, start = tmp_path / "logs", time.time()
    outs = {}
    for algo in ("finetuning", "lwf"):
        cfg = compose_config(None, [*QUICK, f"model/algorithm={algo}", "logger=mlflow", f"paths.data_dir={no_data_root}",
                                    f"paths.log_dir={logs}", f"paths.output_dir={tmp_path / algo}"])
        outs[algo] = run_experiment(cfg)
    uri = f"sqlite:///{logs.resolve()}/mlflow.db"
    assert not (Path.cwd() / "mlruns").exists() or (Path.cwd() / "mlruns").stat().st_mtime < start  # artifacts beside the store
    assert (logs / "mlflow.db").exists() and not [p for a in ("finetuning", "lwf") for p in (tmp_path / a).rglob("mlflow.db")]  # one store, shared, not one per run
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["smnist_til_finetuning"], output_format="list")
    assert len(runs) == 2  # one MLflow run per clarena run (no task_<t> runs)
    tags = [r.data.tags for r in runs]
    assert {t["algorithm"] for t in tags} == {m["algorithm"] for m in outs.values()} and {t["seed"] for t in tags} == {"0"}
    assert {t["run_dir"] for t in tags} == {m["run_dir"] for m in outs.values()} and {t["scenario"] for t in tags} == {outs["lwf"]["scenario"]}
    client = mlflow.tracking.MlflowClient(uri)
    for m in outs.values():
        found = mlflow.search_runs(experiment_names=["smnist_til_finetuning"], filter_string=f"tags.algorithm = '{m['algorithm']}'", output_format="list")
        assert len(found) == 1
        r = found[0]
        assert abs(r.data.metrics["cl/final_avg_acc"] - m["final_avg_acc"]) < 1e-6 and r.info.status == "FINISHED"
        hist = client.get_metric_history(r.info.run_id, "cl/avg_acc")
        assert [(h.step, round(h.value, 6)) for h in hist] == [(t, round(m["avg_acc"][t], 6)) for t in range(2)]  # tasks as steps
        assert len(client.get_metric_history(r.info.run_id, "cl/final_avg_acc")) == 1  # final metrics once
        arts = {f.path for f in client.list_artifacts(r.info.run_id)}
        assert {"metrics.json", "acc_matrix.csv"} <= arts and any(p.endswith(".png") for p in arts)
        assert r.data.params["seed"] == "0" and not any(k.startswith("callbacks") for k in r.data.params)  # curated hyperparameters
        assert float(r.data.tags["setup_s"]) > 0


def test_wandb_offline_one_run_per_clarena_run_grouped_by_arena(tmp_path, no_data_root):
    "logger=wandb: one offline W&B run per clarena run, its config the curated hyperparameters, the tasks as steps, the final metrics in its summary."
    pytest.importorskip("wandb")
    import json
    from clarena.loop import run_experiment
    from clarena.train import compose_config
    cfg = compose_config(None, ["experiment=smnist_til_finetuning", "data.num_tasks=2", "trainer.limit_train_batches=3", "measure_fwt=false",
                                "trainer.enable_progress_bar=false", "logger=wandb", f"paths.data_dir={no_data_root}",
                                f"paths.output_dir={tmp_path / 'run'}"])
    m = run_experiment(cfg)
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs  # not one per task
    # the offline run's record (protobuf; wandb 0.2x+ writes no summary or config files offline): its keys and values are in it as text.
    # wandb-core, a process of its own, may still be writing it when `finish` has returned (seen with wandb 0.31 on a loaded
    # machine: the record's header only): read it until every key is in, for up to a minute
    keys = (b"cl/avg_acc", b"cl/acc_task_1", b"cl/final_avg_acc", b"model.optimizer.lr", b"figures/acc_matrix", b"smnist_til_finetuning",
            m["algorithm"].encode(), b"seed 0")
    for _ in range(120):
        log = b"".join(f.read_bytes() for f in runs[0].glob("*.wandb"))
        if all(key in log for key in keys): break
        time.sleep(0.5)
    for key in keys: assert key in log, key
    assert b"callbacks" not in log and b"paths." not in log  # the curated hyperparameters only


def test_parallel_runs_share_a_new_mlflow_store(tmp_path, no_data_root):
    """Two runs in parallel processes (`hydra/launcher=parallel`, as an arena's `n_jobs=2`) that both find no store yet: both set
    it up at once (its tables, the experiment), and both runs land in it, finished."""
    pytest.importorskip("mlflow")
    import os, subprocess, sys
    import mlflow
    logs = tmp_path / "logs"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "clarena.train", "-m", *QUICK, "seed=0,1", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2",
                        "logger=mlflow", f"paths.data_dir={no_data_root}", f"paths.log_dir={logs}", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                       env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    mlflow.set_tracking_uri(f"sqlite:///{logs.resolve()}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["smnist_til_finetuning"], output_format="list")
    assert sorted(r.data.tags["seed"] for r in runs) == ["0", "1"] and {r.info.status for r in runs} == {"FINISHED"}
    assert all("cl/final_avg_acc" in r.data.metrics for r in runs)
