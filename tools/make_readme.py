"""Write README.md from nbs/index.ipynb (Quarto, which nbdev-readme needs, cannot be installed here).

Markdown cells are copied as they are; code cells become fenced python blocks. `--check` exits 1
if README.md differs from what would be written.
"""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def render(nb_path: Path = ROOT / "nbs" / "index.ipynb") -> str:
    cells = json.loads(nb_path.read_text())["cells"]
    parts = []
    for c in cells:
        src = "".join(c["source"]).strip()
        if not src or src.startswith("#| hide"):
            continue
        if c["cell_type"] == "markdown": src = src.replace("](images/", "](nbs/images/")  # the docs' images, from the repository's root
        parts.append(src if c["cell_type"] == "markdown" else f"```python\n{src}\n```")
    return "\n\n".join(parts) + "\n"


if __name__ == "__main__":
    text, readme = render(), ROOT / "README.md"
    if "--check" in sys.argv:
        sys.exit(0 if readme.exists() and readme.read_text() == text else 1)
    readme.write_text(text)
