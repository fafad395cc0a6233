"""Image folders larger than memory: the on-disk cache, host memory that does not grow with the folder, the matrix of the same
images held in memory, and bad folders stopped before a run starts."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from clarena.core import DataError
from clarena.data.imagefolder import DiskImages, decode_image, image_folder
from clarena.data.base import load_source
from clarena.loop import run_experiment
from clarena.train import compose_config

CLASSES = 4


def write_folder(root: Path, n_train: int, n_test: int, size: int = 8, seed: int = 0) -> Path:
    "`<root>/<split>/class<c>/<i>.png`: each class its own mean colour plus noise, so a task is learnable in one epoch."
    rng, colours = np.random.default_rng(seed), np.random.default_rng(123).integers(30, 225, (CLASSES, 3))
    for split, n in (("train", n_train), ("test", n_test)):
        for c in range(CLASSES):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            x = np.clip(colours[c] + rng.normal(0, 25, (n, size, size, 3)), 0, 255).astype(np.uint8)
            for i in range(n): Image.fromarray(x[i]).save(d / f"{i}.png", compress_level=1)
    return root


def dataset_node(name: str, folder: Path, size: int) -> dict:
    "`data.dataset` as a call that registers the folder (what a config for a folder of your own holds)."
    return dict(_target_="clarena.data.imagefolder.image_folder", name=name, folder=str(folder), num_classes=CLASSES, size=size)


def folder_config(name, folder, size, out, loader, workers=0, hidden=32, eval_batch_size=500, val_size=0.1):
    "Split of an image folder: 2 tasks of 2 classes, augmented, an MLP, one epoch; `loader` device (in memory) or dataloader (on disk)."
    cfg = compose_config(None, ["data=split_tinyimagenet", "data.num_tasks=2", "data.classes_per_task=2", "data.batch_size=64",
                                f"data.eval_batch_size={eval_batch_size}", f"data.val_size={val_size}", f"data.loader={loader}", f"data.num_workers={workers}",
                                f"paths.data_dir={folder.parent}", "model/backbone=mlp", f"model.backbone.input_dim={3 * size * size}",
                                f"model.backbone.hidden_dims=[{hidden}]", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
                                "measure_fwt=false", f"paths.output_dir={out}"])
    OmegaConf.update(cfg, "data.dataset", dataset_node(name, folder, size), merge=False)
    return cfg


def test_cache_holds_what_pil_decodes(tmp_path):
    folder = write_folder(tmp_path / "f", 30, 10, size=12)
    image_folder("f_cache", folder, CLASSES, 16)
    d = load_source("f_cache", tmp_path)
    assert isinstance(d.x_train, DiskImages) and d.x_train.shape == (120, 3, 16, 16) and d.y_train.tolist() == sorted(d.y_train.tolist())
    i = 30 + sorted(p.name for p in (folder / "train/class1").iterdir()).index("15.png")  # class order, then name order
    assert torch.equal(d.x_train.read([i])[0], torch.from_numpy(decode_image(folder / "train/class1/15.png", (3, 16, 16))))
    cache = list((tmp_path / ".cache/imagefolder/f_cache").glob("*.u8"))
    assert sorted(p.stat().st_size for p in cache) == [40 * 768, 120 * 768]
    (folder / "test/class0/0.png").unlink()  # a changed folder gets a new cache; the old one is removed
    assert len(load_source("f_cache", tmp_path).y_test) == 39
    assert len(list((tmp_path / ".cache/imagefolder/f_cache").glob("test-*.u8"))) == 1


def test_matrix_equals_the_in_memory_one(tmp_path):
    "The same images held in memory (loader=device) and read from the cache by 2 DataLoader workers, augmented: the same matrix, bit for bit."
    folder = write_folder(tmp_path / "f", 60, 20, size=8)
    m_mem = run_experiment(folder_config("f_same", folder, 16, tmp_path / "mem", "device"))
    m_disk = run_experiment(folder_config("f_same", folder, 16, tmp_path / "disk", "dataloader", workers=2))
    assert m_mem["acc_matrix"] == m_disk["acc_matrix"], (m_mem["acc_matrix"], m_disk["acc_matrix"])
    assert min(m_mem["acc_matrix"][t][t] for t in range(2)) > 0.8, m_mem["acc_matrix"]  # learnt, not a chance-level tie
    assert m_disk["data_source"].startswith(f"imagefolder:{folder.resolve()}") and "16x16" in m_disk["data_source"]


PROBE = r"""
import json, os, sys, threading, time
sys.path.insert(0, {tests!r})
import torch; torch.set_num_threads(1)
from pathlib import Path
from test_imagefolder import folder_config
from clarena.loop import run_experiment

def anon(pid="self"):
    try:
        for line in open(f"/proc/{{pid}}/status"):
            if line.startswith("RssAnon:"): return int(line.split()[1]) * 1024
    except OSError: pass
    return 0

def children():
    kids = set()
    for tid in os.listdir("/proc/self/task"):
        try: kids |= set(open(f"/proc/self/task/{{tid}}/children").read().split())
        except OSError: pass
    return kids

peak, stop = {{}}, [False]
def sample():
    while not stop[0]:
        peak["main"] = max(peak["main"], anon())
        for k in children(): peak["worker"] = max(peak["worker"], anon(k))
        time.sleep(0.005)

