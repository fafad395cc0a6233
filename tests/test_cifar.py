"""CIFAR through torchvision's real reader, on small files written here in the official on-disk format."""
import pickle
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from clarena.core import DataError
from clarena.data.base import load_source
from clarena.data.split import SplitDataModule
from clarena.checkpoints import load_checkpoint
from clarena.loop import build, make_trainer, run_experiment, fit_task, task_data
from clarena.train import compose_config


def _images(rng, labels, num_classes):
    "Each class has its own mean colour, plus noise: learnable in a few steps."
    colours = np.random.default_rng(123).integers(30, 225, (num_classes, 3))
    x = colours[labels][:, :, None, None] + rng.normal(0, 25, (len(labels), 3, 32, 32))
    return np.clip(x, 0, 255).astype(np.uint8).reshape(len(labels), 3072)  # rows: R plane, G plane, B plane, as CIFAR stores them


def write_cifar10(root: Path, per_batch=60, n_test=200, seed=0):
    "The CIFAR-10 python layout: cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta (pickled dicts)."
    rng, folder = np.random.default_rng(seed), root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        labels = rng.integers(0, 10, n)
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "labels": labels.tolist(), "data": _images(rng, labels, 10),
                         "filenames": [f"{name}_{i}.png" for i in range(n)]}, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": per_batch, "num_vis": 3072}, f, protocol=2)


def write_cifar100(root: Path, n_train=1000, n_test=300, seed=0):
    "The CIFAR-100 python layout: cifar-100-python/train, test, meta (fine and coarse labels)."
    rng, folder = np.random.default_rng(seed), root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, n in (("train", n_train), ("test", n_test)):
        fine = rng.integers(0, 100, n)
        with open(folder / name, "wb") as f:
            pickle.dump({"fine_labels": fine.tolist(), "coarse_labels": (fine // 5).tolist(), "data": _images(rng, fine, 100),
                         "filenames": [f"{name}_{i}.png" for i in range(n)]}, f, protocol=2)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"f{i}" for i in range(100)], "coarse_label_names": [f"c{i}" for i in range(20)]}, f, protocol=2)


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_cifar10(root); write_cifar100(root)
    return root


def test_real_reader_on_written_files(cifar_root):
    d = load_source("cifar10", cifar_root, source="torchvision", verify_checksums=False)
    assert d.x_train.shape == (300, 3, 32, 32) and d.x_test.shape == (200, 3, 32, 32) and d.x_train.dtype == torch.uint8
    with open(cifar_root / "cifar-10-batches-py" / "data_batch_2", "rb") as f: b2 = pickle.load(f)
    assert d.y_train[60:120].tolist() == b2["labels"]  # batches in order, labels as written
    assert torch.equal(d.x_train[60], torch.from_numpy(b2["data"][0].reshape(3, 32, 32)))  # CHW planes decoded as torchvision does
    assert "checksums not verified" in d.source
    with pytest.raises(DataError, match="verify_checksums=false"):  # real data keeps the md5 check on
        load_source("cifar10", cifar_root, source="torchvision")
    d100 = load_source("cifar100", cifar_root, source="torchvision", verify_checksums=False)
    assert d100.x_train.shape == (1000, 3, 32, 32) and int(d100.y_train.max()) < 100


def test_split_cifar100_tasks(cifar_root):
    dm = SplitDataModule("cifar100", num_tasks=10, classes_per_task=10, shuffle_classes=True, root=str(cifar_root),
                         source="torchvision", verify_checksums=False, seed=0)
    for t in range(10): dm.setup_task(t)
    classes = [c for t in range(10) for c in dm.task_classes(t)]
    assert sorted(classes) == list(range(100)) and classes != list(range(100))
    assert sum(len(dm.test_views[t]) for t in range(10)) == 300
    with pytest.raises(ValueError, match="at most 10 tasks"):
        SplitDataModule("cifar100", num_tasks=11, classes_per_task=10)


