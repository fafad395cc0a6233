"Capacity used per task (issue 21): each architecture method's `capacity()` after each task, written by the loop into metrics.json."
import pytest

from clarena.loop import run_experiment
from clarena.train import compose_config


def run(tmp_path, data_root, algorithm, *extra):
    cfg = compose_config("pmnist_finetuning", [f"model/algorithm={algorithm}", "data.num_tasks=3", "trainer.limit_train_batches=10",
                                               "model.backbone.hidden_dims=[32,32]", "trainer.enable_progress_bar=false", "measure_fwt=false",
                                               f"paths.output_dir={tmp_path / algorithm}", f"paths.data_dir={data_root}", *extra])
    return run_experiment(cfg)


@pytest.mark.parametrize("algorithm,unit,isolation", [
    ("hat", "units", True), ("adahat", "units", True), ("wsn", "parameters", True), ("nispa", "units", True),
    ("packnet", "parameters", True), ("fix", "parameters", False), ("finetuning", "parameters", False)])
def test_capacity_per_task(tmp_path, no_data_root, algorithm, unit, isolation):
    out = run(tmp_path, no_data_root, algorithm)
    caps = out["capacity_per_task"]
    assert len(caps) == out["num_tasks"] == 3
    for c in caps:
        assert c["unit"] == unit and c["per_layer"]
        assert all(0.0 <= f <= 1.0 for f in c["per_layer"]) and 0.0 <= c["overall"] <= 1.0
        assert min(c["per_layer"]) <= c["overall"] <= max(c["per_layer"])
    overall = [c["overall"] for c in caps]
    if isolation:  # what a task takes stays taken
        assert all(a <= b + 1e-9 for a, b in zip(overall, overall[1:])), overall
        assert overall[0] > 0
        for a, b in zip(caps, caps[1:]): assert all(x <= y + 1e-9 for x, y in zip(a["per_layer"], b["per_layer"]))
    if algorithm == "finetuning": assert overall == [0.0] * 3  # protects nothing
    if algorithm == "fix": assert overall == [1.0] * 3  # task 0 holds the whole frozen backbone
    rep = out["algorithm_report"]
    if algorithm == "hat":  # by hand from the cumulative masks task_report records: units with mask > 0.5, layers of 32 units each
        for c, r in zip(caps, rep):
            assert c["per_layer"] == pytest.approx(r["cumulative_capacity"])
            assert c["overall"] == pytest.approx(sum(r["cumulative_capacity"]) / len(r["cumulative_capacity"]))
    if algorithm == "packnet":  # by hand: what is not free is owned by some task
        for c, r in zip(caps, rep):
            assert c["per_layer"] == pytest.approx([1 - f for f in r["free_capacity"]])
            owned = [sum(r2["task_capacity"][l] for r2 in rep[:r["task_id"] + 1]) for l in range(len(c["per_layer"]))]
            assert c["per_layer"] == pytest.approx(owned)  # the tasks' own shares add up to it


def test_no_capacity_key_for_methods_without_one(tmp_path, no_data_root):
    out = run(tmp_path, no_data_root, "ewc")
    assert "capacity_per_task" not in out
