"""BiC (Wu et al., CVPR 2019) end to end: on CIL Split MNIST (the bundled sample) far above Finetuning, each class with its training
and held-out exemplars, and the fitted correction lowering the new classes' logits; TIL, DIL and bad sizes stop with a ConfigError.
Eq. 5 by hand, the loss by hand, stage 2 moving only alpha, beta and reducing the bias on a worked imbalanced example: nbs/06o_bic.ipynb.
Chunks == one step and resume bit for bit: tests/test_algorithms.py."""
import pytest

from clarena.core import ConfigError
from clarena.loop import build, run_experiment
from clarena.train import compose_config


def test_bic_in_cil(tmp_path, no_data_root):
    "BiC and Finetuning, seed 0, 3 tasks of 40 steps, a memory of 60 (54 training + 6 held-out exemplars)."
    common = ["data.num_tasks=3", "trainer.limit_train_batches=40", "measure_fwt=false", "trainer.enable_progress_bar=false",
              f"paths.data_dir={no_data_root}"]
    m = {name: run_experiment(compose_config("smnist_cil_finetuning", [*common, *extra, f"paths.output_dir={tmp_path / name}"]))
         for name, extra in (("finetuning", []), ("bic", ["model/algorithm=bic", "model.algorithm.buffer_size=60"]))}
    assert m["bic"]["algorithm"] == "BiC"
    assert m["bic"]["avg_acc"][-1] > m["finetuning"]["avg_acc"][-1] + 0.2, (m["bic"]["acc_matrix"], m["finetuning"]["acc_matrix"])
    rep = m["bic"]["algorithm_report"]
    assert [r["exemplars_per_class"] for r in rep] == [[27, 27], [13] * 4, [9] * 6]
    assert [r["heldout_per_class"] for r in rep] == [[3, 3], [1] * 4, [1] * 6]
    assert rep[0]["alpha_beta"] == [1.0, 0.0]  # nothing to correct after the first task
    assert all(r["alpha_beta"][1] < 0 for r in rep[1:]), rep  # biased towards the new classes: their logits are lowered


@pytest.mark.parametrize("overrides, message", [
    (["data.scenario=TIL", "model/head=til"], "BiC is defined for scenarios CIL, not TIL"),
    (["data.scenario=DIL", "model/head=dil"], "BiC is defined for scenarios CIL, not DIL"),
    (["model.algorithm.buffer_size=0"], "BiC's buffer_size must be a whole number >= 1"),
    (["model.algorithm.val_fraction=0.01", "model.algorithm.buffer_size=20"], "BiC's val_fraction=0.01 holds out 0 of buffer_size=20")])
def test_bic_bad_settings(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build(compose_config("smnist_cil_finetuning", ["model/algorithm=bic", *overrides, f"paths.data_dir={tmp_path}"]))
