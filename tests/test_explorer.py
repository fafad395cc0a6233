"""The run explorer: finding runs, the static view (papermill, the docs), the live widgets, HAT's masks from the checkpoint, show_run."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BIN = Path(sys.executable).parent
PNG = "data:image/png;base64,"


@pytest.fixture(scope="module")
def arena(tmp_path_factory):
    "An arena of two runs (Finetuning, HAT) on Split MNIST in 2 tasks, a few batches each, with its report."
    from clarena.train import compose_config
    from clarena.arena import run_arena
    logs = tmp_path_factory.mktemp("logs")
    common = ["data.num_tasks=2", "trainer.limit_train_batches=6", "trainer.enable_progress_bar=false", "measure_fwt=false",
              f"paths.data_dir={logs / 'none'}"]
    run_arena([compose_config("smnist_til_finetuning", [f"model/algorithm={a}", *common]) for a in ("finetuning", "hat")], logs / "arena" / "x")
    return logs / "arena" / "x"


def runs_by_algorithm(arena):
    return {json.loads((d / "metrics.json").read_text())["algorithm"]: d for d in (arena / "runs").iterdir()}


@pytest.fixture
def shell():
    from IPython.core.interactiveshell import InteractiveShell
    return InteractiveShell.instance()


def test_find_runs(arena):
    from clarena.explorer import find_runs, is_arena
    runs = find_runs(arena)
    assert sorted(runs) == sorted((arena / "runs").iterdir())
    assert find_runs(arena.parent.parent) == runs  # any folder above the runs
    assert find_runs(runs[0]) == [runs[0]]
    assert is_arena(arena) and not is_arena(runs[0])
    with pytest.raises(FileNotFoundError): find_runs(arena / "nope")


def test_hat_masks_from_the_checkpoint(arena):
    from clarena.explorer import hat_masks, mask_states, plot_task_masks
    runs = runs_by_algorithm(arena)
    assert hat_masks(runs["Finetuning"]) is None
    masks = hat_masks(runs["HAT"])
    report = json.loads((runs["HAT"] / "metrics.json").read_text())["algorithm_report"]
    assert len(masks) == 2 and len(masks[0]) == 2
    for t in range(2):  # the same units as the run counted when the task ended
        np.testing.assert_allclose([float((a > 0.5).mean()) for a in masks[t]], report[t]["task_capacity"], atol=1e-6)
    s = mask_states(masks, 1, 0)
    assert int((s >= 2).sum()) == int((masks[1][0] > 0.5).sum())
    assert len(plot_task_masks(masks, 1).axes) == 2


def test_static_view_shows_every_run_and_every_slider_position(arena, shell):
    from IPython.utils.capture import capture_output
    from clarena.explorer import explore, live_widgets
    assert not live_widgets()  # no widget frontend here
    with capture_output() as cap:
        assert explore(arena) is None
    page = "".join(o.data.get("text/html", "") for o in cap.outputs)
    # the arena's two comparison figures; matrix and two curves per run; HAT's masks of both tasks (both slider positions)
    assert page.count(PNG) == 2 + 3 * 2 + 2, page.count(PNG)
    assert "HAT masks task 0" in page and "HAT masks task 1" in page and "Finetuning" in page
    assert not any("application/vnd.jupyter.widget-view+json" in o.data for o in cap.outputs)
    with capture_output() as cap:
        explore(arena, max_runs=1)
    assert "1 more runs" in "".join(o.data.get("text/html", "") for o in cap.outputs)


def test_live_view_has_a_run_dropdown_and_a_mask_slider(arena, shell, monkeypatch):
    import ipywidgets as W
    from IPython.utils.capture import capture_output
    import clarena.explorer as E
    monkeypatch.setattr(E, "live_widgets", lambda: True)
    with capture_output() as cap:
        ex = E.explore(arena)
    runs = runs_by_algorithm(arena)
    assert isinstance(ex, E.Explorer) and ex.choice.options[0][0].startswith(E.ARENA)
    assert sorted(v for _, v in ex.choice.options[1:]) == sorted(str(d) for d in runs.values())
    bundle = next(o.data for o in cap.outputs if "application/vnd.jupyter.widget-view+json" in o.data)  # (with no kernel, the Output widget does not capture)
    assert "application/vnd.jupyter.widget-view+json" in bundle and bundle["text/html"].count(PNG) == 2  # the arena, for viewers without widgets
    with capture_output() as cap:
        E._show_view(str(runs["Finetuning"]))
    assert "text/markdown" in cap.outputs[0].data and sum("image/png" in o.data for o in cap.outputs) == 3  # matrix, two curves; no slider
    E._show_view(str(runs["HAT"]))
    sliders = [w for w in W.Widget.widgets.values() if isinstance(w, W.IntSlider) and w.description == "HAT task"]
    assert len(sliders) == 1 and (sliders[0].min, sliders[0].max, sliders[0].value) == (0, 1, 1)


def test_show_run_rounds_and_shows_every_figure(arena, shell):
    from IPython.utils.capture import capture_output
    from clarena.explorer import show_run
    run = runs_by_algorithm(arena)["HAT"]
    with capture_output() as cap:
        m = show_run(run)
    text = cap.outputs[0].data["text/markdown"]
    assert f"{m['final_avg_acc']:.4f}" in text and not re.search(r"\d\.\d{5,}", text)  # rounded for reading
    assert sum("image/png" in o.data for o in cap.outputs) == len(list(run.glob("*.png")))  # the algorithm's own figures too


def test_show_run_as_a_cells_last_line_shows_the_run_not_its_dict(arena, shell):
    from IPython.utils.capture import capture_output
    run = runs_by_algorithm(arena)["HAT"]
    shell.user_ns["run"] = run
    with capture_output() as cap:
        res = shell.run_cell("from clarena.explorer import show_run\nshow_run(run)")
    assert res.success, res.error_in_exec
    assert "text/markdown" in cap.outputs[0].data  # the run, displayed
    echoed = res.result  # what the cell's last line evaluated to, and what the display hook printed for it
    assert echoed["algorithm"] == "HAT" and isinstance(echoed, dict)  # still the metrics, to index
    assert "final_avg_acc=" in cap.stdout and len(cap.stdout.strip().splitlines()) == 1, cap.stdout  # one line, not a dict of a hundred


def test_papermill_output_holds_the_static_view(arena, tmp_path):
    import nbformat
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(f"from clarena.explorer import explore\nexplore({str(arena)!r})")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "in.ipynb")
    r = subprocess.run([str(BIN / "papermill"), str(tmp_path / "in.ipynb"), str(tmp_path / "out.ipynb"), "--no-progress-bar"],
                       cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads((tmp_path / "out.ipynb").read_text())["cells"][0]["outputs"]
    html = "".join("".join(o["data"].get("text/html", "")) for o in out if "data" in o)
    assert html.count(PNG) == 10 and not any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in out)


def test_default_log_dir_is_the_clis(tmp_path, monkeypatch):
    from clarena.explorer import default_log_dir
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "nbs" / "experiments").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "nbs" / "experiments")  # a notebook's working directory
    assert default_log_dir() == tmp_path / "logs"  # where clarena-train, run at the project's root, writes


def test_in_a_kernel_a_notebook_frontend_gets_the_widget_and_nbclient_the_static_view(arena):
    "A real kernel: an execute request that names its cell (JupyterLab, Notebook 7, VS Code) gets the widget; one that does not (papermill) the static view."
    from jupyter_client.manager import start_new_kernel
    from conftest import kernel_execute
    km, kc = start_new_kernel(kernel_name="python3", env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        def run(code, metadata=None): return [c["data"] for t, c in kernel_execute(kc, code, metadata) if t in ("display_data", "execute_result")]
        static = run(f"from clarena.explorer import explore\nexplore({str(arena)!r})")
        assert len(static) == 1 and "application/vnd.jupyter.widget-view+json" not in static[0] and static[0]["text/html"].count(PNG) == 10
        live = run(f"ex = explore({str(arena)!r})", metadata={"cellId": "a-cell"})
        assert any("application/vnd.jupyter.widget-view+json" in d for d in live)
    finally:
        kc.stop_channels(); km.shutdown_kernel(now=True)


def test_filter_and_compare_runs(arena):
    from clarena.explorer import compare_runs, filter_runs, run_label
    runs = filter_runs(arena)
    assert len(runs) == 2
    (hat,) = filter_runs(arena, algorithm="hat", benchmark="split mnist", seed=0)
    assert hat == runs_by_algorithm(arena)["HAT"]
    assert filter_runs(arena, seed=1) == [] and filter_runs(arena, benchmark="permuted") == [] and filter_runs(arena, algorithm="EWC") == []
    fig = compare_runs(runs)
    labels = [l.get_label() for l in fig.axes[0].get_lines() if not l.get_label().startswith("_")]
    assert set(labels) >= {run_label(d) for d in runs}  # one curve a run, named by it
    with pytest.raises(ValueError, match="no runs to compare"):
        compare_runs(filter_runs(arena, seed=1))


def test_csv_curves_put_the_tasks_one_after_another(arena):
    from clarena.explorer import csv_curves, plot_csv_curves
    run = runs_by_algorithm(arena)["HAT"]
    curves = csv_curves(run)
    val = [k for k in curves if k.startswith("val/")]
    assert val, list(curves)
    steps = curves[val[0]][0]
    per_task = [sum(1 for _ in open(f)) - 1 for f in sorted((run / "csv").glob("task_*/metrics.csv"))]
    assert len(per_task) == 2 and steps == sorted(steps) and len(set(steps)) > 1  # task 1's points after task 0's
    assert any(ax.lines for ax in plot_csv_curves(run).axes)
    with pytest.raises(FileNotFoundError, match="no CSV logs"):
        plot_csv_curves(arena)  # not a run


def test_explore_filters_by_argument_and_by_its_dropdowns(arena, monkeypatch):
    from IPython.utils.capture import capture_output
    import clarena.explorer as E
    monkeypatch.setattr(E, "live_widgets", lambda: True)
    runs = runs_by_algorithm(arena)
    with capture_output():
        ex = E.explore(arena)
        only = E.explore(arena, algorithm="HAT", seed=0)
    assert [v for _, v in only.choice.options[1:]] == [str(runs["HAT"])]
    assert ex.filters["algorithm"].options == ("all", "HAT", "Finetuning") and ex.filters["seed"].options == ("all", "0")
    ex.filters["algorithm"].value = "Finetuning"  # the dropdown narrows the views
    assert [v for _, v in ex.choice.options] == [ex.options[0][1], str(runs["Finetuning"])]
    ex.filters["algorithm"].value = "all"
    assert len(ex.choice.options) == 3
    with pytest.raises(FileNotFoundError, match="seed=7"):
        E.explore(arena, seed=7)
