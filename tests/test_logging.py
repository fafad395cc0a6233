"""What a run prints and logs: the continual-learning metrics and hyperparameters in Lightning's loggers (TensorBoard, MLflow,
CSV), the per-task lines and the final table through `logging`, validation at its training step, the progress bar, user callbacks."""
import csv
import logging

import pytest

from clarena.loop import run_experiment
from clarena.train import compose_config

QUICK = ["experiment=smnist_til_finetuning", "data.num_tasks=2", "trainer.limit_train_batches=5", "measure_fwt=false"]


def run(tmp_path, no_data_root, *overrides, progress_bar=False):
    cfg = compose_config(None, [*QUICK, f"paths.data_dir={no_data_root}", f"paths.output_dir={tmp_path / 'run'}",
                                f"trainer.enable_progress_bar={str(progress_bar).lower()}", *overrides])
    return run_experiment(cfg), tmp_path / "run"


def test_cl_metrics_and_hyperparameters_reach_tensorboard_and_mlflow(tmp_path, no_data_root, caplog):
    pytest.importorskip("mlflow")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from mlflow.tracking import MlflowClient
    with caplog.at_level(logging.INFO, logger="clarena"):
        m, run_dir = run(tmp_path, no_data_root, "logger=mlflow", "+logger.tensorboard._target_=lightning.pytorch.loggers.TensorBoardLogger",
                         "+logger.tensorboard.name=tensorboard", f"paths.log_dir={tmp_path / 'logs'}", "trainer.log_every_n_steps=1",
                         "trainer.limit_train_batches=20")
    R = m["acc_matrix"]
    # TensorBoard: one curve over tasks (version cl), each task's accuracy, the final metrics, the config as hyperparameters
    ea = EventAccumulator(str(run_dir / "tensorboard" / "cl")).Reload()
    avg = ea.Scalars("cl/avg_acc")
    assert [e.step for e in avg] == [0, 1] and abs(avg[1].value - m["avg_acc"][1]) < 1e-6
    assert [e.step for e in ea.Scalars("cl/acc_task_0")] == [0, 1] and abs(ea.Scalars("cl/acc_task_0")[1].value - R[1][0]) < 1e-6
    assert abs(ea.Scalars("cl/final_avg_acc")[-1].value - m["final_avg_acc"]) < 1e-6 and "cl/bwt" in ea.Tags()["scalars"]
    from tensorboard.plugins.hparams import plugin_data_pb2
    content = ea.PluginTagToContent("hparams")
    session = next(plugin_data_pb2.HParamsPluginData.FromString(c).session_start_info for c in content.values()
                   if plugin_data_pb2.HParamsPluginData.FromString(c).HasField("session_start_info"))
    assert session.hparams["seed"].number_value == 0 and session.hparams["data/num_tasks"].number_value == 2
    assert "model/optimizer/lr" in session.hparams and not any(k.startswith(("callbacks", "paths", "trainer/callbacks")) for k in session.hparams)
    assert len(ea.Scalars("cl/final_avg_acc")) == 1 and len(ea.Scalars("cl/bwt")) == 1  # the final metrics once
    assert "cl/acc_matrix" in ea.Tags()["images"]  # the accuracy matrix as an image
    # each task's training accuracy (the stream's rows of the step's batch), in its own run (version task_<t>), as in the CSV logs
    for t in range(2):
        acc = [(e.step, e.value) for e in EventAccumulator(str(run_dir / "tensorboard" / f"task_{t}")).Reload().Scalars("train/acc")]
        csv_acc = [(int(r["step"]), float(r["train/acc"])) for r in csv.DictReader(open(run_dir / "csv" / f"task_{t}" / "metrics.csv")) if r.get("train/acc")]
        assert [s for s, _ in acc] == [s for s, _ in csv_acc] and len(acc) == 20 and all(abs(a - b) < 1e-6 for (_, a), (_, b) in zip(acc, csv_acc))
        assert all(abs(v * 64 - round(v * 64)) < 1e-4 for _, v in acc)  # a share of the 64 rows of a batch
        assert sum(v for _, v in acc[-5:]) / 5 > 0.8, acc  # two digits told apart (chance 0.5) after 15 steps
    # MLflow (one run per clarena run, in the store shared under paths.log_dir): its curves, final metrics, curated parameters
    client = MlflowClient(f"sqlite:///{tmp_path / 'logs'}/mlflow.db")
    exp = client.get_experiment_by_name("smnist_til_finetuning")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 and not (run_dir / "mlflow.db").exists()
    cl = runs[0]
    assert cl.data.params["seed"] == "0" and cl.data.params["data.num_tasks"] == "2" and cl.info.status == "FINISHED"
    assert "model.optimizer.lr" in cl.data.params and not any(k.startswith(("callbacks", "paths")) for k in cl.data.params)
    assert cl.data.tags["algorithm"] == m["algorithm"] and cl.data.tags["seed"] == "0"
    assert [(h.step, round(h.value, 6)) for h in client.get_metric_history(cl.info.run_id, "cl/avg_acc")] == \
        [(t, round(m["avg_acc"][t], 6)) for t in range(2)]
    assert abs(cl.data.metrics["cl/final_avg_acc"] - m["final_avg_acc"]) < 1e-6 and "cl/forgetting" in cl.data.metrics
    # the CSV logger has the same curve; the per-task lines and the final table went through logging
    rows = list(csv.DictReader(open(run_dir / "csv" / "cl" / "metrics.csv")))
    assert [int(r["step"]) for r in rows if r["cl/avg_acc"]] == [0, 1]
    text = "\n".join(r.getMessage() for r in caplog.records if r.name == "clarena")
    assert f"task 1 (2/2): accuracy on tasks 0..1 = {[round(a, 4) for a in R[1]]} [elapsed " in text
    assert "after task |  task 0  task 1" in text and f"final: average accuracy {m['final_avg_acc']:.4f}, BWT {m['bwt']:.4f}, FWT n/a" in text


def val_rows(run_dir, task):
    return [(int(r["step"]), r["val/acc"]) for r in csv.DictReader(open(run_dir / "csv" / f"task_{task}" / "metrics.csv")) if r.get("val/acc")]


def test_validation_at_its_training_step_with_and_without_chunks_progress_bar_and_user_checkpoint(tmp_path, no_data_root, capsys):
    common = ["trainer.limit_train_batches=20", "trainer.max_epochs=2", "data.val_size=100"]
    _, one = run(tmp_path / "one", no_data_root, *common, "speed.steps_per_call=1")
    _, chunks = run(tmp_path / "chunks", no_data_root, *common, "speed.steps_per_call=8", "+callbacks.ckpt._target_=lightning.pytorch.callbacks.ModelCheckpoint",
                    progress_bar=True)
    # Lightning logs epoch e's validation at its last training step, 20 (e + 1) - 1: the same with 8 steps per Lightning step
    assert [s for s, _ in val_rows(one, 1)] == [19, 39]
    assert val_rows(chunks, 1) == val_rows(one, 1) and val_rows(chunks, 0) == val_rows(one, 0)
    # the progress bar counts training steps (20 a task, in chunks of 8, 8 and 4) at steps/s, without Lightning's v_num
    out = capsys.readouterr().out.replace("\r", "\n")
    assert "20/20 [" in out and "steps/s" in out and "task 1 (2/2) epoch 1" in out and "v_num" not in out, out[-2000:]
    # a checkpoint callback from the config is accepted and saves
    assert list((chunks / "csv").rglob("*.ckpt")), sorted(p.relative_to(chunks) for p in chunks.rglob("*"))
