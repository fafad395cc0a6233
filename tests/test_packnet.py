"""PackNet (Mallya & Lazebnik, CVPR 2018) proven by its invariants: earlier tasks' outputs unchanged bit for bit, BWT exactly
zero, the prune keeps exactly the right count, chunks and resume give the uninterrupted matrices, bad settings stop."""
from pathlib import Path

import lightning as L
import pytest
import torch

from clarena.algorithms.packnet import FREE
from clarena.checkpoints import load_checkpoint
from clarena.core import ConfigError
from clarena.loop import build, fit_task, make_trainer, run_experiment
from clarena.train import compose_config

from conftest import resumes_after_task

COMMON = ["model/algorithm=packnet", "data.num_tasks=3", "trainer.limit_train_batches=100", "measure_fwt=false",
          "trainer.enable_progress_bar=false", "trainer.deterministic=true"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    "PackNet with its config's defaults on the bundled MNIST sample: chunks (speed.steps_per_call=auto) and one step per Lightning step."
    d = tmp_path_factory.mktemp("packnet")
    out = {name: run_experiment(compose_config("pmnist_finetuning", [*COMMON, *extra, f"paths.output_dir={d / name}",
                                                                     f"paths.data_dir={d / 'no-data'}"]))
           for name, extra in (("auto", []), ("one", ["speed.steps_per_call=1"]))}
    return out, d


def test_bwt_is_exactly_zero_and_every_task_learns(runs):
    m = runs[0]["auto"]
    assert m["algorithm"] == "PackNet" and m["data_is_sample"]
    A = m["acc_matrix"]
    for j in range(3):
        assert all(A[i][j] == A[j][j] for i in range(j, 3)), A  # each column constant: nothing forgotten, bit for bit
        assert all(L_[j] == m["loss_matrix"][j][j] for L_ in m["loss_matrix"][j:]), m["loss_matrix"]
    assert m["bwt"] == 0.0 and m["forgetting"] == 0.0
    assert min(A[t][t] for t in range(3)) > 0.1 + 0.6, A  # chance is 0.1; measured [0.8915, 0.8935, 0.8805]
    caps = [r["task_capacity"][0] for r in m["algorithm_report"]]
    assert caps == [0.25, 0.1875, 0.140625], caps  # (1 - p) p^t of each layer, p = 0.75


def test_chunks_give_the_matrices_of_one_step_per_lightning_step(runs):
    m = runs[0]
    assert m["one"]["acc_matrix"] == m["auto"]["acc_matrix"] and m["one"]["loss_matrix"] == m["auto"]["loss_matrix"]


def test_resume_gives_the_uninterrupted_run(runs, tmp_path):
    m, d = runs
    resumes_after_task(tmp_path, m["auto"], run_dir=d / "auto")  # killed during task 2, resumed from task 1's checkpoint
    a, b = (load_checkpoint(r / "checkpoints" / "task_2.ckpt")["state_dict"] for r in (d / "auto", tmp_path / "killed"))
    assert a.keys() == b.keys() and {"owner_0", "owner_1", "shared_fixed"} <= set(a)
    for k in a: assert torch.equal(a[k], b[k]), k


def train_task(cfg, dm, algo, t):
    trainer = make_trainer(cfg, Path(cfg.paths.output_dir), t)
    dm.setup_task(t)
    algo.setup_task(t, dm.num_new_classes(t))
    fit_task(trainer, algo, dm)  # on_task_start, fit, on_task_end (prune, retrain)


@pytest.mark.parametrize("extra", [["model.optimizer.momentum=0.9"], ["model/optimizer=adam", "model.backbone.batch_norm=true"]],
                         ids=["sgd_momentum", "adam_batch_norm"])
def test_earlier_tasks_outputs_unchanged_bit_for_bit(tmp_path, no_data_root, extra):
    cfg = compose_config("pmnist_finetuning", ["model/algorithm=packnet", "data.num_tasks=3", "model.backbone.hidden_dims=[64,64]",
                                               "trainer.limit_train_batches=40", "trainer.enable_progress_bar=false",
                                               f"paths.output_dir={tmp_path}", f"paths.data_dir={no_data_root}", *extra])
    L.seed_everything(0)
    dm, algo = build(cfg)
    train_task(cfg, dm, algo, 0)
    x0, y0 = dm.test_views[0].batch(torch.arange(500))
    algo.eval()
    with torch.no_grad(): logits0 = algo(x0, 0).clone()
    assert (logits0.argmax(1) == y0).float().mean() > 0.5  # task 0 learnt something worth keeping
    before = {k: v.clone() for k, v in algo.state_dict().items()}
    owner0 = [o.clone() for o in algo.owners]
    for t in (1, 2): train_task(cfg, dm, algo, t)
    after = algo.state_dict()
    for l, name in enumerate(algo.weight_names):
        w0, w2, kept = before[f"backbone.{name}"], after[f"backbone.{name}"], owner0[l] == 0
        assert torch.equal(w2[kept], w0[kept]), name  # task 0's weights, bit for bit
        assert bool((w0[~kept] == 0).all()), name  # the pruned ones were zero when task 0 ended ...
        assert int((w2[~kept] != 0).sum()) > 0.2 * int((~kept).sum()), name  # ... and later tasks trained them
        assert torch.equal(algo.owners[l][kept], owner0[l][kept])
    for k in before:  # biases, batch norm (parameters and statistics), task 0's head
        if not k.startswith(("backbone.fcs.0.weight", "backbone.fcs.1.weight", "owner_", "shared_fixed", "head.heads.1", "head.heads.2")):
            assert torch.equal(after[k], before[k]), k
    algo.eval()
    with torch.no_grad(): logits2 = algo(x0, 0)
    assert torch.equal(logits2, logits0)


def test_prune_keeps_exactly_the_largest_per_layer(tmp_path, no_data_root):
    "A hand example on the model: p = 0.75 of 12 free weights prunes 9 and keeps the 3 largest; then 7 of the 9 left, keeping 2."
    cfg = compose_config("pmnist_finetuning", ["model/algorithm=packnet", "model.backbone.input_dim=4", "model.backbone.hidden_dims=[3,2]",
                                               f"paths.output_dir={tmp_path}", f"paths.data_dir={no_data_root}"])
    _, algo = build(cfg)
    w0, w1 = algo.backbone.fcs[0].weight, algo.backbone.fcs[1].weight
    with torch.no_grad():
        w0.copy_(torch.tensor([[0.1, -5.0, 0.2, 0.3], [4.0, -0.4, 0.5, -0.6], [0.7, 0.8, -3.0, 0.9]]))
        w1.copy_(torch.tensor([[1.0, -2.0, 3.0], [-4.0, 5.0, -6.0]]))
    algo.setup_task(0, 10); algo.on_task_end(0, None)  # no data: prune without retraining
    o0, o1 = algo.owners
    assert o0.tolist() == [[FREE, 0, FREE, FREE], [0, FREE, FREE, FREE], [FREE, FREE, 0, FREE]]
    assert w0.tolist() == [[0, -5.0, 0, 0], [4.0, 0, 0, 0], [0, 0, -3.0, 0]]
    assert o1.tolist() == [[FREE, FREE, FREE], [FREE, FREE, 0]] and int((w1 != 0).sum()) == 1  # 6 - round(4.5) = 1: the -6
    with torch.no_grad(): w0.add_(torch.arange(12.0).view(3, 4) * (o0 == FREE))  # task 1 trains the free ones: 1, 2, 3, 5, ...
    algo.setup_task(1, 10); algo.on_task_end(1, None)
    assert int((o0 == 1).sum()) == 2 and (o0 == 1).nonzero().tolist() == [[2, 1], [2, 3]]  # 9 - round(6.75) = 2: the 11 and the 9
    assert int((o0 == 0).sum()) == 3 and int((o0 == FREE).sum()) == 7


@pytest.mark.parametrize("override, message", [
    ("model.algorithm.prune_ratio=0", "PackNet's prune_ratio must be a number > 0.0, got 0"),
    ("model.algorithm.prune_ratio=-0.5", "PackNet's prune_ratio must be a number > 0.0, got -0.5"),
    ("model.algorithm.prune_ratio=1", "PackNet's prune_ratio must be a number < 1 (the fraction of a task's weights it frees), got 1"),
    ("model.algorithm.prune_ratio=1.5", "PackNet's prune_ratio must be a number < 1 (the fraction of a task's weights it frees), got 1.5"),
    ("model.algorithm.retrain_epochs=-1", "PackNet's retrain_epochs must be a number >= 0.0, got -1"),
    ("model.algorithm.retrain_epochs=1.5", "PackNet's retrain_epochs must be a whole number, got 1.5")])
def test_bad_settings(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build(compose_config("pmnist_finetuning", ["model/algorithm=packnet", override, f"paths.data_dir={tmp_path}"]))


def test_refuses_weight_decay_and_cil(tmp_path, no_data_root):
    _, algo = build(compose_config("pmnist_finetuning", ["model/algorithm=packnet", f"paths.data_dir={no_data_root}"]))
    with pytest.raises(ConfigError, match="PackNet with weight_decay=0.01"):
        algo.check_optimizer(torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))]))  # AdamW's default decay
    with pytest.raises(ConfigError, match="PackNet is defined for scenarios TIL, not CIL"):
        build(compose_config("smnist_cil_finetuning", ["model/algorithm=packnet", f"paths.data_dir={no_data_root}"]))


def test_per_task_tensors_follow_the_module_to_its_device(tmp_path, no_data_root):
    "Lightning moves the module to the CPU after every fit and test and back before the next: the gradient factors must move with it."
    _, algo = build(compose_config("pmnist_finetuning", ["model/algorithm=packnet", f"paths.data_dir={no_data_root}"]))
    algo.setup_task(0, 10); algo.on_task_start(0, None)
    algo.to("meta")  # any device other than the one on_task_start saw
    moved = algo._factors + algo.owners + [algo.shared_fixed]
    assert len(moved) == 5 and all(t.device.type == "meta" for t in moved)