@pytest.mark.parametrize("backbone", [["model/backbone=alexnet", "model.backbone.fc_dims=[128,128]"],
                                      ["model/backbone=alexnet", "model.backbone.fc_dims=[64,64]", "model.backbone.batch_norm=per_task"],
                                      ["model/backbone=resnet18", "model.backbone.width=8"]])
def test_a_few_steps_per_backbone(cifar_root, tmp_path, backbone):
    cfg = compose_config("scifar10_finetuning", [*backbone, f"paths.data_dir={cifar_root}", "data.verify_checksums=false", "data.num_tasks=2",
                                                 "data.batch_size=16", "trainer.max_epochs=10", "trainer.enable_progress_bar=false",
                                                 "measure_fwt=false", f"paths.output_dir={tmp_path}"])
    m = run_experiment(cfg)
    assert [len(r) for r in m["acc_matrix"]] == [1, 2]
    assert "checksums not verified" in m["data_source"]
    if "alexnet" in backbone[0] and len(backbone) == 2:  # colour-coded classes, two per task: well above chance (0.5)
        assert min(m["acc_matrix"][t][t] for t in range(2)) > 0.8, m["acc_matrix"]


@pytest.mark.parametrize("bn", ["none", "per_task"])
def test_hat_invariants_on_the_cnn(cifar_root, tmp_path, bn):
    cfg = compose_config("scifar10_hat", ["model.backbone.fc_dims=[64,64]", f"model.backbone.batch_norm={bn}", f"paths.data_dir={cifar_root}", "data.verify_checksums=false",
                                          "data.num_tasks=2", "data.batch_size=16", "trainer.max_epochs=2", "trainer.enable_progress_bar=false",
                                          "measure_fwt=false", f"paths.output_dir={tmp_path}"])
    L.seed_everything(0)
    dm, algo = build(cfg)
    for t in range(2):
        trainer = make_trainer(cfg, tmp_path, t)
        dm.setup_task(t); algo.setup_task(t, dm.num_new_classes(t))
        algo.start_task(task_data(algo, dm))
        if t == 1:
            before = {k: v.clone() for k, v in algo.state_dict().items()}
            factors = [(wf.clone(), bf.clone()) for wf, bf in algo._factors]
        fit_task(trainer, algo, dm)
    after = algo.state_dict()
    names = [f"backbone.convs.{i}" for i in range(3)] + [f"backbone.fcs.{i}" for i in range(2)]
    protected = moved = 0
    for name, (wf, bf) in zip(names, factors):
        for key, f in ((f"{name}.weight", wf), (f"{name}.bias", bf)):
            frozen = f == 0
            assert torch.equal(after[key][frozen], before[key][frozen]), key  # protected channels and units: bit for bit
            protected += int(frozen.sum()); moved += int((after[key][~frozen] != before[key][~frozen]).sum())
    assert protected > 1000 and moved > 1000, (protected, moved)
    assert all(torch.equal(after[k], before[k]) for k in before if k.startswith(("head.heads.0.", "embeddings.0.", "backbone.bns.0.")))


def test_hat_refuses_resnet(cifar_root):
    with pytest.raises(ValueError, match="HAT needs a backbone with gated layers"):
        build(compose_config("scifar10_hat", ["model/backbone=resnet18", f"paths.data_dir={cifar_root}"]))


def test_hat_paper_cifar_sequence(cifar_root, tmp_path):
    cfg = compose_config("hat_cifar", ["model.backbone.fc_dims=[32,32]", f"paths.data_dir={cifar_root}", "data.verify_checksums=false",
                                       "trainer.limit_train_batches=2", "trainer.enable_progress_bar=false", "measure_fwt=false",
                                       f"paths.output_dir={tmp_path}"])
    m = run_experiment(cfg)
    assert len(m["acc_matrix"]) == 10 and m["bwt"] == 0.0  # HAT forgets nothing, across the two datasets
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "task_9.ckpt")  # the payload, its sha256 checked
    assert ckpt["cl"]["head_classes"] == [2] * 5 + [20] * 5
    assert "cifar-10-batches-py" in m["data_source"] and "cifar-100-python" in m["data_source"]
