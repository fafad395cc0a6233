"""EWC and online EWC (Kirkpatrick et al. 2017; Schwarz et al. 2018) proven by their properties: the vectorised Fisher equals the
per-sample loop, the running Fisher follows gamma, the penalty is the hand formula, state resumes, and they forget less than Finetuning."""
import pytest
import torch

from clarena.algorithms.base import TaskData
from clarena.algorithms.ewc import EWC, FISHER_KINDS, OnlineEWC
from clarena.checkpoints import load_checkpoint
from clarena.core import ConfigError
from clarena.loop import build, run_experiment
from clarena.train import compose_config

from conftest import needs_fashion, nudge, resumes_after_task, small_til, start_task as task

W = "backbone.fcs.0.weight"


def small(cls=EWC, **kw): return small_til(cls, **kw)


def loop_fisher(model, params, x, y, kind):
    "Per sample (at the true or the predicted label, or per class weighted by p(c|x) for the exact Fisher): one backward pass, squared; averaged."
    out = {k: torch.zeros_like(p) for k, p in params.items()}
    for n in range(len(x)):
        logp = model(x[n:n + 1]).log_softmax(-1)[0]
        if kind == "exact": terms = [(c, float(logp[c].detach().exp())) for c in range(len(logp))]
        else: terms = [(int(y[n]) if kind == "empirical" else int(logp.argmax()), 1.0)]
        for c, w in terms:
            for p in params.values(): p.grad = None
            logp[c].backward(retain_graph=True)
            for k, p in params.items(): out[k] += w * p.grad ** 2
    return {k: v / len(x) for k, v in out.items()}


@pytest.mark.parametrize("kind", FISHER_KINDS)
def test_vmap_fisher_equals_the_per_sample_loop(kind):
    algo, dm = small(fisher=kind, fisher_samples=70, fisher_batch_size=32)  # batches of 32, 32, 6
    data = task(algo, dm, 0)
    nudge(algo)
    algo.eval()
    with torch.enable_grad(): fisher = algo.importance(0, data)
    x, y = (torch.cat(b) for b in zip(*data.batches(32, shuffle=True, seed=0, limit=70)))
    slow = loop_fisher(lambda x: algo(x, 0), dict(algo.named_parameters()), x, y, kind)
    assert set(fisher) == set(slow) and len(x) == 70
    for k, v in slow.items():
        assert torch.allclose(fisher[k], v, rtol=0, atol=1e-6), (k, float((fisher[k] - v).abs().max()))
        assert float(v.abs().max()) > 1e-4, k  # not a comparison of zeros


def test_online_fisher_follows_gamma_and_anchors_the_latest_weights():
    algo, dm = small(OnlineEWC, gamma=0.7, fisher_samples=64)
    fishers = []
    for t in range(3):
        data = task(algo, dm, t)
        nudge(algo)
        algo.eval()
        with torch.enable_grad(): fishers.append(algo.importance(t, data))
        algo.finish_task(data)  # on_task_end in eval mode without gradients: computes the same Fisher again
        assert len(algo.importances) == len(algo.anchors) == 1
        assert torch.equal(algo.anchors[0][W], algo.backbone.fcs[0].weight.detach())
    want = 0.7 ** 2 * fishers[0][W] + 0.7 * fishers[1][W] + fishers[2][W]
    assert torch.allclose(algo.importances[0][W], want, rtol=1e-6, atol=0)
    assert torch.allclose(algo.importances[0]["head.heads.1.bias"], 0.7 * fishers[1]["head.heads.1.bias"], rtol=1e-6, atol=0)


def test_ewc_keeps_a_term_per_task_and_the_penalty_is_the_hand_formula():
    algo, dm = small(strength=7.0, fisher_samples=64)
    algo.finish_task(task(algo, dm, 0))
    task(algo, dm, 1)
    assert float(algo.extra_loss(None, None)["ewc"]) == 0.0  # at the anchor
    nudge(algo, 0.1)
    algo.finish_task(TaskData(1, dm.train_view, "cpu", 10))
    task(algo, dm, 2)
    nudge(algo, 0.1)
    assert len(algo.importances) == 2 and "head.heads.1.weight" not in algo.anchors[0] and "head.heads.2.weight" not in algo.anchors[1]
    params = dict(algo.named_parameters())
    hand = 7.0 / 2 * sum((F[n] * (params[n] - a[n]) ** 2).sum() for F, a in zip(algo.importances, algo.anchors) for n in F)
    pen = algo.extra_loss(None, None)["ewc"]
    assert torch.allclose(pen, hand, rtol=1e-5), (float(pen), float(hand))
    pen.backward()
    grad = 7.0 * sum(F[W] * (params[W] - a[W]) for F, a in zip(algo.importances, algo.anchors)).detach()
    assert torch.allclose(params[W].grad, grad, rtol=1e-5, atol=1e-9)
    assert params["head.heads.2.weight"].grad is None  # the current task's head is free


