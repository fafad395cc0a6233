"""Every shipped HAT experiment, with its defaults, gives what the HAT paper claims on the data at hand: at or above
Finetuning's average accuracy (the same benchmark with Finetuning's defaults), and BWT exactly 0."""
from pathlib import Path

import pytest

from clarena.core import DataError
from clarena.loop import run_experiment
from clarena.train import compose_config

# (HAT experiment, its Finetuning counterpart); the CIFAR ones run where CIFAR is under paths.data_dir (data/)
EXPERIMENTS = [("pmnist_hat", "pmnist_finetuning"), ("scifar10_hat", "scifar10_finetuning"), ("scifar100_hat", "scifar100_finetuning")]


@pytest.mark.slow
@pytest.mark.parametrize("hat,finetuning", EXPERIMENTS, ids=[e[0] for e in EXPERIMENTS])
def test_shipped_hat_experiment_matches_the_paper(tmp_path, hat, finetuning):
    common = ["trainer.enable_progress_bar=false", "measure_fwt=false", f"paths.data_dir={Path('data').resolve()}"]
    try:
        h = run_experiment(compose_config(hat, [*common, f"paths.output_dir={tmp_path / 'hat'}"]))
    except DataError as e:
        pytest.skip(f"{hat}: its data is not here ({str(e)[:120]})")
    f = run_experiment(compose_config(finetuning, [*common, f"paths.output_dir={tmp_path / 'ft'}"]))
    print(hat, h["final_avg_acc"], h["bwt"], finetuning, f["final_avg_acc"])
    assert h["bwt"] == 0.0 and h["final_avg_acc"] >= f["final_avg_acc"], (h["final_avg_acc"], h["bwt"], f["final_avg_acc"])
