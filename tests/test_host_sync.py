"""Every registered algorithm's training steps under `HostSyncAsError` on the CPU (CI has no GPU): one that declares `capturable` must
not make the host wait for the device in a step (a value read, an output sized by values, a solver's status check); GEM and GDumb,
which declare that they cannot be captured, are caught, so the check can fail. Each task's first two steps are free (one-time set-up,
and the eager warm-up the fast path runs before capturing), as in the GPU capture test. What is checked is what a graph replays,
`optimizer_step_on` (the batch's loss to the optimizer step and `after_step`); `before_step` runs eagerly before each replay, outside
the graph, so a host read there (CBP's count of units to replace) costs time but does not break capture, and is not checked here.
WSN selects its masks by `topk` on an accelerator; on the CPU, layers of over 65,536 weights are selected in numpy, in host memory
(the CPU never captures), and the small layers here take its other path, in torch, which reads nothing on the host."""
from pathlib import Path

import pytest
from hydra.utils import get_class

import clarena
from clarena.algorithms.fastpath import HostSync, HostSyncAsError
from clarena.loop import run_experiment
from clarena.train import compose_config

NAMES = sorted(p.stem for p in (Path(clarena.__file__).parent / "conf" / "model" / "algorithm").glob("*.yaml"))
EXPERIMENT = {"hat": "pmnist_hat", "adahat": "pmnist_hat"}  # HAT's gated backbone


def experiment_for(name):
    if name in EXPERIMENT: return EXPERIMENT[name]
    cls = get_class(compose_config("pmnist_finetuning", [f"model/algorithm={name}", "paths.data_dir=/nonexistent"]).model.algorithm._target_)
    return "pmnist_finetuning" if "TIL" in cls.supports else "smnist_cil_finetuning"


def steps_under_check(monkeypatch, cls, free: int = 2):
    "Run `cls`'s training steps under `HostSyncAsError`, except each task's first `free`; return [checked steps, what was caught]."
    step, seen, out = cls.optimizer_step_on, {}, [0, None]
    def strict(self, *args, **kwargs):
        seen[self.task_id] = seen.get(self.task_id, 0) + 1
        if seen[self.task_id] <= free or out[1] is not None: return step(self, *args, **kwargs)
        try:
            with HostSyncAsError(): r = step(self, *args, **kwargs)
        except HostSync as e:  # recorded, and the step run again unchecked: the run goes on, the test reports what was caught
            out[1] = str(e)
            return step(self, *args, **kwargs)
        out[0] += 1
        return r
    monkeypatch.setattr(cls, "optimizer_step_on", strict)
    return out


@pytest.mark.parametrize("name", NAMES)
def test_capturable_steps_never_wait_for_the_host(tmp_path, no_data_root, monkeypatch, name):
    experiment = experiment_for(name)
    cls = get_class(compose_config(experiment, [f"model/algorithm={name}", "paths.data_dir=/nonexistent"]).model.algorithm._target_)
    out = steps_under_check(monkeypatch, cls)
    run_experiment(compose_config(experiment, [f"model/algorithm={name}", "data.num_tasks=2", "trainer.max_epochs=1",
                                               "trainer.limit_train_batches=16", "model.backbone.hidden_dims=[32,32]", "speed.steps_per_call=8",
                                               "trainer.enable_progress_bar=false", "measure_fwt=false", f"paths.data_dir={no_data_root}",
                                               f"paths.output_dir={tmp_path / 'run'}"]))
    if cls.capturable:
        assert out[1] is None, f"{name} declares capturable = True, but a training step waits for the host: {out[1]}"
        assert out[0] > 0  # steps were checked
    else:
        assert out[1] is not None, f"{name} declares capturable = False, and no step of it was caught"


def test_every_algorithm_is_checked():
    assert {"gem", "gdumb", "finetuning", "hat", "er", "der", "xder", "wsn", "nispa", "cbp"} <= set(NAMES), NAMES
