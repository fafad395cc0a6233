"""The progress bar in a notebook that papermill executes: readable lines in the saved notebook, not widget state."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
WIDGET = "application/vnd.jupyter.widget-view+json"
STEPS = 7


def run_in_papermill(tmp_path, no_data_root, *overrides) -> list:
    "Train two tasks of Split MNIST (STEPS steps each, the bundled data) in a notebook that papermill executes; the cell's outputs."
    import nbformat
    overrides = ["experiment=smnist_til_finetuning", "data.num_tasks=2", f"trainer.limit_train_batches={STEPS}", "trainer.max_epochs=2",
                 "measure_fwt=false", "speed.steps_per_call=1", "trainer.log_every_n_steps=1", f"paths.data_dir={no_data_root}",
                 f"paths.output_dir={tmp_path / 'run'}", *overrides]
    code = f"from clarena.train import compose_config\nfrom clarena.loop import run_experiment\nm = run_experiment(compose_config(None, {overrides!r}))"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "in.ipynb")
    r = subprocess.run([str(BIN / "papermill"), str(tmp_path / "in.ipynb"), str(tmp_path / "out.ipynb"), "--no-progress-bar"],
                       cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads((tmp_path / "out.ipynb").read_text())["cells"][0]["outputs"]


def test_papermill_keeps_the_bar_as_lines(tmp_path, no_data_root):
    out = run_in_papermill(tmp_path, no_data_root)
    assert not any(WIDGET in o.get("data", {}) for o in out)  # no widget, whose state the saved notebook would not show
    text = "".join("".join(o["text"]) for o in out if o["output_type"] == "stream" and o["name"] == "stdout")
    assert "\r" not in text, text[-2000:]  # whole lines, nothing redrawn in place
    bar = [l for l in text.splitlines() if re.match(r"task \d \(\d/2\) epoch \d: ", l)]  # task i (i+1/N)
    for task in (0, 1):
        lines = [l for l in bar if l.startswith(f"task {task} ({task + 1}/2) ")]
        assert 2 <= len(lines) <= 10, lines  # a few lines a task, over both epochs
        assert lines[-1].startswith(f"task {task} ({task + 1}/2) epoch 1: 100%") and f"| {STEPS}/{STEPS} [" in lines[-1], lines
        assert all(re.search(r"\| \d+/7 \[.*steps/s, train/loss=\d", l) for l in lines), lines  # step k/N, steps/s, the loss
    assert not any(l.startswith(("Validation", "Testing", "Sanity")) for l in text.splitlines())  # no bars but the training one


@pytest.mark.slow
def test_a_live_bar_forced_in_papermill_is_only_widget_state(tmp_path, no_data_root):
    "What the lines replace: Lightning's bar in an executed notebook is a widget, saved without anything to read."
    out = run_in_papermill(tmp_path, no_data_root, "+callbacks.progress_bar.static=false")
    assert any(WIDGET in o.get("data", {}) for o in out)
    text = "".join("".join(o["text"]) for o in out if o["output_type"] == "stream")
    assert f"{STEPS}/{STEPS} [" not in text


def test_live_where_a_frontend_watches_the_kernel_or_stdout_is_a_terminal(tmp_path, no_data_root):
    "A real kernel: a cell run by a notebook frontend (it names the cell) gets Lightning's widget, one run by nbclient lines; a terminal is live."
    import io, pty
    from jupyter_client.manager import start_new_kernel
    from clarena.callbacks import live_display
    from conftest import kernel_execute
    leader, follower = pty.openpty()
    with open(follower, "w") as tty:
        assert live_display(tty) and not live_display(io.StringIO())
    os.close(leader)
    km, kc = start_new_kernel(kernel_name="python3", env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        def run(code, metadata=None): return [c for t, c in kernel_execute(kc, code, metadata) if t in ("display_data", "stream")]
        run("from clarena.train import compose_config\nfrom clarena.loop import run_experiment\n"
            f"cfg = compose_config('smnist_til_finetuning', ['data.num_tasks=1', 'trainer.limit_train_batches={STEPS}', 'measure_fwt=false', "
            f"'paths.data_dir={no_data_root}', 'paths.log_dir={tmp_path}'])")
        live = run("run_experiment(cfg)", metadata={"cellId": "a-cell"})
        assert any(WIDGET in o.get("data", {}) for o in live)
        lines = run("run_experiment(cfg)")
        assert not any(WIDGET in o.get("data", {}) for o in lines)
        assert f"| {STEPS}/{STEPS} [" in "".join(o.get("text", "") for o in lines)
    finally:
        kc.stop_channels(); km.shutdown_kernel(now=True)
