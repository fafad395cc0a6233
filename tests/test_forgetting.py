"""Finetuning's catastrophic forgetting: total in class-incremental Split MNIST, mild in task-incremental."""
import numpy as np

from clarena.loop import run_experiment
from clarena.train import compose_config


def run(experiment, tmp_path, data_root):
    cfg = compose_config(experiment, ["trainer.enable_progress_bar=false", f"paths.output_dir={tmp_path / experiment}",
                                      f"paths.data_dir={data_root}", "measure_fwt=false"])
    return run_experiment(cfg)


def test_finetuning_cil_forgets_til_does_not(tmp_path, no_data_root):
    cil = run("smnist_cil_finetuning", tmp_path, no_data_root)
    til = run("smnist_til_finetuning", tmp_path, no_data_root)
    R_cil, R_til = cil["acc_matrix"], til["acc_matrix"]
    # every task is learned when it is trained (two classes each: chance is 0.5 in TIL, 0.1..0.5 in CIL)
    assert min(R_cil[t][t] for t in range(5)) > 0.9, R_cil
    # CIL: after the last task the old tasks are all but gone
    assert max(R_cil[-1][:4]) < 0.05, R_cil[-1]
    assert cil["bwt"] < -0.85 and cil["forgetting"] > 0.85
    # TIL: the old heads still separate their two digits well above chance
    assert min(R_til[-1]) > 0.75, R_til[-1]
    assert til["final_avg_acc"] > cil["final_avg_acc"] + 0.5
    assert np.isclose(cil["avg_acc"][-1], np.mean(R_cil[-1]))


def test_tensorboard_logger_by_config(tmp_path, no_data_root):
    cfg = compose_config("smnist_til_finetuning", ["logger=tensorboard", "data.num_tasks=1", "trainer.limit_train_batches=3",
                                                   "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false",
                                                   f"paths.output_dir={tmp_path / 'tb'}", f"paths.data_dir={no_data_root}"])
    run_experiment(cfg)
    assert list((tmp_path / "tb" / "tensorboard" / "task_0").glob("events.out.tfevents.*"))
    assert (tmp_path / "tb" / "csv" / "task_0" / "metrics.csv").exists()  # CSV always
