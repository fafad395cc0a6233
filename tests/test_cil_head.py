"""The class-incremental head of the DER paper (Buzzega et al. 2020): one output layer over all of the benchmark's classes from the
first task, trained with cross-entropy over all of them (`model/head=cil_fixed`; what `model/head=cil` gives DER and DER++).
On Split Fashion-MNIST CIL, DER on it is far above Finetuning at the paper's protocol, and at a reduced budget ER, A-GEM and
DER++ keep the places they hold there; DER on a growing head is refused before anything is built. Every method that reads head
sizes runs on the fixed head, and a run resumed from a task checkpoint gives the uninterrupted matrices bit for bit. The head
itself (seeded, no new weights per task, `widths`) is tested in nbs/03_heads.ipynb."""
import subprocess
import sys

import pytest
import torch

from clarena.core import ConfigError
from clarena.loop import build, run_experiment
from clarena.train import compose_config, resume_config

from conftest import needs_fashion, resumes_after_task

SFMNIST_CIL = ["data=split_fashion_mnist", "data.scenario=CIL", "data.num_tasks=5", "measure_fwt=false", "trainer.enable_progress_bar=false",
               "checkpoint.every_minutes=null"]
# the DER paper's Seq-MNIST protocol (Sec. 5 and its appendix): the MLP 100-100, SGD, batch 10, one epoch, the fixed head
PAPER = ["data.batch_size=10", "trainer.max_epochs=1", "model.backbone.hidden_dims=[100,100]", "model/head=cil_fixed"]
# its selected hyperparameters for Seq-MNIST with a buffer of 200 (appendix; the reference code's best_args: lr, minibatch, alpha, beta)
BEST_200 = {"finetuning": ["model.optimizer.lr=0.03"],
            "der": ["model/algorithm=der", "model.optimizer.lr=0.03", "model.algorithm.alpha=0.2", "model.algorithm.replay_batch_size=10"],
            "derpp": ["model/algorithm=derpp", "model.optimizer.lr=0.03", "model.algorithm.alpha=0.2", "model.algorithm.beta=1.0",
                      "model.algorithm.replay_batch_size=128"],
            "er": ["model/algorithm=er", "model.optimizer.lr=0.01", "model.algorithm.replay_batch_size=10"],
            "agem": ["model/algorithm=agem", "model.optimizer.lr=0.1", "model.algorithm.memory_batch_size=128"]}
REDUCED = ["trainer.limit_train_batches=200"]  # 200 steps of 10 per task: 2,000 of each task's 10,800 training images


@pytest.fixture(scope="module")
def sfmnist(tmp_path_factory):
    "Final average accuracy of each method (BEST_200, the paper's protocol) on CIL Split Fashion-MNIST, seed 0, at a budget; made on first use."
    done = {}
    def get(name, budget=()):
        key = (name, tuple(budget))
        if key not in done:
            d = tmp_path_factory.mktemp(name)
            m = run_experiment(compose_config("smnist_cil_finetuning", [*SFMNIST_CIL, *PAPER, *BEST_200[name], *budget, f"paths.output_dir={d}"]))
            done[key] = m["avg_acc"][-1]
        return done[key]
    return get


@needs_fashion
def test_der_far_above_finetuning_at_the_papers_protocol(sfmnist):
    "One epoch of batch 10 (1,080 steps a task): the paper's Table 2 has DER 84.55 and SGD 19.66 on Seq-MNIST with 200 samples."
    der, ft = sfmnist("der"), sfmnist("finetuning")
    assert ft < 0.25, ft     # measured: 0.1993 (only the last task's classes)
    assert der >= 0.6, der   # measured: 0.7405


