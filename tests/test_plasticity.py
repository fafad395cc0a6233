"""Plasticity over long sequences: the loop's test_only_new_task keeps the diagonal of the full matrix bit for bit, the
label-permuted benchmark runs end to end, the experiment notebook runs under papermill, and (slow) over 100 tasks
Finetuning loses its plasticity while Continual Backpropagation keeps it."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clarena import metrics as M
from clarena.loop import run_experiment
from clarena.train import compose_config
from conftest import needs_fashion

ROOT = Path(__file__).resolve().parents[1]
LONG = ["data=label_permuted_fashion_mnist", "model/head=dil", "measure_fwt=false", "trainer.enable_progress_bar=false",
        "checkpoint.every_minutes=null"]


def label_permuted(tmp_path, name, data_root, *extra):
    return run_experiment(compose_config("pmnist_finetuning", [*LONG, "data.dataset=mnist", "data.num_tasks=4", "trainer.limit_train_batches=30",
                                                               f"paths.data_dir={data_root}", f"paths.output_dir={tmp_path / name}", *extra]))


@pytest.mark.parametrize("algorithm", ["finetuning", "cbp"])
def test_only_new_task_keeps_the_diagonal(tmp_path, no_data_root, algorithm):
    extra = [f"model/algorithm={algorithm}", "model.algorithm.maturity_threshold=5"] if algorithm == "cbp" else []
    full = label_permuted(tmp_path, "full", no_data_root, *extra)
    diag = label_permuted(tmp_path, "diag", no_data_root, *extra, "test_only_new_task=true")
    R, D = M.rows_to_matrix(full["acc_matrix"]), M.rows_to_matrix(diag["acc_matrix"])
    assert list(M.new_task_acc(D)) == list(M.new_task_acc(R))  # testing fewer tasks changes nothing in the training
    assert all(math.isnan(D[i, j]) for i in range(4) for j in range(i))
    assert min(M.new_task_acc(R)) > 0.3, full["acc_matrix"]  # each new labelling is learned (chance 0.1)
    assert diag["avg_acc"][-1] is None and diag["bwt"] is None  # what needs the whole matrix is not reported


def test_plasticity_notebook_runs(tmp_path):
    r = subprocess.run([str(Path(sys.executable).parent / "papermill"), str(ROOT / "nbs" / "experiments" / "plasticity.ipynb"), str(tmp_path / "out.ipynb"),
                        "-p", "num_tasks", "3", "-p", "steps_per_task", "5", "-p", "seeds", "[0]", "-p", "window", "1", "-p", "bin", "1",
                        "-p", "log_dir", str(tmp_path / "logs"), "-p", "overrides", json.dumps(["data.dataset=mnist", f"paths.data_dir={tmp_path / 'none'}"]),
                        "--no-progress-bar"], cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = json.loads((tmp_path / "plasticity.json").read_text())
    assert sorted(runs) == ["Continual Backpropagation", "Finetuning"] and all(len(rs[0]["new_task_acc"]) == 3 for rs in runs.values())
    assert [p.name for p in (tmp_path / "logs" / "plasticity" / "finetuning_seed0" / "checkpoints").iterdir()] == ["task_2.ckpt"]


@pytest.mark.slow
@needs_fashion
def test_finetuning_loses_plasticity_and_cbp_keeps_it(tmp_path):
    "The experiment notebook's protocol at 100 tasks, one seed: Finetuning's new-task accuracy falls to chance, CBP's holds."
    P = {}
    for name, extra in (("finetuning", []), ("cbp", ["model/algorithm=cbp", "model.algorithm.replacement_rate=0.001"])):
        m = run_experiment(compose_config("pmnist_finetuning", [*LONG, "data.num_tasks=100", "trainer.limit_train_batches=100",
                                                                "model/optimizer=adam", "model.optimizer.lr=0.003", "test_only_new_task=true",
                                                                f"paths.output_dir={tmp_path / name}", *extra]))
        P[name] = M.new_task_acc(M.rows_to_matrix(m["acc_matrix"]))
    assert P["finetuning"][:10].mean() > 0.7 and P["finetuning"][-10:].mean() < 0.2, P["finetuning"]
    assert P["cbp"][-10:].mean() > P["cbp"][:10].mean() - 0.03, P["cbp"]
