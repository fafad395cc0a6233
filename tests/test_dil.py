"""Domain-incremental learning (van de Ven & Tolias 2019's third scenario): one shared head, no task id at test."""
import sys

import pytest

from clarena.core import ConfigError
from clarena.loop import build, run_experiment
from clarena.train import compose_config

QUICK = ["trainer.enable_progress_bar=false", "measure_fwt=false", "trainer.max_epochs=1"]


def cfg_for(experiment, tmp_path, data_root, *overrides):
    return compose_config(experiment, [*QUICK, f"paths.output_dir={tmp_path / 'run'}", f"paths.data_dir={data_root}", *overrides])


def test_pmnist_dil_learns_with_one_shared_head(tmp_path, no_data_root):
    cfg = cfg_for("pmnist_dil_finetuning", tmp_path, no_data_root, "data.num_tasks=3", "trainer.limit_train_batches=40")
    m = run_experiment(cfg)
    R = m["acc_matrix"]
    assert m["scenario"] == "DIL"
    # ten digits, no task id: chance is 0.1; each task just learned is far above it
    assert min(R[t][t] for t in range(3)) > 0.5, R
    # the head is one layer of 10 outputs after three tasks, not one per task
    _, algo = build(cfg)
    for t in range(3): algo.setup_task(t, 10)
    assert [n for n, _ in algo.head.named_parameters()] == ["linear.weight", "linear.bias"]
    assert algo.head.linear.out_features == 10 and algo.head.num_tasks == 3
    # the checkpoint restores the shared head: clarena-eval recomputes the last row exactly
    from clarena.evaluate import evaluate_checkpoint
    ckpt = next(tmp_path.rglob("task_2.ckpt"))
    assert evaluate_checkpoint(ckpt, data_root=no_data_root)["max_abs_diff"] < 1e-6


def test_smnist_dil_learns_each_task(tmp_path, no_data_root):
    cfg = cfg_for("smnist_dil_finetuning", tmp_path, no_data_root, "data.num_tasks=3", "trainer.limit_train_batches=30")
    m = run_experiment(cfg)
    R = m["acc_matrix"]
    # "first or second digit of its task": two outputs shared by every task, chance 0.5
    assert min(R[t][t] for t in range(3)) > 0.8, R
    _, algo = build(cfg)
    for t in range(3): algo.setup_task(t, 2)
    assert algo.head.linear.out_features == 2 and len(list(algo.head.parameters())) == 2


def test_hat_refuses_dil(tmp_path, no_data_root):
    cfg = cfg_for("pmnist_hat", tmp_path, no_data_root, "data.scenario=DIL", "model/head=dil")
    with pytest.raises(ConfigError, match=r"HAT is defined for scenarios TIL, not DIL"):
        build(cfg)


def test_hat_refuses_dil_exit_status_2(tmp_path, no_data_root, monkeypatch, capsys):
    # clarena-train's own entry point, in this process (a subprocess would spend most of its time importing)
    from clarena.train import _train
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["clarena-train", "experiment=pmnist_hat", "data.scenario=DIL", "model/head=dil",
                                      f"paths.data_dir={no_data_root}", "trainer.enable_progress_bar=false"])
    with pytest.raises(SystemExit) as e: _train()
    assert e.value.code == 2
    assert "HAT is defined for scenarios TIL, not DIL" in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.ckpt")) and not list(tmp_path.rglob("metrics.json"))


@pytest.mark.parametrize("experiment,overrides,message", [
    # a DIL head with a TIL benchmark, and a TIL head with a DIL one
    ("pmnist_finetuning", ["model/head=dil"], "PermutedDataModule in scenario TIL needs a TIL head (model/head=til), got a DIL head (HeadDIL)"),
    ("pmnist_dil_finetuning", ["model/head=til"], "PermutedDataModule in scenario DIL needs a DIL head (model/head=dil), got a TIL head"),
    ("smnist_dil_finetuning", ["model/head=cil"], "SplitDataModule in scenario DIL needs a DIL head (model/head=dil), got a CIL head"),
    # rotated tasks share their classes: no class-incremental version (permuted has van de Ven & Tolias' one: 10 t + d)
    ("pmnist_dil_finetuning", ["data=rotated_fashion_mnist", "data.scenario=CIL", "model/head=cil"], "unknown scenario for RotatedDataModule 'CIL'; valid choices: 'TIL', 'DIL'"),
    ("pmnist_finetuning", ["data.scenario=CIL", "model/head=til"], "PermutedDataModule in scenario CIL needs a CIL head (model/head=cil)"),
])
def test_wrong_head_or_scenario_refused(tmp_path, no_data_root, experiment, overrides, message):
    with pytest.raises(ConfigError) as e:
        build(cfg_for(experiment, tmp_path, no_data_root, *overrides))
    assert message in str(e.value), str(e.value)


def test_split_dil_classes_per_task_mismatch_refused(tmp_path, no_data_root):
    # the HAT paper's sequence has pairs then blocks of 20 classes: one shared head cannot serve both
    cfg = cfg_for("smnist_dil_finetuning", tmp_path, no_data_root, "data=hat_cifar", "data.scenario=DIL")
    with pytest.raises(ConfigError, match=r"every part needs the same classes_per_task, got \[2, 20\]"):
        build(cfg)


def test_dil_head_refuses_a_task_of_another_size():
    from clarena.models.heads import HeadDIL
    head = HeadDIL(8)
    head.new_task(0, 2)
    with pytest.raises(ConfigError, match="task 1 has 3 classes, the head 2"):
        head.new_task(1, 3)


@pytest.mark.parametrize("experiment,dataset,outputs", [("pmnist_dil_finetuning", "mnist", 10), ("pfmnist_dil_finetuning", "fashion_mnist", 10),
                                                        ("smnist_dil_finetuning", "mnist", 2), ("sfmnist_dil_finetuning", "fashion_mnist", 2)])
def test_dil_experiments_build(tmp_path, no_data_root, experiment, dataset, outputs):
    dm, algo = build(cfg_for(experiment, tmp_path, no_data_root))
    assert (dm.scenario, dm.dataset, type(algo.head).__name__) == ("DIL", dataset, "HeadDIL")
    assert {dm.num_new_classes(t) for t in range(dm.num_tasks)} == {outputs}
