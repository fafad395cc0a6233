"""The docs site: nbdev 3's configuration and workflow, the pages that show their results, the generated config table,
and figures that fit their canvas. The pages themselves are run by .ci/docs (CI); here, what can be checked in seconds."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / "nbs"


def test_quarto_reads_nbdev_yml_and_the_hand_written_sidebar():
    quarto = yaml.safe_load((NBS / "_quarto.yml").read_text())
    assert quarto["metadata-files"] == ["nbdev.yml", "sidebar.yml"]
    assert "sidebar" not in quarto["website"] or "contents" not in quarto["website"]["sidebar"]  # the contents are sidebar.yml's
    assert yaml.safe_load((NBS / "sidebar.yml").read_text())["website"]["sidebar"]["contents"]


def test_nbdev_yml_is_what_nbdev_writes_from_pyproject():
    from nbdev import quarto
    from nbdev.config import get_config
    cfg = get_config(ROOT)
    vals = {k: cfg[k] for k in ("title", "description", "branch", "git_url", "doc_host", "doc_baseurl")}
    expected = quarto._nbdev_yml.format(doc_path=cfg.doc_path.name, **vals)
    assert (NBS / "nbdev.yml").read_text() == expected, "nbs/nbdev.yml is stale: nbdev-proc-nbs rewrites it from pyproject.toml; commit that"
    assert yaml.safe_load(expected)["project"]["output-dir"] == "_docs"


def test_nbdev_leaves_the_sidebar_alone():
    from nbdev.config import get_config
    assert get_config(ROOT).custom_sidebar, "set custom_sidebar = true under [tool.nbdev] in pyproject.toml, or nbdev-sidebar overwrites nbs/sidebar.yml"


def test_deploy_workflow_is_nbdev3_and_runs_the_pages():
    text = (ROOT / ".github" / "workflows" / "deploy.yaml").read_text()
    assert "quarto-ghp@" not in text and "nbdev_docs" not in text and "setup.py" not in text  # the nbdev 2 action
    steps = yaml.safe_load(text)["jobs"]["deploy"]["steps"]
    runs = "\n".join(s.get("run", "") for s in steps)
    assert 'pip install -e ".[dev]"' in runs and "bash .ci/docs" in runs
    publish = next(s for s in steps if s.get("uses", "").startswith("peaceiris/actions-gh-pages@"))
    assert publish["with"]["publish_dir"] == "./_docs"


def test_ci_runs_the_docs_processing():
    ci, docs = (ROOT / ".ci" / "run").read_text(), (ROOT / ".ci" / "docs").read_text()
    assert "bash .ci/docs" in ci and ci.index("bash .ci/docs") < ci.index("git status --porcelain")  # nbdev.yml rewritten -> caught
    assert "set -euo pipefail" in docs and "nbdev-proc-nbs --path" in docs and "nbdev-docs --path" in docs
    assert "bash .ci/run" in (ROOT / ".github" / "workflows" / "test.yaml").read_text()
    ignored = subprocess.run(["git", "check-ignore", "_proc/x", "_pages/x", "_docs/x"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert ignored == ["_proc/x", "_pages/x", "_docs/x"]


def test_every_page_is_run_for_the_docs():
    docs = (ROOT / ".ci" / "docs").read_text()
    assert re.search(r"for dir in tutorials explanations; do nbdev-test", docs)
    for nb in sorted((NBS / "experiments").glob("*.ipynb")):  # a new experiment notebook needs its small-budget line
        assert re.search(rf"^experiment {nb.stem} ", docs, re.M), f"{nb.name} is not run by .ci/docs: its page would show no results"


def test_the_committed_reports_are_pages_with_their_results():
    # the executed reports (the full league, the regularisation arena) are pages of the site, outputs as committed
    docs, sidebar = (ROOT / ".ci" / "docs").read_text(), (NBS / "sidebar.yml").read_text()
    assert 'cp reports/*.ipynb "$pages/reports/"' in docs and '"reports")' in docs  # copied, and checked for results
    reports = sorted((ROOT / "reports").glob("*.ipynb"))
    assert len(reports) >= 2
    code = ("import os, sys, json; os.environ['IN_TEST'] = '1'\n"
            "from fastcore.nbio import read_nb\nfrom nbdev.processors import FilterDefaults\n"
            "for name in sys.argv[1:]:\n"
            "    nb = read_nb(name); FilterDefaults()(nb)\n"
            "    print(json.dumps({name: sum('image/png' in o.get('data', {}) for c in nb.cells for o in c.get('outputs', []))}))\n")
    r = subprocess.run([sys.executable, "-c", code, *map(str, reports)], cwd=NBS, capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    figures = {k: v for line in r.stdout.splitlines() if line.startswith("{") for k, v in json.loads(line).items()}
    for nb in reports:
        assert f"reports/{nb.name}" in sidebar, f"{nb.name} is not in nbs/sidebar.yml"
        assert figures[str(nb)] >= 1, f"{nb.name}: no figure left after nbdev's processing"


def test_the_chapters_pages_build_with_their_figures_and_table(tmp_path):
    # nbdev's processing of a page, as nbdev-proc-nbs runs it: it crashed on 04_metrics; its exec_doc cells show results
    code = ("import os, sys, json; os.environ['IN_TEST'] = '1'\n"
            "from fastcore.nbio import read_nb, write_nb\nfrom nbdev.processors import FilterDefaults\n"
            "for name in sys.argv[1:]:\n"
            "    nb = read_nb(name); FilterDefaults()(nb)\n"
            "    outs = [o for c in nb.cells if 'exec_doc' in c.source for o in c.get('outputs', [])]\n"
            "    print(json.dumps({name: sorted(k for o in outs for k in o.get('data', {}))}))\n")
    r = subprocess.run([sys.executable, "-c", code, "04_metrics.ipynb", "08a_config_table.ipynb", "08_cli.ipynb"], cwd=NBS, capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    shown = {k: v for line in r.stdout.splitlines() if line.startswith("{") for k, v in json.loads(line).items()}
    assert shown["04_metrics.ipynb"].count("image/png") == 4  # the four figures: the matrix, average and per-task accuracy, new-task accuracy
    assert "text/markdown" in shown["08a_config_table.ipynb"]  # the config table
    assert "text/markdown" in shown["08_cli.ipynb"]  # the CLI chapter's table, generated from the config tree


def test_config_table_lists_every_config_file():
    from clarena.config_table import CONF_DIR, config_table
    table = config_table()
    files = sorted(CONF_DIR.rglob("*.yaml"))
    assert len(table.splitlines()) == len(files) + 2
    group, shown = None, set()
    for row in table.splitlines()[2:]:
        first, option = [c.strip() for c in row.strip("|").split(" | ")[:2]]
        group = first.strip("`") if first.startswith("`") else "" if first == "*primary configs*" else group
        shown.add(f"{group}/{option.split('`')[1]}.yaml".lstrip("/"))
    assert shown == {p.relative_to(CONF_DIR).as_posix() for p in files}


def test_task_acc_title_fits_the_canvas():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from clarena import metrics as M
    R = M.rows_to_matrix([[0.9], [0.6, 0.8], [0.5, 0.7, 0.9]])
    for label in ("(Finetuning, bundled MNIST sample)", "(HAT, bundled MNIST sample, a label long enough to need two lines of its own)"):
        fig = M.plot_task_acc(R, label)
        canvas = FigureCanvasAgg(fig); canvas.draw()
        box = fig.axes[0].title.get_window_extent(canvas.get_renderer())
        assert 0 <= box.x0 and box.x1 <= fig.bbox.width and 0 <= box.y0 and box.y1 <= fig.bbox.height, (box, fig.bbox)
        for f in (fig, M.plot_avg_acc({"Finetuning": [0.9, 0.7, 0.7]}, label), M.plot_acc_matrix(R, label)):
            assert M.outside_canvas(f) == []


def test_markdown_cells_are_not_commented_out():
    # a markdown cell written as commented code ("# text" on every line, "#" for blank lines) renders as a page of headings
    bad = []
    for nb in sorted(NBS.rglob("*.ipynb")):
        for c in json.loads(nb.read_text())["cells"]:
            lines = "".join(c["source"]).splitlines()
            if c["cell_type"] == "markdown" and len(lines) > 1 and all(l.startswith("#") for l in lines if l.strip()) and "#" in lines:
                bad.append(f"{nb.relative_to(NBS)}: {lines[0][:60]}")
    assert not bad, bad


def _main_guards_run_in_a_kernel(nb_path):
    "The cells of a notebook with an `if __name__ == \"__main__\"` guard that a Jupyter kernel passes (its code runs as `__main__`)."
    nb = json.loads(Path(nb_path).read_text())
    return [i for i, c in enumerate(nb["cells"]) for line in "".join(c["source"]).splitlines()
            if re.match(r"\s*if __name__ == .__main__.", line) and '"IPython" not in sys.modules' not in line]


def test_main_guard_check_can_fail(tmp_path):
    nb = {"cells": [{"cell_type": "code", "source": ['#| export\n', 'if __name__ == "__main__": main()\n']},
                    {"cell_type": "code", "source": ['if __name__ == "__main__" and "IPython" not in sys.modules: main()\n']}]}
    (tmp_path / "x.ipynb").write_text(json.dumps(nb))
    assert _main_guards_run_in_a_kernel(tmp_path / "x.ipynb") == [0]


def test_run_all_in_jupyter_never_starts_a_command_line():
    """A chapter's `if __name__ == "__main__": main()` is true in a Jupyter kernel, and Run all then hands the kernel's own arguments
    (`-f <connection file>`) to Hydra, which stops with exit status 2: the guard skips a kernel (`python -m` still runs it)."""
    bad = {str(p.relative_to(ROOT)): cells for p in sorted(NBS.rglob("*.ipynb"))
           if ".ipynb_checkpoints" not in p.parts and (cells := _main_guards_run_in_a_kernel(p))}
    assert not bad, bad


def _private_paths(nb_path):
    "The cells of a notebook whose source names a developer's machine (`/work/...`, `/root/...`)."
    nb = json.loads(Path(nb_path).read_text())
    return [i for i, c in enumerate(nb["cells"]) if re.search(r"(?<![\w.~])/(work|root)/", "".join(c["source"]))]


def test_private_path_check_can_fail(tmp_path):
    nb = {"cells": [{"cell_type": "code", "source": ['arena_dir = "/work/arena_runs/x"\n']},
                    {"cell_type": "code", "source": ['arena_dir = "~/clarena-logs/arena/x"\n']}]}
    (tmp_path / "x.ipynb").write_text(json.dumps(nb))
    assert _private_paths(tmp_path / "x.ipynb") == [0]


def test_no_committed_notebook_names_a_developers_path():
    "Reports and chapters are published: their cells name neutral paths (`~/clarena-logs/...`), never `/work/` or `/root/`."
    bad = {str(p.relative_to(ROOT)): cells for p in sorted([*NBS.rglob("*.ipynb"), *(ROOT / "reports").rglob("*.ipynb")])
           if ".ipynb_checkpoints" not in p.parts and (cells := _private_paths(p))}
    assert not bad, bad


# A chapter's worked example is on its page with its output: nbdev 3 runs a cell when processing only if it is marked
# `#| exec_doc`. A cell that shows something (prints, displays, plots, explores, or ends in a bare expression) is
# marked `#| exec_doc`, or says why it is not run with a comment line `# not run in the docs: <reason>`.
NOT_RUN = "# not run in the docs:"
_SHOWS = re.compile(r"^\s*(print|display|explore|plt\.\w+|show_(?!doc)\w*|plot_\w*)\s*\(|^\s*[\w.\[\]\"']+\.(show|plot\w*)\s*\(", re.M)
PENDING = set()  # chapters whose display cells are still to be marked (none)


def _unmarked_display_cells(nb_path):
    "Indices of the code cells that show something and are neither `#| exec_doc` nor marked not run."
    import ast
    nb = json.loads(Path(nb_path).read_text())
    bad = []
    for i, c in enumerate(nb["cells"]):
        s = "".join(c["source"])
        if c["cell_type"] != "code" or not s.strip():
            continue
        if re.search(r"^#\|\s*(exec_doc|export|hide|eval:\s*false)", s, re.M) or NOT_RUN in s:
            continue
        code = "\n".join(l for l in s.splitlines() if not l.lstrip().startswith(("%", "!")))
        try:
            body = ast.parse(code).body
        except SyntaxError:
            continue
        if "show_doc(" in s and not _SHOWS.search(s):
            continue  # nbdev runs show_doc cells itself
        last = body[-1] if body else None
        bare = isinstance(last, ast.Expr) and not isinstance(last.value, (ast.Constant, ast.Call))
        if bare or _SHOWS.search(s):
            bad.append(i)
    return bad


def test_display_cell_check_can_fail(tmp_path):
    cells = ["x = 1\nprint(x)", "#| exec_doc\nprint(1)", f"{NOT_RUN} trains for minutes\nexplore(d)", "y = 2\ny",
             "show_doc(f)", "z = 3\nassert z", "fig.show()", "plot_task_masks(m, 1)"]
    nb = {"cells": [{"cell_type": "code", "source": s.splitlines(keepends=True)} for s in cells]}
    (tmp_path / "x.ipynb").write_text(json.dumps(nb))
    assert _unmarked_display_cells(tmp_path / "x.ipynb") == [0, 3, 6, 7]


def test_every_display_cell_runs_for_the_docs_or_says_why_not():
    # The chapters (nbs/*.ipynb) only: .ci/docs runs every cell of the tutorials, explanations and experiments.
    bad = {p.name: cells for p in sorted(NBS.glob("*.ipynb"))
           if p.name not in PENDING and (cells := _unmarked_display_cells(p))}
    assert not bad, bad


# nbdev documents every public function and class defined in an `#| exec_doc` cell as if it were the chapter's API (a
# show_doc heading on the page): a chapter's helpers for its worked examples are private (`_name`).
def _public_defs_in_exec_doc_cells(nb_path):
    "Names of the public functions and classes that `#| exec_doc` cells define (nbdev would add show_doc for each)."
    import ast
    nb = json.loads(Path(nb_path).read_text())
    names = []
    for c in nb["cells"]:
        s = "".join(c["source"])
        if c["cell_type"] != "code" or not re.search(r"^#\|\s*exec_doc", s, re.M):
            continue
        body = ast.parse("\n".join(l for l in s.splitlines() if not l.lstrip().startswith(("%", "!")))).body
        names += [n.name for n in body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and not n.name.startswith("_")]
    return names


def test_exec_doc_helper_check_can_fail(tmp_path):
    cells = ["#| exec_doc\ndef helper(): pass\nclass _Ok: pass\nhelper()", "def free(): pass", "#| exec_doc\nclass Shown: pass"]
    nb = {"cells": [{"cell_type": "code", "source": s.splitlines(keepends=True)} for s in cells]}
    (tmp_path / "x.ipynb").write_text(json.dumps(nb))
    assert _public_defs_in_exec_doc_cells(tmp_path / "x.ipynb") == ["helper", "Shown"]


def test_worked_examples_define_no_api_for_the_docs():
    bad = {p.name: names for p in sorted(NBS.glob("*.ipynb")) if (names := _public_defs_in_exec_doc_cells(p))}
    assert not bad, bad
