"""Speed options never change results. On the CPU: several training steps per Lightning step give exactly the
accuracy and loss matrices of one step per Lightning step (Finetuning and HAT). On a CUDA GPU (skipped without one):
steps replayed from CUDA graphs agree with eager steps within half a point, bf16 included."""
import pytest
import torch

from clarena.loop import run_experiment
from clarena.train import compose_config


def run(tmp_path, name, data_root, experiment, *extra):
    cfg = compose_config(experiment, ["data.num_tasks=2", "trainer.max_epochs=1", "trainer.deterministic=true", "model.backbone.hidden_dims=[64,64]",
                                      "trainer.enable_progress_bar=false", "measure_fwt=false",
                                      f"paths.output_dir={tmp_path / name}", f"paths.data_dir={data_root}", *extra])
    return run_experiment(cfg)


@pytest.mark.parametrize("experiment", ["pmnist_finetuning", "pmnist_hat"])
def test_steps_per_call_gives_the_same_matrices(tmp_path, no_data_root, experiment):
    a = run(tmp_path, "one", no_data_root, experiment, "speed.steps_per_call=1")
    assert min(a["acc_matrix"][-1]) > 0.3, a["acc_matrix"]  # it learnt (10 classes: chance is 0.1)
    for k in ("7", "auto"):  # 113 batches a task: with 7 the last chunk is partial; auto takes 32
        b = run(tmp_path, f"k{k}", no_data_root, experiment, f"speed.steps_per_call={k}")
        assert b["acc_matrix"] == a["acc_matrix"] and b["loss_matrix"] == a["loss_matrix"], k
        assert b["algorithm_report"] == a["algorithm_report"]  # HAT: the same units used, layer by layer
        assert str(b["config"]["speed"]["steps_per_call"]) == k  # the speed setting is stamped in the results
        assert train_losses(tmp_path / f"k{k}") == train_losses(tmp_path / "one")  # logged at the same steps, same values


def train_losses(run_dir):
    "The (task, step, train/loss, train/acc) rows the CSV logger wrote."
    rows = []
    for t, f in enumerate(sorted(run_dir.glob("csv/task_*/metrics.csv"))):
        lines = f.read_text().splitlines()
        cols = lines[0].split(",")
        for line in lines[1:]:
            v = dict(zip(cols, line.split(",")))
            if v.get("train/loss"): rows.append((t, v["step"], v["train/loss"], v["train/acc"]))
    assert len(rows) >= 4 and all(0 <= float(r[3]) <= 1 for r in rows), rows  # 113 steps a task, a row every 50: the comparison compares something
    return rows


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@gpu
@pytest.mark.parametrize("experiment", ["pmnist_finetuning", "pmnist_hat"])
def test_captured_steps_agree_with_eager_on_gpu(tmp_path, no_data_root, experiment):
    eager = run(tmp_path, "eager", no_data_root, experiment, "trainer=gpu")
    graph = run(tmp_path, "graph", no_data_root, experiment, "trainer=gpu", "speed.capture=true", "speed.steps_per_call=16")
    diff = max(abs(x - y) for ra, rb in zip(eager["acc_matrix"], graph["acc_matrix"]) for x, y in zip(ra, rb))
    print(experiment, "eager", eager["acc_matrix"], "captured", graph["acc_matrix"], "max difference", diff)
    assert min(eager["acc_matrix"][-1]) > 0.3 and diff <= 0.005, (eager["acc_matrix"], graph["acc_matrix"])
    bf16 = run(tmp_path, "bf16", no_data_root, experiment, "trainer=gpu", "speed.capture=true", "trainer.precision=bf16-mixed")
    diff16 = max(abs(x - y) for ra, rb in zip(eager["acc_matrix"], bf16["acc_matrix"]) for x, y in zip(ra, rb))
    print(experiment, "bf16 captured", bf16["acc_matrix"], "max difference from fp32 eager", diff16)
    assert min(bf16["acc_matrix"][-1]) > 0.3 and diff16 <= 0.02, bf16["acc_matrix"]


def test_seeds_in_parallel_processes_give_each_seed_its_own_result(tmp_path, no_data_root):
    "`hydra/launcher=parallel`: the runs of a sweep at once, in their own processes; seed 1 beside seed 0 = seed 1 alone."
    import json, os, subprocess, sys
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = ["data.num_tasks=2", "trainer.limit_train_batches=20", "trainer.enable_progress_bar=false", "measure_fwt=false",
              f"paths.data_dir={no_data_root}"]
    many = subprocess.run([sys.executable, "-m", "clarena.train", "-m", *common, "seed=0,1", "hydra/launcher=parallel",
                           "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={tmp_path / 'many'}"], env=env, capture_output=True, text=True, timeout=600)
    assert many.returncode == 0, many.stderr[-3000:]
    alone = subprocess.run([sys.executable, "-m", "clarena.train", *common, "seed=1", f"paths.output_dir={tmp_path / 'alone'}"],
                           env=env, capture_output=True, text=True, timeout=600)
    assert alone.returncode == 0, alone.stderr[-3000:]
    m0, m1 = (json.loads((tmp_path / "many" / str(k) / "metrics.json").read_text()) for k in (0, 1))
    solo = json.loads((tmp_path / "alone" / "metrics.json").read_text())
    assert (m0["seed"], m1["seed"]) == (0, 1) and m0["acc_matrix"] != m1["acc_matrix"]
    assert m1["acc_matrix"] == solo["acc_matrix"] and m1["loss_matrix"] == solo["loss_matrix"]
