"""The arena's report.html and a run's summary.html, opened in a real headless browser (Debian's chromium): every figure is decoded and drawn."""
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install -y chromium): "
                                                          "the HTML report cannot be opened in a real browser here")

# written into a copy of the page: on load, the state of every <img> as the browser decoded it
PROBE = ("<script>window.addEventListener('load', () => document.body.setAttribute('data-images', JSON.stringify("
         "[...document.images].map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight]))));</script>")


def chromium(*args, timeout=120):
    r = subprocess.run([CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars", "--virtual-time-budget=10000", *args],
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def images_in_browser(page: Path, tmp_path: Path) -> list:
    "[alt, complete, naturalWidth, naturalHeight] of each <img> of `page`, as headless Chromium loads it."
    probe = tmp_path / f"probe_{page.parent.name}_{page.name}"
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    dom = chromium("--dump-dom", probe.as_uri())
    found = re.search(r'data-images="([^"]*)"', dom)
    assert found, dom[-2000:]
    return json.loads(found.group(1).replace("&quot;", '"'))


@pytest.fixture(scope="module")
def arena(tmp_path_factory):
    "A small arena (Finetuning and HAT, Split MNIST, 2 tasks, a few batches each) with its report written."
    from clarena.train import compose_config
    from clarena.arena import run_arena
    d = tmp_path_factory.mktemp("arena") / "html"
    common = ["data.num_tasks=2", "trainer.limit_train_batches=6", "trainer.enable_progress_bar=false", "measure_fwt=false",
              f"paths.data_dir={d.parent / 'none'}"]
    run_arena([compose_config("smnist_til_finetuning", [f"model/algorithm={a}", *common]) for a in ("finetuning", "hat")], d)
    return d


def test_report_html_is_self_contained_and_its_figures_render(arena, tmp_path):
    page = arena / "report.html"
    text = page.read_text()
    assert "<img" in text and not re.search(r'<img[^>]+src="(?!data:image/png;base64,)', text)  # every figure inside the page
    imgs = images_in_browser(page, tmp_path)
    assert [i[0] for i in imgs] == ["arena_avg_acc", "arena_acc_matrices"]
    for alt, complete, w, h in imgs: assert complete and w > 100 and h > 100, (alt, w, h)
    shot = tmp_path / "report.png"
    chromium("--window-size=1200,1800", f"--screenshot={shot}", page.as_uri())
    from matplotlib.image import imread
    px = imread(shot)[..., :3]
    coloured = (px.max(-1) - px.min(-1)) > 0.25  # the plots' colours: the tables and text are grey
    assert coloured.sum() > 2000, coloured.sum()


def test_run_summary_html_shows_every_figure_the_run_wrote(arena, tmp_path):
    runs = sorted((arena / "runs").glob("*/metrics.json"))
    assert len(runs) == 2
    for m in runs:
        page = m.parent / "summary.html"
        pngs = sorted(p.stem for p in m.parent.glob("*.png"))
        imgs = images_in_browser(page, tmp_path)
        assert sorted(i[0] for i in imgs) == pngs, (pngs, imgs)
        for alt, complete, w, h in imgs: assert complete and w > 100 and h > 50, (alt, w, h)
        if json.loads(m.read_text())["algorithm"] == "HAT": assert "hat_masks_layer0" in pngs  # the algorithm's own figures too


PAYLOAD = "<script>document.body.dataset.pwned=1</script>"


def test_every_value_is_escaped_and_no_value_runs_in_the_browser(tmp_path):
    """A sweep value that is HTML (the issue's `<script>`), in a run that fails (its seed) and in a finished one (its names, a config value,
    its folder's name): shown as text in report.html and summary.html, nothing of it parsed as a tag or run by the browser."""
    from html.parser import HTMLParser
    from urllib.parse import unquote
    from clarena.train import compose_config
    from clarena.arena import run_arena
    from test_arena_integrity import fake_run
    d = tmp_path / "arena"
    folder = "<img src=x onerror=document.body.dataset.pwned=2>"
    fake_run(d, folder, 0, 0.05, 0.5, algorithm=PAYLOAD, experiment=PAYLOAD, data_source=PAYLOAD, note=PAYLOAD)
    run_arena([compose_config("smnist_til_finetuning", [f"seed='{PAYLOAD}'", "data.num_tasks=2", f"paths.data_dir={tmp_path / 'none'}"])], d)

    class Tags(HTMLParser):
        def __init__(self): super().__init__(); self.tags, self.hrefs = [], []
        def handle_starttag(self, tag, attrs):
            self.tags.append((tag, dict(attrs)))
            if tag == "a": self.hrefs.append(dict(attrs)["href"])
    pages = [d / "report.html", d / "runs" / folder / "summary.html"]
    for page in pages:
        text = page.read_text()
        assert "&lt;script&gt;document.body.dataset.pwned=1&lt;/script&gt;" in text, page  # the value is there, as text
        p = Tags(); p.feed(text)
        assert [t for t, _ in p.tags if t == "script"] == [] and not any("onerror" in a for _, a in p.tags), (page, p.tags)
        assert [t for t, a in p.tags if t == "img" and not a.get("src", "").startswith("data:image/png;base64,")] == [], page
        dom = chromium("--dump-dom", page.as_uri())
        assert "<body" in dom and not re.search(r"<body[^>]*data-pwned", dom), dom[:500]
    p = Tags(); p.feed(pages[0].read_text())
    assert [unquote(h) for h in p.hrefs] == [f"runs/{folder}/summary.html"] and (d / unquote(p.hrefs[0])).exists()  # the link leads to its page
    assert "seed &lt;script&gt;" in pages[0].read_text()  # the failed run's seed, in the list of failed runs
