"""Same seed, same results: repeated runs, and the two data paths, give the same accuracy matrix on the CPU."""
from clarena.loop import run_experiment
from clarena.train import compose_config


def run(tmp_path, name, data_root, *extra):
    cfg = compose_config("pmnist_hat", ["data.num_tasks=2", "trainer.max_epochs=1", "trainer.limit_train_batches=30", "trainer.deterministic=true",
                                        "model.backbone.hidden_dims=[64,64]", "trainer.enable_progress_bar=false",
                                        f"paths.output_dir={tmp_path / name}", f"paths.data_dir={data_root}", *extra])
    return run_experiment(cfg)


def test_same_seed_same_matrix_and_loader_paths_agree(tmp_path, no_data_root):
    a = run(tmp_path, "a", no_data_root)
    b = run(tmp_path, "b", no_data_root)
    c = run(tmp_path, "c", no_data_root, "data.loader=dataloader")
    assert a["acc_matrix"] == b["acc_matrix"] and a["loss_matrix"] == b["loss_matrix"]
    assert c["acc_matrix"] == a["acc_matrix"] and c["loss_matrix"] == a["loss_matrix"]
    d = run(tmp_path, "d", no_data_root, "seed=1")
    assert d["acc_matrix"] != a["acc_matrix"]  # the seed matters: the check can fail
