"""Every notebook's inline tests (what `nbdev-test` runs), one pytest test per notebook."""
from pathlib import Path

import pytest
from nbdev.config import get_config
from nbdev.test import test_nb as run_notebook

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p for p in (ROOT / "nbs").rglob("*.ipynb")
                   if not any(part.startswith(("_", ".")) for part in p.relative_to(ROOT / "nbs").parts))


def test_notebooks_found():
    assert len(NOTEBOOKS) >= 9, NOTEBOOKS


# the tutorials, explanations and experiment notebooks also run in CI's docs step (.ci/docs), which fails CI if one fails
PAGES = ("tutorials", "explanations", "experiments")
PARAMS = [pytest.param(p, marks=pytest.mark.slow) if p.relative_to(ROOT / "nbs").parts[0] in PAGES else p for p in NOTEBOOKS]


@pytest.mark.parametrize("nb", PARAMS, ids=[str(p.relative_to(ROOT / "nbs")) for p in NOTEBOOKS])
def test_notebook(nb):
    cfg = get_config(ROOT)
    ok, secs = run_notebook(nb, skip_flags=cfg.tst_flags.split(), basepath=ROOT, cell_timeout=900)
    assert ok, f"{nb.name} failed (its traceback is in the captured stderr)"