def test_old_heads_stay_exactly_put():
    "An old TIL head is anchored by several terms at the same weights: the folded penalty's gradient there is exactly zero."
    algo, dm = small(strength=5.0, fisher_samples=32)
    for t in range(3):
        data = task(algo, dm, t)
        with torch.no_grad():  # training task t moves the backbone and head t, never head 0 after task 0
            for p in [*algo.backbone.parameters(), *algo.head.heads[t].parameters()]: p.add_(0.05 * torch.randn_like(p))
        if t < 2: algo.finish_task(data)
    algo.extra_loss(None, None)["ewc"].backward()
    assert torch.count_nonzero(algo.head.heads[0].weight.grad) == 0 and torch.count_nonzero(algo.head.heads[0].bias.grad) == 0


@pytest.mark.parametrize("override, message", [
    ("model.algorithm.strength=-1", "EWC's strength (lambda) must be a number >= 0.0, got -1"),
    ("model.algorithm.fisher=sampled", "unknown EWC fisher 'sampled'; valid choices: 'empirical', 'exact', 'predicted'"),
    ("model.algorithm.fisher=true", "unknown EWC fisher True; valid choices: 'empirical', 'exact', 'predicted'"),
    ("model.algorithm.fisher_samples=0", "EWC's fisher_samples (null: every sample) must be an integer >= 1, got 0"),
    ("model.algorithm.fisher_batch_size=-3", "EWC's fisher_batch_size must be an integer >= 1, got -3"),
])
def test_bad_ewc_config(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build(compose_config("pmnist_finetuning", ["model/algorithm=ewc", override, f"paths.data_dir={tmp_path}"]))


@pytest.mark.parametrize("gamma", [0, -0.5, 1.5, "nan"])
def test_bad_online_ewc_gamma(tmp_path, gamma):
    with pytest.raises(ConfigError, match=r"OnlineEWC's gamma must be a number in \(0, 1\]"):
        build(compose_config("pmnist_finetuning", ["model/algorithm=online_ewc", f"model.algorithm.gamma={gamma}", f"paths.data_dir={tmp_path}"]))


@pytest.mark.parametrize("fisher", ["empirical", "predicted"])  # ewc.yaml's default, and the three_scenarios preset's
@pytest.mark.parametrize("algorithm", ["ewc", "online_ewc"])
def test_resume_equals_the_uninterrupted_run(tmp_path, no_data_root, algorithm, fisher):
    "A run of 3 tasks, copied as if killed in task 2 and resumed: the same matrices, and the same importances and anchors at its end."
    cfg = compose_config("pmnist_finetuning", [f"model/algorithm={algorithm}", f"model.algorithm.fisher={fisher}", "data.num_tasks=3",
                                               "trainer.limit_train_batches=30", "model.backbone.hidden_dims=[64,64]", "model.algorithm.fisher_samples=128",
                                               "trainer.deterministic=true", "trainer.enable_progress_bar=false", "measure_fwt=false",
                                               f"paths.data_dir={no_data_root}", f"paths.output_dir={tmp_path / 'whole'}"])
    whole = run_experiment(cfg)
    resumes_after_task(tmp_path, whole)  # killed during task 2, resumed from task 1's checkpoint
    before, after = (load_checkpoint(tmp_path / r / "checkpoints" / "task_2.ckpt")["state_dict"]["_extra_state"]["state"] for r in ("whole", "killed"))
    assert len(after["importances"]) == (3 if algorithm == "ewc" else 1)
    for key in ("importances", "anchors"):
        for b, a in zip(before[key], after[key]):
            assert b.keys() == a.keys() and all(torch.equal(b[n], a[n]) for n in b), key


FASHION = ["data=permuted_fashion_mnist", "data.num_tasks=3", "trainer.limit_train_batches=200", "measure_fwt=false",
           "trainer.enable_progress_bar=false", "seed=0"]


@pytest.fixture(scope="module")
def finetuning_on_fashion(tmp_path_factory):
    return run_experiment(compose_config("pmnist_finetuning", [*FASHION, f"paths.output_dir={tmp_path_factory.mktemp('finetuning')}"]))


@needs_fashion
@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["ewc", "online_ewc"])
def test_forgets_less_than_finetuning_on_permuted_fashion_mnist(tmp_path, finetuning_on_fashion, algorithm):
    m = run_experiment(compose_config("pmnist_finetuning", [*FASHION, f"model/algorithm={algorithm}", f"paths.output_dir={tmp_path}"]))
    ft = finetuning_on_fashion
    print(f"{algorithm}: BWT {m['bwt']:+.4f} (Finetuning {ft['bwt']:+.4f}), final average accuracy {m['final_avg_acc']:.4f} ({ft['final_avg_acc']:.4f})")
    assert m["data_source"] == ft["data_source"] and not m["data_is_sample"]
    assert m["bwt"] > ft["bwt"] + MARGIN, (m["bwt"], ft["bwt"])
    assert m["final_avg_acc"] > ft["final_avg_acc"] - 0.01  # not bought with the new tasks' accuracy


MARGIN = 0.005