result = {{}}
for name, folder, loader, workers in {runs!r}:
    peak.update(main=anon(), worker=0); stop[0] = False
    t = threading.Thread(target=sample, daemon=True); t.start()
    run_experiment(folder_config(name, Path(folder), {size}, Path({out!r}) / f"{{name}}-{{loader}}", loader, workers, hidden=8, eval_batch_size=64, val_size=0))
    stop[0] = True; t.join()
    result[name + "/" + loader + str(len(result))] = dict(peak)
print("PROBE" + json.dumps(result))
"""


def probe(runs: list, size: int, out: Path) -> dict:
    "Peak anonymous resident memory (RssAnon: what the kernel cannot drop, unlike the page cache behind the memory map) of each run in `runs`, one after the other in one process: main process and DataLoader workers."
    code = PROBE.format(tests=str(Path(__file__).parent), runs=runs, size=size, out=str(out))
    # glibc raises its mmap threshold as large blocks are freed, after which freed batch buffers stay in the heap: a high-water mark
    # that grows with the number of batches served, not with anything held. A fixed threshold hands them back, so RssAnon is what is held.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.split("PROBE")[-1])


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RssAnon from /proc")
def test_host_memory_does_not_grow_with_the_folder(tmp_path):
    """Two folders, 400 and 3,600 images cached at 64 x 64 (4.7 and 42 MiB), trained from disk with 2 workers; then the larger one
    held in memory: the control that shows the probe sees images held in memory. Batches hold at most 64 images (eval too)."""
    size, small, large = 64, write_folder(tmp_path / "small", 80, 20), write_folder(tmp_path / "large", 720, 180)
    peaks = {**probe([("small", str(small), "dataloader", 2)], size, tmp_path / "out"),  # each size in a fresh process
             **probe([("large", str(large), "dataloader", 2), ("large", str(large), "device", 0)], size, tmp_path / "out")}
    data_growth = (3600 - 400) * 3 * size * size  # bytes the larger folder adds to the cache
    disk = {p: peaks["large/dataloader0"][p] - peaks["small/dataloader0"][p] for p in ("main", "worker")}
    held = peaks["large/device1"]["main"] - peaks["large/dataloader0"]["main"]
    print(f"cache grows by {data_growth / 2**20:.1f} MiB; peak RssAnon (MiB):",
          {k: {p: round(v / 2**20, 1) for p, v in d.items()} for k, d in peaks.items()})
    assert held > 0.8 * 3600 * 3 * size * size, peaks  # held in memory, the images cost what they weigh
    assert disk["main"] < 0.15 * data_growth and disk["worker"] < 0.15 * data_growth, peaks  # read from disk: nothing that grows


def test_bad_folders_stop_before_the_run(tmp_path):
    folder = write_folder(tmp_path / "f", 3, 2)
    image_folder("f_bad", folder, CLASSES, 8)
    (folder / "train/class2/broken.png").write_bytes(b"\x89PNG not really")
    (folder / "train/class3/also.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=r"2 image file\(s\) cannot be read: .*class2/broken.png.*class3/also.jpg.*replace or remove them"):
        load_source("f_bad", tmp_path)
    out = tmp_path / "run"
    with pytest.raises(DataError, match="cannot be read"):  # what clarena-train reports with exit status 2, before any training
        run_experiment(folder_config("f_bad", folder, 8, out, "dataloader"))
    assert not (out / "metrics.json").exists()
    for f in ("train/class2/broken.png", "train/class3/also.jpg"): (folder / f).unlink()
    (folder / "test/class3").rename(folder / "test/class9")
    with pytest.raises(DataError, match=r"only in train: \['class3'\], only in test: \['class9'\]; give every split the same class folders"):
        load_source("f_bad", tmp_path)
    (folder / "test/class9").rename(folder / "test/class3")
    image_folder("f_bad_val", folder, CLASSES, 8, splits=["train", "val"])
    with pytest.raises(DataError, match=f"{folder.resolve()} has no 'val' split: expected .*/val/<class>/<image>"):
        load_source("f_bad_val", tmp_path)
    for f in (folder / "train/class1").iterdir(): f.unlink()
    with pytest.raises(DataError, match=r"class folder\(s\) without images in .*train: class1"):
        load_source("f_bad", tmp_path)


@pytest.mark.parametrize("damage", ["zeroed", "bit_flipped"])
def test_a_damaged_cache_is_rebuilt_not_trained_on(tmp_path, damage):
    "Issue 22: a cache file of the right size but other bytes trained with exit status 0 (accuracy 0.025 against 0.45)."
    folder = write_folder(tmp_path / "f", 30, 10, size=8)
    image_folder(f"f_{damage}", folder, CLASSES, 8)
    fingerprint = load_source(f"f_{damage}", tmp_path).fingerprint()
    for p in (tmp_path / f".cache/imagefolder/f_{damage}").glob("*.u8"):
        b = bytearray(p.read_bytes())
        if damage == "zeroed": b = bytearray(len(b))
        else: b[len(b) // 2] ^= 0x10
        p.write_bytes(bytes(b))
    again = load_source(f"f_{damage}", tmp_path)
    assert again.fingerprint() == fingerprint  # rebuilt from the images
