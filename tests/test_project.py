"""Promises the repository makes about itself: README and .ci/run agree, README is generated from index.ipynb."""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_is_generated_from_index():
    sys.path.insert(0, str(ROOT / "tools"))
    from make_readme import render
    assert (ROOT / "README.md").read_text() == render(), "README.md drifted from nbs/index.ipynb: run python tools/make_readme.py"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```sh\n(.*?)\n```", readme, re.S)
    test_cmd = next(c for c in commands if "pytest" in c)
    assert "clarena-train" in commands[0] and "pip install" in commands[0]
    assert test_cmd in (ROOT / ".ci" / "run").read_text()


def test_bundled_mnist_is_the_official_test_set():
    import hashlib
    assets = ROOT / "clarena" / "assets"
    md5 = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in assets.glob("*.gz")}
    assert md5 == {"t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
                   "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"}
    assert "CC BY-SA 3.0" in (assets / "MNIST-CREDIT.md").read_text()


def test_docs_sidebar_lists_every_notebook():
    nbs = ROOT / "nbs"
    listed = set(re.findall(r"-\s+(\S+\.ipynb)", (nbs / "sidebar.yml").read_text()))
    present = {str(p.relative_to(nbs)) for p in nbs.rglob("*.ipynb") if not any(s.startswith(("_", ".")) for s in p.relative_to(nbs).parts)}
    present |= {f"reports/{p.name}" for p in (ROOT / "reports").glob("*.ipynb")}  # the committed reports: .ci/docs copies them in
    assert listed == present, (present - listed, listed - present)
    assert "metadata-files: [nbdev.yml, sidebar.yml]" in (nbs / "_quarto.yml").read_text()  # nbdev 3: its nbdev.yml, our sidebar
