"""Experiment notebooks run by papermill, and the arena from the command line."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXP = ROOT / "nbs" / "experiments"
BIN = Path(sys.executable).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
SMALL = ["data.num_tasks=2", "trainer.limit_train_batches=8", "trainer.deterministic=true", "measure_fwt=false",
         "trainer.enable_progress_bar=false"]


def pngs(nb_path):
    nb = json.loads(Path(nb_path).read_text())
    return sum("image/png" in o.get("data", {}) for c in nb["cells"] for o in c.get("outputs", []))


def test_parameters_cells_survive_cleaning_and_are_listed():
    for name in ("experiment", "hat_vs_finetuning", "smnist_cil", "arena_report"):
        nb = json.loads((EXP / f"{name}.ipynb").read_text())
        assert sum("parameters" in c["metadata"].get("tags", []) for c in nb["cells"]) == 1, name
    out = subprocess.run([str(BIN / "papermill"), "--help-notebook", str(EXP / "experiment.ipynb")], capture_output=True, text=True, env=ENV)
    assert "experiment: str (default \"pmnist_finetuning\")" in out.stdout and "overrides: list (default [])" in out.stdout


def test_papermill_reads_every_parameter_of_every_notebook():
    """papermill parses a parameters cell line by line and skips (with a warning only) a line with two '=', e.g. one in its comment:
    the parameter then shows as unknown to `--help-notebook` and `-p` warns 'Passed unknown parameter'. Every parameter must parse."""
    import ast
    from papermill.translators import PythonTranslator
    cells = [(p, c) for p in sorted((ROOT / "nbs").rglob("*.ipynb")) for c in json.loads(p.read_text())["cells"]
             if "parameters" in c["metadata"].get("tags", [])]
    assert len(cells) >= 5, cells  # the experiment notebooks, the reports
    for path, cell in cells:
        src = "".join(cell["source"])
        assigned = [t.id for n in ast.parse(src).body if isinstance(n, (ast.Assign, ast.AnnAssign))
                    for t in (n.targets if isinstance(n, ast.Assign) else [n.target])]
        assert [x.name for x in PythonTranslator.inspect({"source": src})] == assigned, path.name


def test_papermill_run_equals_the_cli_run(tmp_path):
    overrides = [*SMALL, "seed=3", f"paths.data_dir={tmp_path / 'none'}"]
    (tmp_path / "nb").mkdir()  # the executed notebook away from the working directory: metrics.json must go beside it
    r = subprocess.run([str(BIN / "papermill"), "--inject-output-path", str(EXP / "experiment.ipynb"), str(tmp_path / "nb" / "out.ipynb"), "-p", "experiment", "smnist_cil_finetuning",
                        "-p", "overrides", json.dumps(overrides), "-p", "log_dir", str(tmp_path / "logs"), "--no-progress-bar"],
                       cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((tmp_path / "nb" / "metrics.json").read_text())  # beside the executed notebook
    assert not (tmp_path / "metrics.json").exists()  # not in the working directory
    assert m["seed"] == 3 and m["num_tasks"] == 2 and m["scenario"] == "CIL"  # the -p overrides took effect
    assert pngs(tmp_path / "nb" / "out.ipynb") >= 3  # the plots are inline
    c = subprocess.run([sys.executable, "-m", "clarena.train", "experiment=smnist_cil_finetuning", *overrides, f"paths.output_dir={tmp_path / 'cli'}"],
                       cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=900)
    assert c.returncode == 0, c.stderr[-3000:]
    cli = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert cli["acc_matrix"] == m["acc_matrix"] and cli["loss_matrix"] == m["loss_matrix"]


def test_arena_cli_sweeps_skips_finished_runs_and_reports_failures(tmp_path):
    args = [str(BIN / "clarena-arena"), "model/algorithm=finetuning,hat", "model.optimizer.lr=0.05,1e30", "seed=0", "data=split_mnist",
            *SMALL, f"paths.data_dir={tmp_path / 'none'}", f"paths.log_dir={tmp_path / 'logs'}", "arena.name=t"]
    r = subprocess.run(args, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=900)
    assert r.returncode == 1 and "2 of 4 sweep jobs failed" in r.stderr, r.stderr[-3000:]  # a failed run is reported, and the exit status says so
    arena = tmp_path / "logs" / "arena" / "t"
    report = (arena / "report.md").read_text()
    # each learning rate its own row (they are not seeds of one setting): the failed runs' rows hold no finished run
    assert "| Split MNIST (TIL, 2 tasks) | Finetuning [model.optimizer.lr=0.05] | 1 |" in report and "| HAT [model.optimizer.lr=1e+30] | 0 (+1 failed) |" in report
    assert report.count("non-finite loss") == 2
    assert len(list((arena / "runs").glob("*/metrics.json"))) == 2 and len(list((arena / "runs").glob("*/failed.json"))) == 2
    assert pngs(arena / "report.ipynb") >= 1 and (arena / "arena_avg_acc.png").exists()
    again = subprocess.run(args[:2] + ["model.optimizer.lr=0.05"] + args[3:], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("finished before: skipped") == 2