@needs_fashion
def test_the_paper_order_at_a_reduced_budget(sfmnist):
    """200 steps of 10 a task. Measured over seeds 0, 1, 2 (2026-12-07): Finetuning 0.199/0.193/0.199, A-GEM 0.348/0.378/0.320, DER 0.721/0.657/0.717,
    ER 0.725/0.722/0.736, DER++ 0.767/0.767/0.764. The paper's DER++ > ER > A-GEM > SGD and DER > A-GEM hold with margins; DER against
    ER is within noise at this budget (below it on 2 of 3 seeds), so it is not asserted here."""
    acc = {n: sfmnist(n, REDUCED) for n in BEST_200}
    assert acc["der"] > acc["finetuning"] + 0.4, acc
    assert acc["derpp"] > acc["er"] + 0.02, acc
    assert acc["er"] > acc["agem"] + 0.2 and acc["der"] > acc["agem"] + 0.2, acc
    assert acc["agem"] > acc["finetuning"] + 0.05, acc


@needs_fashion
@pytest.mark.slow
def test_the_paper_order_at_the_papers_protocol(sfmnist):
    """One epoch of batch 10 (about 40 s). Measured (2026-12-07), seed 0: DER++ 0.7421, DER 0.7405, ER 0.7206, A-GEM 0.4147, Finetuning 0.1993 (the
    paper's Seq-MNIST order); seed 1: DER 0.7565, ER 0.7451, DER++ 0.7242, A-GEM 0.3938. DER++, DER and ER are within noise of each
    other here, so each is asserted to be at least the next within 0.02 (seed 0); the gaps to A-GEM and Finetuning are wide."""
    acc = {n: sfmnist(n) for n in BEST_200}
    assert acc["derpp"] >= 0.6 and acc["derpp"] > acc["der"] - 0.02 and acc["der"] > acc["er"] - 0.02, acc
    assert acc["er"] > acc["agem"] + 0.2 and acc["agem"] > acc["finetuning"] + 0.05, acc


def test_which_head_each_method_gets(tmp_path):
    "model/head=cil: DER and DER++ the fixed head over the benchmark's 10 classes, the others a growing one; cil_fixed/cil_growing ask."
    def head(*overrides):
        _, algo = build(compose_config("smnist_cil_finetuning", [*overrides, f"paths.data_dir={tmp_path}"]))
        return algo.head.fixed, algo.head.num_classes
    assert head("model/algorithm=der") == (True, 10) and head("model/algorithm=derpp") == (True, 10)
    assert head() == (False, 0) and head("model/algorithm=er") == (False, 0) and head("reference=joint") == (False, 0)
    assert head("model/head=cil_fixed") == (True, 10) and head("model/algorithm=icarl", "model/head=cil_fixed") == (True, 10)
    assert head("data.num_tasks=3", "model/head=cil_fixed") == (True, 6)  # the benchmark's classes: 3 tasks of 2
    assert head("model/algorithm=er", "model/head=cil_growing") == (False, 0)


