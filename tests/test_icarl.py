"""iCaRL (Rebuffi et al., CVPR 2017) end to end: on CIL Split Fashion-MNIST with 200 exemplars it is far above Finetuning; chunks of
steps and a resumed run give exactly the uninterrupted matrices (exemplars, class means and the old network come back from the
checkpoint); TIL and DIL, and memories too small, stop with a ConfigError. Herding, the reduction and the nearest mean of
exemplars are checked by hand and in a run in nbs/06j_icarl.ipynb."""
from pathlib import Path

import pytest

from clarena.core import ConfigError
from clarena.loop import build, run_experiment
from clarena.train import compose_config

from conftest import FASHION_DIR, needs_fashion, resumes_after_task

SFMNIST_CIL = ["data=split_fashion_mnist", "data.scenario=CIL", "data.num_tasks=5", "trainer.limit_train_batches=200", "measure_fwt=false",
               "trainer.enable_progress_bar=false"]


@needs_fashion
def test_icarl_far_above_finetuning_in_cil(tmp_path):
    "iCaRL with its config's defaults (K = 200 exemplars) and Finetuning, seed 0, 5 tasks of 200 steps."
    m = {name: run_experiment(compose_config("smnist_cil_finetuning", [*SFMNIST_CIL, *extra, f"paths.output_dir={tmp_path / name}"]))
         for name, extra in (("finetuning", []), ("icarl", ["model/algorithm=icarl"]))}
    assert m["icarl"]["algorithm"] == "ICaRL"
    assert m["finetuning"]["avg_acc"][-1] < 0.3, m["finetuning"]["acc_matrix"][-1]  # measured: 0.1995
    assert m["icarl"]["avg_acc"][-1] >= 0.5, m["icarl"]["acc_matrix"]                # measured: 0.7390
    assert min(m["icarl"]["acc_matrix"][-1]) > 0.3, m["icarl"]["acc_matrix"][-1]
    assert m["icarl"]["algorithm_report"][-1]["exemplars_per_class"] == [20] * 10    # K / 10 classes


def test_icarl_chunks_and_resume_give_the_uninterrupted_matrices(tmp_path, no_data_root):
    def run(name, *extra):
        return run_experiment(compose_config("smnist_cil_finetuning", [
            "model/algorithm=icarl", "model.algorithm.buffer_size=60", "data.num_tasks=3", "trainer.limit_train_batches=30",
            "model.backbone.hidden_dims=[64,64]", "trainer.deterministic=true", "trainer.enable_progress_bar=false", "measure_fwt=false",
            f"paths.output_dir={tmp_path / name}", f"paths.data_dir={no_data_root}", *extra]))
    whole = run("whole")
    assert min(whole["acc_matrix"][t][t] for t in range(3)) > 0.6, whole["acc_matrix"]  # 30 steps a task
    assert [r["exemplars_per_class"] for r in whole["algorithm_report"]] == [[30, 30], [15] * 4, [10] * 6]
    one = run("one", "speed.steps_per_call=1")
    assert one["acc_matrix"] == whole["acc_matrix"] and one["loss_matrix"] == whole["loss_matrix"]
    resumes_after_task(tmp_path, whole)  # killed during task 2, resumed from task 1's checkpoint


@pytest.mark.parametrize("overrides, message", [
    (["model.algorithm.buffer_size=0"], "iCaRL's buffer_size (K) must be a whole number >= 1 (samples kept), got 0"),
    (["data.scenario=TIL", "model/head=til"], "ICaRL is defined for scenarios CIL, not TIL"),
    (["data.scenario=DIL", "model/head=dil"], "ICaRL is defined for scenarios CIL, not DIL")])
def test_icarl_bad_settings(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build(compose_config("smnist_cil_finetuning", ["model/algorithm=icarl", *overrides, f"paths.data_dir={tmp_path}"]))


def test_icarl_memory_smaller_than_the_classes(tmp_path, no_data_root):
    "A memory of fewer exemplars than classes: a ConfigError when the task that brings them starts, with no metrics.json."
    cfg = compose_config("smnist_cil_finetuning", ["model/algorithm=icarl", "model.algorithm.buffer_size=3", "trainer.limit_train_batches=2",
                                                   "measure_fwt=false", "trainer.enable_progress_bar=false", f"paths.output_dir={tmp_path / 'run'}",
                                                   f"paths.data_dir={no_data_root}"])
    with pytest.raises(ConfigError, match=r"iCaRL's buffer_size \(K\)=3 is smaller than the 4 classes seen by task 1"):
        run_experiment(cfg)
    assert not (tmp_path / "run" / "metrics.json").exists()
