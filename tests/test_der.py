"""DER and DER++ (Buzzega et al., NeurIPS 2020) end to end: on CIL Split Fashion-MNIST with 200 samples DER++ is far above
Finetuning and at least ER within noise; chunks of steps and a resumed run give exactly the uninterrupted matrices (the buffer,
with its logits, comes back from the checkpoint); bad settings stop before training. The logits stored at insertion, the masked
columns of a grown head and the hand-computed loss are tested in nbs/06i_der.ipynb."""
from pathlib import Path

import pytest

from clarena.core import ConfigError
from clarena.loop import build, run_experiment
from clarena.train import compose_config

from conftest import FASHION_DIR, needs_fashion, resumes_after_task

ROOT = Path(__file__).resolve().parents[1]
SFMNIST_CIL = ["data=split_fashion_mnist", "data.scenario=CIL", "data.num_tasks=5", "trainer.limit_train_batches=200", "measure_fwt=false",
               "trainer.enable_progress_bar=false"]


@pytest.fixture(scope="module")
def derpp_sfmnist(tmp_path_factory):
    "DER++ with its config's defaults (200 samples, alpha 0.2, beta 1) on CIL Split Fashion-MNIST, seed 0, 5 tasks of 200 steps."
    d = tmp_path_factory.mktemp("derpp")
    return run_experiment(compose_config("smnist_cil_finetuning", [*SFMNIST_CIL, "model/algorithm=derpp", f"paths.output_dir={d}"]))


@needs_fashion
def test_derpp_far_above_finetuning_in_cil(derpp_sfmnist, tmp_path):
    ft = run_experiment(compose_config("smnist_cil_finetuning", [*SFMNIST_CIL, f"paths.output_dir={tmp_path}"]))
    assert derpp_sfmnist["algorithm"] == "DER++" and ft["algorithm"] == "Finetuning"
    assert ft["avg_acc"][-1] < 0.3, ft["acc_matrix"][-1]                     # measured: 0.1995
    assert derpp_sfmnist["avg_acc"][-1] >= 0.5, derpp_sfmnist["acc_matrix"]  # measured: 0.7817
    assert min(derpp_sfmnist["acc_matrix"][-1]) > 0.3, derpp_sfmnist["acc_matrix"][-1]  # every task remembered


@needs_fashion
@pytest.mark.skipif(not (ROOT / "clarena/conf/model/algorithm/er.yaml").exists(), reason="needs ER (model/algorithm=er)")
def test_derpp_at_least_er_within_noise(derpp_sfmnist, tmp_path):
    er = run_experiment(compose_config("smnist_cil_finetuning", [*SFMNIST_CIL, "model/algorithm=er", f"paths.output_dir={tmp_path}"]))
    assert derpp_sfmnist["avg_acc"][-1] >= er["avg_acc"][-1] - 0.03, (derpp_sfmnist["avg_acc"][-1], er["avg_acc"][-1])  # measured: 0.7817 vs 0.7537


def run(tmp_path, name, data_root, experiment, *extra):
    cfg = compose_config(experiment, ["data.num_tasks=3", "trainer.limit_train_batches=30", "model.backbone.hidden_dims=[64,64]",
                                      "trainer.deterministic=true", "trainer.enable_progress_bar=false", "measure_fwt=false",
                                      f"paths.output_dir={tmp_path / name}", f"paths.data_dir={data_root}", *extra])
    return run_experiment(cfg)


@pytest.mark.parametrize("experiment,algorithm", [("smnist_cil_finetuning", "derpp"), ("smnist_til_finetuning", "derpp"),
                                                  ("smnist_dil_finetuning", "der")])
def test_der_chunks_and_resume_give_the_uninterrupted_matrices(tmp_path, no_data_root, experiment, algorithm):
    "CIL (a grown head, masked logits), TIL (replayed rows through their own heads), DIL: auto chunks == one step per Lightning step == resumed."
    extra = [f"model/algorithm={algorithm}"]
    whole = run(tmp_path, "whole", no_data_root, experiment, *extra)
    assert min(whole["acc_matrix"][t][t] for t in range(3)) > 0.8, whole["acc_matrix"]
    one = run(tmp_path, "one", no_data_root, experiment, *extra, "speed.steps_per_call=1")
    assert one["acc_matrix"] == whole["acc_matrix"] and one["loss_matrix"] == whole["loss_matrix"]
    resumed = resumes_after_task(tmp_path, whole)  # killed during task 2, resumed from task 1's checkpoint
    assert resumed["algorithm_report"] == whole["algorithm_report"]


@pytest.mark.parametrize("override, message", [("model.algorithm.buffer_size=0", "DER's buffer_size must be a whole number >= 1 (samples kept), got 0"),
                                               ("model.algorithm.buffer_size=-200", "DER's buffer_size must be a whole number >= 1 (samples kept), got -200"),
                                               ("model.algorithm.alpha=-0.2", "DER's alpha must be a number >= 0.0, got -0.2"),
                                               ("model.algorithm.beta=-1", "DER's beta must be a number >= 0.0, got -1")])
def test_der_bad_settings(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build(compose_config("smnist_cil_finetuning", ["model/algorithm=derpp", override, f"paths.data_dir={tmp_path}"]))
