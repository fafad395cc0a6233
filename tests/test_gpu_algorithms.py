"""Every algorithm that declares `capturable` runs its steps from CUDA graphs with the results of eager steps (skipped
without a CUDA GPU; CI has none): replay buffers filled, sampled and counted on the device, A-GEM's projection,
DER's stored logits, HAT's and PackNet's gradient masks, EWC/SI/MAS penalties, iCaRL's targets all inside the graph.
Every step after a task's first two (one-time set-up, and the eager warm-up the fast path takes before capturing) runs with
host synchronisation an error (`torch.cuda.set_sync_debug_mode("error")`), in the eager run and in the captured one: a step
that waits for the device cannot claim to be capturable. One that declares it cannot is refused with capture on (tested on
the CPU in test_fastpath's refusals)."""
import pytest
import torch
from hydra.utils import get_class

from clarena.checkpoints import load_checkpoint
from clarena.loop import run_experiment
from clarena.train import compose_config
from test_algorithms import ALGORITHMS

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
NOT_CAPTURABLE = {"gem", "gdumb"}  # GEM solves its dual on the host; GDumb's sampler decides on the host
CAPTURABLE = [a for a in ALGORITHMS if not any(o.startswith("reference=") for o in a[2]) and a[0] not in NOT_CAPTURABLE]


def run(tmp_path, name, data_root, experiment, *extra):
    cfg = compose_config(experiment, ["data.num_tasks=2", "trainer.limit_train_batches=48", "model.backbone.hidden_dims=[64,64]",
                                      "trainer.enable_progress_bar=false", "measure_fwt=false", "trainer=gpu",
                                      f"paths.output_dir={tmp_path / name}", f"paths.data_dir={data_root}", *extra])
    return run_experiment(cfg), tmp_path / name


def tensors(d, prefix=""):
    "Every floating or integer tensor in a (nested) state dict, by its dotted key."
    out = {}
    for k, v in (d.items() if isinstance(d, dict) else enumerate(d)):
        if isinstance(v, (dict, list, tuple)): out.update(tensors(v, f"{prefix}{k}."))
        elif torch.is_tensor(v): out[prefix + k] = v.double()
    return out


def no_sync_steps(monkeypatch, cls, free: int = 2):
    "Run `cls`'s training steps with host synchronisation an error, except each task's first `free`; return the count of checked steps."
    step, seen, checked = cls.optimizer_step_on, {}, [0]
    def strict(self, x, y, opt):
        seen[self.task_id] = seen.get(self.task_id, 0) + 1
        if seen[self.task_id] <= free: return step(self, x, y, opt)
        torch.cuda.set_sync_debug_mode("error")
        try: out = step(self, x, y, opt)
        finally: torch.cuda.set_sync_debug_mode(0)
        checked[0] += 1
        return out
    monkeypatch.setattr(cls, "optimizer_step_on", strict)
    return checked


@pytest.mark.parametrize("name", sorted(NOT_CAPTURABLE))
def test_host_side_algorithms_declare_it(name):
    extra = next(a[2] for a in ALGORITHMS if a[0] == name)
    assert not get_class(compose_config("pmnist_finetuning", [*extra, "paths.data_dir=/nonexistent"]).model.algorithm._target_).capturable


@gpu
@pytest.mark.parametrize("name,experiment,extra", CAPTURABLE, ids=[a[0] for a in CAPTURABLE])
def test_captured_steps_agree_with_eager_for_every_algorithm(tmp_path, no_data_root, monkeypatch, name, experiment, extra):
    cfg = compose_config(experiment, [*extra, "paths.data_dir=/nonexistent"])
    cls = get_class(cfg.model.algorithm._target_)
    assert cls.capturable, name
    checked = no_sync_steps(monkeypatch, cls)
    eager, de = run(tmp_path, "eager", no_data_root, experiment, *extra)
    graph, dg = run(tmp_path, "graph", no_data_root, experiment, *extra, "speed.capture=true", "speed.steps_per_call=16")
    assert checked[0] > 0  # the eager run's steps, and the captured run's warm-up and capture
    acc = max(abs(x - y) for ra, rb in zip(eager["acc_matrix"], graph["acc_matrix"]) for x, y in zip(ra, rb))
    a, b = (tensors(load_checkpoint(d / "checkpoints" / "task_1.ckpt")["state_dict"]) for d in (de, dg))
    assert a.keys() == b.keys()
    state = max(((a[k] - b[k]).abs().max().item() / (1 + a[k].abs().max().item()), k) for k in a if a[k].numel())
    print(f"{name}: eager {eager['acc_matrix']} captured {graph['acc_matrix']} max acc difference {acc:.4f}, "
          f"max relative state difference {state[0]:.2e} ({state[1]})")
    assert min(eager["acc_matrix"][-1]) > 0.3, eager["acc_matrix"]  # it learnt (10 classes: chance 0.1)
    assert acc <= 0.01, (eager["acc_matrix"], graph["acc_matrix"])
    assert state[0] <= 1e-2, state  # weights, buffers and the algorithm's state: a step the graph did not replay shows here
