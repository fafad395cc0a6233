"""MAS (Aljundi et al., ECCV 2018) proven by its properties: the vectorised importance equals the per-sample loop, importances are
summed over tasks at the latest anchor, the penalty is the hand formula, state resumes, and it forgets less than Finetuning."""
import pytest
import torch

from clarena.algorithms.mas import MAS
from clarena.checkpoints import load_checkpoint
from clarena.core import ConfigError
from clarena.loop import build, run_experiment
from clarena.train import compose_config

from conftest import needs_fashion, nudge, resumes_after_task, small_til, start_task as task

W = "backbone.fcs.0.weight"


def small(**kw): return small_til(MAS, **kw)


def loop_importance(model, params, x):
    "Per sample: backward of the squared L2 norm of the output, absolute value; averaged."
    out = {k: torch.zeros_like(p) for k, p in params.items()}
    for n in range(len(x)):
        for p in params.values(): p.grad = None
        model(x[n:n + 1]).square().sum().backward()
        for k, p in params.items():
            if p.grad is not None: out[k] += p.grad.abs()  # None: a parameter this output does not use (another task's head)
    return {k: v / len(x) for k, v in out.items()}


def test_importance_equals_the_per_sample_loop():
    algo, dm = small(importance_samples=70, importance_batch_size=32)
    task(algo, dm, 0)
    data = task(algo, dm, 1)
    nudge(algo)
    algo.eval()
    with torch.enable_grad(): omega = algo.importance(1, data)
    x, _ = (torch.cat(b) for b in zip(*data.batches(32, shuffle=True, seed=1, limit=70)))
    slow = loop_importance(lambda x: algo(x, 1), dict(algo.named_parameters()), x)
    assert set(omega) == set(slow) and len(x) == 70
    for k, v in slow.items():
        assert torch.allclose(omega[k], v, rtol=1e-6, atol=1e-6 * float(v.abs().max())), (k, float((omega[k] - v).abs().max()))
    assert float(slow["head.heads.1.weight"].max()) > 1e-3 and float(slow["head.heads.0.weight"].abs().max()) == 0.0  # another task's head


def test_importances_sum_over_tasks_at_the_latest_anchor_and_the_penalty_is_the_hand_formula():
    algo, dm = small(strength=3.0, importance_samples=64)
    omegas = []
    for t in range(2):
        data = task(algo, dm, t)
        nudge(algo)
        algo.eval()
        with torch.enable_grad(): omegas.append(algo.importance(t, data))
        algo.finish_task(data)
    assert len(algo.importances) == len(algo.anchors) == 1
    assert torch.allclose(algo.importances[0][W], omegas[0][W] + omegas[1][W], rtol=1e-6, atol=0)
    assert torch.equal(algo.anchors[0][W], algo.backbone.fcs[0].weight.detach())
    task(algo, dm, 2)
    assert float(algo.extra_loss(None, None)["mas"]) == 0.0  # at the anchor
    nudge(algo, 0.1)
    params = dict(algo.named_parameters())
    omega, anchor = algo.importances[0], algo.anchors[0]
    hand = 3.0 * sum((omega[n] * (params[n] - anchor[n]) ** 2).sum() for n in omega)
    pen = algo.extra_loss(None, None)["mas"]
    assert torch.allclose(pen, hand, rtol=1e-5), (float(pen), float(hand))
    pen.backward()
    assert torch.allclose(params[W].grad, (2 * 3.0 * omega[W] * (params[W] - anchor[W])).detach(), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("override, message", [
    ("model.algorithm.strength=-1", "MAS's strength (lambda) must be a number >= 0.0, got -1"),
    ("model.algorithm.importance_samples=0", "MAS's importance_samples (null: every sample) must be an integer >= 1, got 0"),
    ("model.algorithm.importance_batch_size=0", "MAS's importance_batch_size must be an integer >= 1, got 0"),
])
def test_bad_mas_config(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build(compose_config("pmnist_finetuning", ["model/algorithm=mas", override, f"paths.data_dir={tmp_path}"]))


def test_resume_equals_the_uninterrupted_run(tmp_path, no_data_root):
    "A run of 3 tasks, copied as if killed in task 2 and resumed: the same matrices, and the same importances and anchors at its end."
    cfg = compose_config("pmnist_finetuning", ["model/algorithm=mas", "data.num_tasks=3", "trainer.limit_train_batches=30",
                                               "model.backbone.hidden_dims=[64,64]", "model.algorithm.importance_samples=128",
                                               "trainer.deterministic=true", "trainer.enable_progress_bar=false", "measure_fwt=false",
                                               f"paths.data_dir={no_data_root}", f"paths.output_dir={tmp_path / 'whole'}"])
    whole = run_experiment(cfg)
    resumes_after_task(tmp_path, whole)  # killed during task 2, resumed from task 1's checkpoint
    before, after = (load_checkpoint(tmp_path / r / "checkpoints" / "task_2.ckpt")["state_dict"]["_extra_state"]["state"] for r in ("whole", "killed"))
    for key in ("importances", "anchors"):
        assert len(before[key]) == len(after[key]) == 1
        assert all(torch.equal(before[key][0][n], after[key][0][n]) for n in before[key][0]), key


@pytest.mark.slow
@needs_fashion
def test_forgets_less_than_finetuning_on_permuted_fashion_mnist(tmp_path):
    common = ["data=permuted_fashion_mnist", "data.num_tasks=3", "trainer.limit_train_batches=200", "measure_fwt=false",
              "trainer.enable_progress_bar=false", "seed=0"]
    ft, m = (run_experiment(compose_config("pmnist_finetuning", [*common, *extra, f"paths.output_dir={tmp_path / name}"]))
             for name, extra in (("finetuning", []), ("mas", ["model/algorithm=mas"])))
    print(f"MAS: BWT {m['bwt']:+.4f} (Finetuning {ft['bwt']:+.4f}), final average accuracy {m['final_avg_acc']:.4f} ({ft['final_avg_acc']:.4f})")
    assert not m["data_is_sample"]
    assert m["bwt"] > ft["bwt"] + 0.005, (m["bwt"], ft["bwt"])
    assert m["final_avg_acc"] > ft["final_avg_acc"] - 0.01  # not bought with the new tasks' accuracy
