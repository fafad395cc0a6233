"""The regularisation family's results as the literature reports them (van de Ven & Tolias 2019), on real Fashion-MNIST:
in TIL every method forgets less than Finetuning and Joint is above all; in CIL, Finetuning, EWC, SI and MAS stay near
1/5 (5 tasks of 2 classes: only the last task is remembered)."""
from pathlib import Path

import pytest

from clarena.loop import run_experiment
from clarena.train import compose_config

from conftest import FASHION_DIR

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not Path(FASHION_DIR, "train-images-idx3-ubyte.gz").exists(),
                                reason=f"needs Fashion-MNIST in {FASHION_DIR} (apt-get install dataset-fashion-mnist)")]
COMMON = ["data.num_tasks=5", "trainer.limit_train_batches=150", "measure_fwt=false", "trainer.enable_progress_bar=false",
          "trainer.deterministic=true", "seed=0"]
METHODS = {"EWC": ["model/algorithm=ewc"], "OnlineEWC": ["model/algorithm=online_ewc"], "SI": ["model/algorithm=si"],
           "MAS": ["model/algorithm=mas"], "LwF": ["model/algorithm=lwf"]}


def runs(tmp, experiment, bench, methods):
    return {name: run_experiment(compose_config(experiment, [*bench, *extra, *COMMON, f"paths.output_dir={tmp / name}"]))
            for name, extra in methods.items()}


def test_til_permuted_fashion_mnist_every_method_forgets_less_than_finetuning(tmp_path):
    res = runs(tmp_path, "pmnist_finetuning", ["data=permuted_fashion_mnist"],
               {"Finetuning": [], **METHODS, "Joint": ["reference=joint"]})
    print({k: (round(m["final_avg_acc"], 4), round(m["bwt"], 4)) for k, m in res.items()})
    ft = res["Finetuning"]
    assert ft["data_source"].startswith("idx:/usr/share/datasets/fashion-mnist") and ft["bwt"] < -0.02
    for name in METHODS: assert res[name]["bwt"] > ft["bwt"] + 0.003, (name, res[name]["bwt"], ft["bwt"])
    assert all(res["Joint"]["final_avg_acc"] > m["final_avg_acc"] for k, m in res.items() if k != "Joint")


def test_cil_split_fashion_mnist_regularisation_stays_near_one_fifth(tmp_path):
    res = runs(tmp_path, "smnist_cil_finetuning", ["data=split_fashion_mnist", "data.scenario=CIL"],
               {"Finetuning": [], **{k: v for k, v in METHODS.items() if k in ("EWC", "SI", "MAS")}})
    print({k: round(m["final_avg_acc"], 4) for k, m in res.items()})
    for name, m in res.items(): assert abs(m["final_avg_acc"] - 0.2) < 0.05, (name, m["final_avg_acc"])
