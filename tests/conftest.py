"""Shared test set-up: one torch thread per process (two busy processes on two cores otherwise crawl)."""
import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import pytest
import torch

torch.set_num_threads(1)

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
needs_fashion = pytest.mark.skipif(not os.path.exists(os.path.join(FASHION_DIR, "train-images-idx3-ubyte.gz")),
                                   reason=f"needs Fashion-MNIST in {FASHION_DIR} (apt-get install dataset-fashion-mnist)")


@pytest.fixture
def no_data_root(tmp_path):
    "A data root with nothing in it, so MNIST comes from the bundled sample whatever the machine holds."
    return str(tmp_path / "no-data")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a long test, run only with CLARENA_SLOW=1 (the README's test command and CI run the "
                                       "fast set)")


def pytest_collection_modifyitems(config, items):
    "Skip the tests marked slow unless CLARENA_SLOW=1 (their fast counterparts stay): a first `pytest` finishes in minutes, and CI too."
    if os.environ.get("CLARENA_SLOW") == "1": return
    skip = pytest.mark.skip(reason="slow: run with CLARENA_SLOW=1")
    for item in items:
        if item.get_closest_marker("slow"): item.add_marker(skip)


def kernel_execute(kc, code: str, metadata: dict | None = None, timeout: float = 300) -> list:
    """Run `code` through the Jupyter kernel client `kc` as a frontend would (`metadata`: what the frontend sends, e.g. the cell id it
    names); the cell's outputs as `(msg_type, content)` in order (display_data, execute_result, stream). A failing cell raises AssertionError."""
    msg = kc.session.msg("execute_request", dict(code=code, silent=False, store_history=True, user_expressions={}, allow_stdin=False,
                                                 stop_on_error=True), metadata=metadata or {})
    kc.shell_channel.send(msg)
    outs = []
    while True:
        m = kc.get_iopub_msg(timeout=timeout)
        if m["parent_header"].get("msg_id") != msg["header"]["msg_id"]: continue
        if m["msg_type"] == "error": raise AssertionError("\n".join(m["content"]["traceback"]))
        if m["msg_type"] in ("display_data", "execute_result", "stream"): outs.append((m["msg_type"], m["content"]))
        if m["msg_type"] == "status" and m["content"]["execution_state"] == "idle": return outs


def small_til(cls, **kw):
    "A small MLP (784-16) with a TIL head trained by `cls(..., **kw)` with SGD, and Permuted MNIST (the bundled sample), 3 tasks."
    from functools import partial
    import lightning as L
    from clarena.data.permuted import PermutedDataModule
    from clarena.models.backbones import MLP
    from clarena.models.heads import HeadTIL
    L.seed_everything(0)
    algo = cls(MLP(784, [16]), HeadTIL(16), optimizer=partial(torch.optim.SGD, lr=0.05), **kw)
    return algo, PermutedDataModule("mnist", num_tasks=3, root="/nonexistent", batch_size=64)


def start_task(algo, dm, t):
    "Make task `t` current for the datamodule and the algorithm; its training data as the task hooks get it."
    from clarena.algorithms.base import TaskData
    dm.setup_task(t); algo.setup_task(t, dm.num_new_classes(t))
    return TaskData(t, dm.train_view, "cpu", dm.num_new_classes(t))


def nudge(algo, scale=0.05):
    "Move every weight by Gaussian noise of std `scale`."
    with torch.no_grad():
        for p in algo.parameters(): p.add_(scale * torch.randn_like(p))


def finetuning_and(tmp_path_factory, name: str, overrides: list, common: list) -> tuple:
    "Finetuning and `name` (`overrides` on pmnist_finetuning), same seed and `common` settings: their metrics by name, and `name`'s run directory."
    from clarena.loop import run_experiment
    from clarena.train import compose_config
    d = tmp_path_factory.mktemp(name)
    out = {n: run_experiment(compose_config("pmnist_finetuning", [*common, *extra, f"paths.output_dir={d / n}"]))
           for n, extra in (("finetuning", []), (name, overrides))}
    return out, d / name


def killed_during(run_dir: Path, task: int, dest: Path) -> Path:
    """A copy at `dest` of the finished run `run_dir` as a kill during `task` leaves it: no results (metrics.json), and no checkpoint
    or CSV log of `task` or of any later task, so that a resume goes on from task `task - 1`'s checkpoint. Returns `dest`."""
    import shutil
    shutil.copytree(run_dir, dest)
    (dest / "metrics.json").unlink()
    for p in [*(dest / "checkpoints").glob("task_*.ckpt"), *(dest / "csv").glob("task_*")]:
        if int(p.name.split(".")[0].split("_")[1]) >= task: shutil.rmtree(p) if p.is_dir() else p.unlink()
    return dest


def resumes_after_task(tmp_path, whole: dict, task: int = 2, name: str = "whole", run_dir: Path | None = None) -> dict:
    """The finished run `run_dir` (default `tmp_path/name`; its metrics `whole`) copied to `tmp_path/killed` as if killed during `task`
    (`killed_during`) and resumed: it must resume at `task` and end with the whole run's matrices bit for bit. Returns its metrics."""
    from clarena.loop import run_experiment
    from clarena.train import resume_config
    killed = killed_during(run_dir or tmp_path / name, task, tmp_path / "killed")
    resumed = run_experiment(resume_config(killed))
    assert resumed["resumed_at_task"] == task
    assert resumed["acc_matrix"] == whole["acc_matrix"] and resumed["loss_matrix"] == whole["loss_matrix"]  # bit for bit
    return resumed