def test_der_on_a_growing_head_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="DER is defined on a fixed CIL head, not a growing one: its loss needs every class's output"):
        build(compose_config("smnist_cil_finetuning", ["model/algorithm=der", "model/head=cil_growing", f"paths.data_dir={tmp_path}"]))
    with pytest.raises(ConfigError, match="model.head.fixed must be true"):
        build(compose_config("smnist_cil_finetuning", ["model.head.fixed=maybe", f"paths.data_dir={tmp_path}"]))
    r = subprocess.run([sys.executable, "-m", "clarena.train", "experiment=smnist_cil_finetuning", "model/algorithm=derpp", "model/head=cil_growing",
                        f"paths.log_dir={tmp_path / 'logs'}", f"paths.data_dir={tmp_path}"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip().count("\n") == 0 and "defined on a fixed CIL head" in r.stderr, r.stderr
    assert not any((tmp_path / "logs").rglob("metrics.json"))


def small(tmp_path, name, data_root, *extra):
    cfg = compose_config("smnist_cil_finetuning", ["data.num_tasks=3", "trainer.limit_train_batches=30", "model.backbone.hidden_dims=[64,64]",
                                                   "model/head=cil_fixed", "trainer.deterministic=true", "trainer.enable_progress_bar=false",
                                                   "measure_fwt=false", f"paths.output_dir={tmp_path / name}", f"paths.data_dir={data_root}", *extra])
    return run_experiment(cfg)


@pytest.mark.parametrize("method", ["model/algorithm=er", "model/algorithm=agem", "reference=joint", "reference=random"])
def test_methods_run_on_the_fixed_head(tmp_path, no_data_root, method):
    "Replay, A-GEM's reference gradient and the references read the head's outputs: all ten from the first task."
    m = small(tmp_path, "run", no_data_root, method)
    acc = m["acc_matrix"]
    if method == "reference=random": assert m["avg_acc"][-1] < 0.3, acc  # untrained: about chance over ten outputs (measured 0.16)
    else: assert min(acc[t][t] for t in range(3)) > 0.8 and m["avg_acc"][-1] > 0.45, acc


@pytest.mark.parametrize("algorithm", ["lwf", "icarl", "derpp"])
def test_fixed_head_resumes_bit_for_bit(tmp_path, no_data_root, algorithm):
    "LwF's and iCaRL's frozen copies (rebuilt on an empty head of the same form), DER++'s stored ten logits: a run resumed after task 1, or within it from a step checkpoint, ends as the whole run."
    whole = small(tmp_path, "whole", no_data_root, f"model/algorithm={algorithm}")
    assert min(whole["acc_matrix"][t][t] for t in range(3)) > 0.6, whole["acc_matrix"]
    resumes_after_task(tmp_path, whole)  # killed during task 2, resumed from task 1's checkpoint
    from test_algorithms import MID_TASK, Killed  # killed within task 1 (one step per Lightning step), resumed from its last step checkpoint
    with pytest.raises(Killed): small(tmp_path, "mid", no_data_root, f"model/algorithm={algorithm}", *MID_TASK)
    cfg = resume_config(tmp_path / "mid")
    mid = run_experiment(cfg)
    assert mid["resumed_at_task"] == 1
    assert mid["acc_matrix"] == whole["acc_matrix"] and mid["loss_matrix"] == whole["loss_matrix"]  # bit for bit
    if algorithm == "derpp":  # eval recomputes a row, predict names classes the fixed head may give before their task
        from clarena.evaluate import evaluate_checkpoint, predict
        row = evaluate_checkpoint(tmp_path / "whole" / "checkpoints" / "task_1.ckpt", data_root=no_data_root)
        assert row["max_abs_diff"] == 0 and row["acc"] == whole["acc_matrix"][1][:2], row
        p = predict(tmp_path / "whole" / "checkpoints" / "task_0.ckpt", task_id=0, num_samples=64, data_root=no_data_root)
        assert set(p["pred"]) <= set(range(10)) and sum(a == b for a, b in zip(p["pred"], p["true"])) > 40, p["pred"]


def test_lwf_frozen_copy_within_a_task_on_the_fixed_head():
    "A step checkpoint within task 1 holds the copy made at task 0's end: restored on an empty fixed head, it gives the copy's outputs."
    from functools import partial
    from clarena.algorithms.lwf import LwF, FrozenCopy
    from clarena.models.backbones import MLP
    from clarena.models.heads import HeadCIL
    torch.manual_seed(0)
    algo = LwF(MLP(784, [16]), HeadCIL(16, fixed=True, num_classes=10), optimizer=partial(torch.optim.SGD, lr=0.1))
    algo.setup_task(0, 2)
    with torch.no_grad():
        for p in algo.parameters(): p.add_(torch.randn_like(p))
    algo.on_task_end(0, None)
    algo.setup_task(1, 2)
    x = torch.rand(4, 1, 28, 28)
    copy = FrozenCopy.from_state(algo._model(), algo.old.state_dict(), [2])
    assert copy.module["head"].fixed and copy.module["head"].num_tasks == 1
    old = algo.old.module
    assert torch.equal(copy.module["head"](copy.module["backbone"](x, task_id=1)), old["head"](old["backbone"](x, task_id=1)))
    from clarena.algorithms.base import Batch
    batch = Batch(x, torch.zeros(4, dtype=torch.long), 1)
    assert algo.extra_loss(batch, algo(x, 1))["distillation"].isfinite()  # the old classes' columns of both: two each
