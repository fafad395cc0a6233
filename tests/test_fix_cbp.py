"""Fix and Continual Backpropagation end to end: each learns above chance, gives the same matrices in chunks as one step per
Lightning step, resumes bit for bit (after a task and mid-task); Fix's TIL matrix never changes below the diagonal; CBP
replaces units on the MLP and on the HAT paper's AlexNet-style CNN."""
import pytest

from clarena.core import ConfigError
from clarena.loop import run_experiment
from clarena.train import compose_config
from test_algorithms import test_chunks_and_resume_give_the_uninterrupted_matrices as _chunks_and_resume, run

# CBP at a rate that replaces units within these short tasks (30 steps each): 0.05 x 64 mature units per step and layer
# Fix: the later tasks' heads learn on task 0's features, which takes more than 30 steps on a permuted task
FIX = ["model/algorithm=fix", "trainer.limit_train_batches=100", "model.optimizer.lr=0.1"]
CBP = ["model/algorithm=cbp", "model.algorithm.replacement_rate=0.05", "model.algorithm.maturity_threshold=10"]


@pytest.mark.parametrize("name,extra", [("fix", FIX), ("cbp", CBP),
                                        ("cbp_mean_corrected", [*CBP, "model.algorithm.utility=mean_corrected"])])
def test_chunks_and_resume(tmp_path, no_data_root, name, extra):
    _chunks_and_resume(tmp_path, no_data_root, name, "pmnist_finetuning", extra)


def test_fix_keeps_every_task_after_it_is_learned(tmp_path, no_data_root):
    out = run(tmp_path, "fix", no_data_root, "pmnist_finetuning", *FIX)
    R = out["acc_matrix"]
    assert all(R[i][j] == R[j][j] for i in range(3) for j in range(i)), R  # TIL: frozen backbone, own heads: BWT exactly 0
    assert out["bwt"] == 0.0
    assert min(R[t][t] for t in range(3)) > 0.4, R  # the later tasks' heads learn on task 0's features


def test_cbp_replaces_units(tmp_path, no_data_root):
    out = run(tmp_path, "cbp", no_data_root, "pmnist_finetuning", *CBP)
    replaced = [r["replaced_units"] for r in out["algorithm_report"]]
    assert replaced == [[n, n] for n in expected_replacements(64, [30, 30, 30], 0.05, 10)], replaced


def expected_replacements(units: int, task_steps: list, rate: float, maturity: int) -> list:
    "Units replaced per layer by the end of each task, by the rule alone: before each step, c += rate x (units older than `maturity`), floor(c) of them replaced (age 0); then every unit ages by one. Which mature units go does not change the count."
    ages, c, total, out = [0] * units, 0.0, 0, []
    for steps in task_steps:
        for _ in range(steps):
            mature = [i for i, a in enumerate(ages) if a > maturity]
            c += rate * len(mature)
            k = int(c); c -= k; total += k
            for i in mature[:k]: ages[i] = 0
            ages = [a + 1 for a in ages]
        out.append(total)
    return out


def test_expected_replacements_by_hand():
    # 10 units, m=1, rate 0.15 (the chapter's example): checks 3, 4, 5 replace 1, 1, 2
    assert expected_replacements(10, [2, 1, 1, 1], 0.15, 1) == [0, 1, 2, 4]


def test_cbp_on_the_cnn(tmp_path, no_data_root):
    out = run_experiment(compose_config("pmnist_finetuning", [
        *CBP, "model/backbone=alexnet", "model.backbone.in_channels=1", "model.backbone.image_size=28", "model.backbone.channels=[8,8,8]",
        "model.backbone.fc_dims=[32,32]", "model.backbone.conv_dropout=0", "model.backbone.fc_dropout=0",
        "model.optimizer.lr=0.1", "model.optimizer.momentum=0.9", "data.num_tasks=2", "trainer.limit_train_batches=40", "trainer.enable_progress_bar=false",
        "measure_fwt=false", f"paths.output_dir={tmp_path / 'cnn'}", f"paths.data_dir={no_data_root}"]))
    assert all(n > 0 for n in out["algorithm_report"][-1]["replaced_units"]), out["algorithm_report"]
    assert min(out["acc_matrix"][t][t] for t in range(2)) > 0.3, out["acc_matrix"]


def test_cbp_bad_input():
    from functools import partial
    import torch
    from clarena.algorithms.cbp import ContinualBackprop
    from clarena.models.backbones import MLP, ResNet18
    from clarena.models.heads import HeadTIL
    opt = partial(torch.optim.SGD, lr=0.1)
    with pytest.raises(ConfigError, match="replacement_rate"): ContinualBackprop(MLP(4, [8]), HeadTIL(8), opt, replacement_rate=2)
    with pytest.raises(ConfigError, match="utility"): ContinualBackprop(MLP(4, [8]), HeadTIL(8), opt, utility="weight")
    with pytest.raises(ConfigError, match="hidden units"): ContinualBackprop(ResNet18(width=4), HeadTIL(32), opt)
