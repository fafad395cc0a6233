"""Rotated MNIST and Rotated Fashion-MNIST (Buzzega et al. 2020): one datamodule for any source dataset, each task rotating every
image counter-clockwise by its own angle drawn uniformly in [0, 180) degrees from the seed. The rotation is the stated one
(90 degrees is torch.rot90; other angles agree with torchvision's nearest-pixel rotate), the tasks are fixed by the seed, and a
short DIL run learns far above chance. The rotation itself is worked through in nbs/01f_rotated.ipynb."""
import pytest
import torch
from torchvision.transforms.functional import rotate

from clarena.data.rotated import RotatedDataModule, rotate_images
from clarena.loop import build, run_experiment
from clarena.train import compose_config


def test_the_rotation_is_the_stated_one(no_data_root):
    dm = RotatedDataModule("mnist", num_tasks=4, scenario="DIL", root=no_data_root, seed=0)
    dm.setup()
    x = dm.data.x_test[:200]
    assert torch.equal(rotate_images(x, 90.0), torch.rot90(x, 1, (-2, -1)))  # a digit turned a quarter counter-clockwise
    assert torch.equal(rotate_images(rotate_images(x, 90.0), 90.0), rotate_images(x, 180.0))
    for t in range(4):
        dm.setup_task(t)
        a = dm.angles[t]
        assert 0 <= a < 180
        view = dm.test_views[t].x[:200]
        assert torch.equal(view, rotate_images(x, a))
        assert (view == rotate(x, a)).float().mean() > 0.99, a  # torchvision's rotate, as the reference code applies it
        assert view.float().mean().item() == pytest.approx(x.float().mean().item(), rel=0.1)  # a digit turns inside the frame: its ink stays


def test_the_seed_fixes_the_tasks(no_data_root):
    a, b, c = (RotatedDataModule("mnist", num_tasks=20, scenario="DIL", root=no_data_root, seed=s) for s in (3, 3, 4))
    assert a.angles == b.angles and a.angles != c.angles and len(set(a.angles)) == 20
    for dm in (a, b): dm.setup_task(5)
    assert torch.equal(a.train_view.x, b.train_view.x) and torch.equal(a.train_view.y, b.train_view.y)


def test_configs(tmp_path):
    for name, dataset in (("rotated_mnist", "mnist"), ("rotated_fashion_mnist", "fashion_mnist")):
        dm, algo = build(compose_config("pmnist_dil_finetuning", [f"data={name}", f"paths.data_dir={tmp_path}"]))
        assert isinstance(dm, RotatedDataModule) and (dm.dataset, dm.num_tasks, dm.scenario) == (dataset, 20, "DIL")
        assert algo.head.scenario == "DIL"


def test_a_short_dil_run_learns(tmp_path, no_data_root):
    "3 tasks of 60 steps, one shared head of ten outputs: every task far above chance (0.1) at its end, and the average at the end."
    m = run_experiment(compose_config("pmnist_dil_finetuning", ["data=rotated_mnist", "data.num_tasks=3", "trainer.limit_train_batches=60",
                                                                "measure_fwt=false", "trainer.enable_progress_bar=false",
                                                                f"paths.data_dir={no_data_root}", f"paths.output_dir={tmp_path / 'run'}"]))
    acc = m["acc_matrix"]
    assert min(acc[t][t] for t in range(3)) > 0.6 and m["avg_acc"][-1] > 0.4, acc
