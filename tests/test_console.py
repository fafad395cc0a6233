"""What a run prints: no warning that comes from inside Lightning on every run."""
import warnings


def test_lightning_pytree_warning_is_filtered_and_only_it():
    import torch
    import importlib, clarena
    importlib.reload(clarena)  # installs the filter in this test (an import in an earlier test installed it in that test's warnings context, which pytest resets)
    from lightning.pytorch.utilities.combined_loader import CombinedLoader
    with warnings.catch_warnings(record=True) as seen:
        warnings.filters[:] = [f for f in warnings.filters if f[0] == "ignore" and "LeafSpec" in str(f[1] and f[1].pattern)] + [("always", None, Warning, None, 0)]
        CombinedLoader(torch.utils.data.DataLoader(list(range(4)), batch_size=2), "max_size_cycle")  # one loader, as clarena passes it
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, elsewhere", FutureWarning)  # the same text from another module still shows
    assert [str(w.message) for w in seen] == ["`isinstance(treespec, LeafSpec)` is deprecated, elsewhere"], [str(w.message) for w in seen]


def test_arena_help_shows_the_default_sweep():
    import os, subprocess, sys, yaml
    from pathlib import Path
    import clarena
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    p = subprocess.run([sys.executable, "-c", "import sys; sys.argv[0] = 'clarena-arena'; from clarena.arena import main; main()", "--help"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    params = yaml.safe_load((Path(clarena.__file__).parent / "conf" / "arena.yaml").read_text())["hydra"]["sweeper"]["params"]
    assert "default sweep" in p.stdout and all(f"  {k}={v}" in p.stdout for k, v in params.items()), p.stdout
    assert "= 12 runs" in p.stdout  # finetuning,hat x permuted_mnist,split_mnist x seeds 0,1,2
    assert "clarena-arena preset=der_paper --help" in p.stdout  # where the protocols' options are


def test_empty_validation_split_warning_is_filtered_and_only_it():
    "A run with no validation split passes `[]` as its validation loaders: Lightning's warning about it is hidden; an empty DataLoader still warns."
    import torch
    from lightning.pytorch.strategies import SingleDeviceStrategy
    from lightning.pytorch.utilities.data import has_len_all_ranks
    from clarena.loop import quiet_lightning
    strategy = SingleDeviceStrategy(torch.device("cpu"))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_lightning()
        has_len_all_ranks([], strategy)  # what a run without a validation split gives Lightning
        has_len_all_ranks(torch.utils.data.DataLoader([]), strategy)  # an empty loader of another kind is still reported
    assert [str(w.message).split(" across")[0] for w in seen] == ["Total length of `DataLoader`"], [str(w.message) for w in seen]


def test_a_task_with_no_validation_samples_is_named():
    "With `data.val_size` too small for a task to get any validation rows, the run says which task and what to change; with 0, nothing."
    import pytest
    from clarena.data.split import SplitDataModule
    dm = SplitDataModule("mnist", num_tasks=5, scenario="TIL", root="/nonexistent", seed=0, val_size=1, source="bundled")
    dm.setup()
    tasks = [t for t in range(5) if (dm.setup_task(t), len(dm.val_view))[1] == 0]
    assert len(tasks) == 4  # the one validation row belongs to one task
    dm.setup_task(tasks[0])
    with pytest.warns(UserWarning, match=rf"task {tasks[0]} has no validation samples: data.val_size=1 drew 1 .*raise data.val_size"):
        assert dm.val_dataloader() == []
    quiet = SplitDataModule("mnist", num_tasks=5, scenario="TIL", root="/nonexistent", seed=0, val_size=0, source="bundled")
    quiet.setup(); quiet.setup_task(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert quiet.val_dataloader() == []
