"""SI (Zenke, Poole & Ganguli, ICML 2017) end to end: it forgets less than Finetuning on TIL Permuted Fashion-MNIST, a resumed
run is the uninterrupted one, bad settings stop before training. Its defining property (the path integral on a quadratic loss)
is tested in nbs/06b_si.ipynb."""
import pytest
import torch

from clarena.checkpoints import load_checkpoint
from clarena.core import ConfigError
from clarena.loop import build, run_experiment
from clarena.train import compose_config

from conftest import finetuning_and, needs_fashion, resumes_after_task

COMMON = ["data=permuted_fashion_mnist", "data.num_tasks=3", "trainer.limit_train_batches=150", "measure_fwt=false",
          "trainer.enable_progress_bar=false", "trainer.deterministic=true"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    "Finetuning and SI (its config's defaults), same seed and settings; SI's run directory for the resume test."
    return finetuning_and(tmp_path_factory, "si", ["model/algorithm=si"], COMMON)


@needs_fashion
@pytest.mark.slow
def test_si_forgets_less_than_finetuning(runs):
    m, _ = runs
    assert m["si"]["algorithm"] == "SI" and m["finetuning"]["algorithm"] == "Finetuning"
    assert m["si"]["bwt"] > m["finetuning"]["bwt"] + 0.01, (m["si"]["bwt"], m["finetuning"]["bwt"])  # measured: -0.0049 vs -0.0205
    assert min(m["si"]["acc_matrix"][t][t] for t in range(3)) > 0.7, m["si"]["acc_matrix"]  # and still learns each task


@needs_fashion
def test_si_resume_gives_the_uninterrupted_matrix(runs, tmp_path):
    m, whole = runs
    resumes_after_task(tmp_path, m["si"], task=1, run_dir=whole)  # killed during task 1, resumed from task 0's checkpoint
    a, b = (load_checkpoint(r / "checkpoints" / "task_2.ckpt")["state_dict"]["_extra_state"]["state"] for r in (whole, tmp_path / "killed"))
    assert set(a) == {"importance", "anchor", "omega", "start", "in_task"} and a["importance"]
    assert a.pop("in_task") == b.pop("in_task")  # a task checkpoint: written after the task's training, not within it
    for k in a:
        assert a[k].keys() == b[k].keys()
        for n in a[k]: assert torch.equal(a[k][n], b[k][n]), (k, n)


def test_si_cil_grows_its_importance_and_resumes(tmp_path, no_data_root):
    "CIL: the head gains rows each task; their importance starts at 0, the old rows keep theirs, and a resume rebuilds it all."
    cfg = compose_config("smnist_cil_finetuning", ["model/algorithm=si", "data.num_tasks=3", "trainer.limit_train_batches=20",
                                                   "trainer.deterministic=true", "measure_fwt=false", "trainer.enable_progress_bar=false",
                                                   f"paths.data_dir={no_data_root}", f"paths.output_dir={tmp_path / 'whole'}"])
    whole = run_experiment(cfg)
    imp = [load_checkpoint(tmp_path / "whole" / "checkpoints" / f"task_{t}.ckpt")["state_dict"]["_extra_state"]["state"]["importance"]["head.weight"]
           for t in range(3)]
    assert [len(w) for w in imp] == [2, 4, 6]
    assert imp[0].sum() > 0 and imp[1][:2].sum() > 0 and imp[1][2:].sum() > 0  # the old rows keep theirs, the new rows learned theirs
    resumes_after_task(tmp_path, whole, task=1)  # killed during task 1, resumed from task 0's checkpoint


@pytest.mark.parametrize("override, message", [("model.algorithm.strength=-1", "SI's strength (c) must be a number >= 0.0, got -1"),
                                               ("model.algorithm.damping=0", "SI's damping (xi) must be a number > 0.0, got 0")])
def test_si_bad_settings(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build(compose_config("pmnist_finetuning", ["model/algorithm=si", override, f"paths.data_dir={tmp_path}"]))
