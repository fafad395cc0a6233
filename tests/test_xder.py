"""X-DER (Boschini et al., TPAMI 2022) end to end on CIL Split MNIST (the bundled sample): far above Finetuning at the end; chunks of
steps and a resumed run give exactly the uninterrupted matrices (the memory, with its implanted logits, comes back from the checkpoint);
TIL and DIL and bad values stop with a ConfigError. The implant rule, the memory after a task's end and a step's loss by hand:
nbs/06n_xder.ipynb. (Not in tests/test_algorithms.py: its check that each task is learnt right after training it, acc[t][t] > 0.4,
does not hold for X-DER, whose stream loss is over the present task's classes only; the new classes overtake the old ones on their
samples once their samples are replayed with labels in the next task: measured acc[2][2] = 0.15, then 0.88 a task later.)"""

import pytest

from clarena.core import ConfigError
from clarena.loop import build, run_experiment
from clarena.train import compose_config
from clarena.train import resume_config
from conftest import resumes_after_task
from test_algorithms import MID_TASK, Killed


def test_xder_chunks_and_resume_give_the_uninterrupted_matrices(tmp_path, no_data_root):
    def run(name, *extra):
        return run_experiment(compose_config("smnist_cil_finetuning", [
            "model/algorithm=xder", "data.num_tasks=3", "trainer.limit_train_batches=40", "trainer.deterministic=true",
            "trainer.enable_progress_bar=false", "measure_fwt=false", f"paths.output_dir={tmp_path / name}", f"paths.data_dir={no_data_root}", *extra]))
    whole = run("whole")
    fine = run("finetuning", "model/algorithm=finetuning")
    assert whole["avg_acc"][-1] > fine["avg_acc"][-1] + 0.2, (whole["acc_matrix"], fine["acc_matrix"])
    assert whole["algorithm_report"][-1]["buffer_rows_per_task"] == [66, 66, 66]  # 200 // 6 a class
    one = run("one", "speed.steps_per_call=1")
    assert one["acc_matrix"] == whole["acc_matrix"] and one["loss_matrix"] == whole["loss_matrix"]
    resumes_after_task(tmp_path, whole)  # killed during task 2, resumed from task 1's checkpoint
    # killed within task 1 (one step per Lightning step, a step checkpoint every 4), resumed from its last step checkpoint
    with pytest.raises(Killed): run("mid", *MID_TASK)
    assert not (tmp_path / "mid" / "checkpoints" / "task_1.ckpt").exists()
    mid = run_experiment(resume_config(tmp_path / "mid"))
    assert mid["resumed_at_task"] == 1
    assert mid["acc_matrix"] == whole["acc_matrix"] and mid["loss_matrix"] == whole["loss_matrix"]  # bit for bit


@pytest.mark.parametrize("overrides, message", [
    (["data.scenario=TIL", "model/head=til"], "XDER is defined for scenarios CIL, not TIL"),
    (["data.scenario=DIL", "model/head=dil"], "XDER is defined for scenarios CIL, not DIL"),
    (["model.algorithm.gamma=-1"], "X-DER's gamma must be a number >= 0.0, got -1")])
def test_xder_bad_settings(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build(compose_config("smnist_cil_finetuning", ["model/algorithm=xder", *overrides, f"paths.data_dir={tmp_path}"]))
