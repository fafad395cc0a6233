"""Shared test set-up: one torch thread per process (two busy processes on two cores otherwise crawl)."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import pytest
import torch

torch.set_num_threads(1)

FASHION_DIR = "/usr/share/datasets/fashion-mnist"


@pytest.fixture
def no_data_root(tmp_path):
    "A data root with nothing in it, so MNIST comes from the bundled sample whatever the machine holds."
    return str(tmp_path / "no-data")
