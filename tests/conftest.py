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


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a long test, run by the README's test command; CI (CI=true) runs the fast set "
                                       "unless CLARENA_SLOW=1")


def pytest_collection_modifyitems(config, items):
    "In CI, skip the tests marked slow (their fast counterparts stay): CI has 90 minutes on two cores."
    if os.environ.get("CI") != "true" or os.environ.get("CLARENA_SLOW"): return
    skip = pytest.mark.skip(reason="slow: run by the README's test command outside CI, or with CLARENA_SLOW=1")
    for item in items:
        if item.get_closest_marker("slow"): item.add_marker(skip)
