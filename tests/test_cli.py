"""`clarena-train` end to end, sweeps, and the errors bad input must give before any training."""
import json
import os
import subprocess
import sys

import pytest
import torch

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}


def train(args, cwd):
    return subprocess.run([sys.executable, "-m", "clarena.train", *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)


def test_end_to_end_default_experiment(tmp_path, no_data_root):
    r = train(["data.num_tasks=3", "trainer.limit_train_batches=25", "trainer.enable_progress_bar=false",
               f"paths.data_dir={no_data_root}", "tags=[e2e]"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = list((tmp_path / "logs" / "pmnist_finetuning" / "runs").iterdir())
    assert len(runs) == 1
    run = runs[0]
    m = json.loads((run / "metrics.json").read_text())
    for key in ("acc_matrix", "loss_matrix", "avg_acc", "avg_loss", "bwt", "fwt", "forgetting", "config",
                "data_source", "seed", "commit", "task_wall_s"):
        assert key in m, key
    assert [len(r) for r in m["acc_matrix"]] == [1, 2, 3]
    assert len(m["avg_acc"]) == len(m["avg_loss"]) == len(m["task_wall_s"]) == 3
    # permuted MNIST, 10 classes: every task well above chance (0.1) right after it is learned
    assert all(m["acc_matrix"][t][t] > 0.5 for t in range(3)), m["acc_matrix"]
    assert m["data_source"] == "mnist-bundled-10k" and "bundled MNIST sample" in m["note"]
    assert m["config"]["data"]["num_tasks"] == 3 and m["tags"] == ["e2e"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["task_0.ckpt", "task_1.ckpt", "task_2.ckpt"]
    for f in ("acc_matrix.csv", "acc_matrix.png", "avg_acc.png", "task_acc.png", "config.yaml", "csv/task_2/metrics.csv"):
        assert (run / f).stat().st_size > 0, f
    assert not (run / "progress.json").exists()
    assert "final average accuracy" in (run / "train.log").read_text()  # the log is flushed before the fast exit
    rows = (run / "acc_matrix.csv").read_text().splitlines()
    assert len(rows) == 3 and abs(float(rows[2].split(",")[1]) - m["acc_matrix"][2][1]) < 1e-6


def test_multirun_and_run_dir(tmp_path, no_data_root):
    common = ["experiment=smnist_til_finetuning", "data.num_tasks=2", "trainer.limit_train_batches=5",
              "trainer.limit_test_batches=1", "measure_fwt=false", "trainer.enable_progress_bar=false", f"paths.data_dir={no_data_root}"]
    r = train(["-m", "seed=1,2", *common], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    sweeps = list((tmp_path / "logs" / "smnist_til_finetuning" / "multiruns").iterdir())
    assert len(sweeps) == 1
    seeds = sorted(json.loads((sweeps[0] / job / "metrics.json").read_text())["seed"] for job in ("0", "1"))
    assert seeds == [1, 2]
    r = train([*common, f"hydra.run.dir={tmp_path / 'exact'}"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "exact" / "metrics.json").exists()


@pytest.mark.parametrize("args,code,message", [
    (["data.dataset=mnistt"], 2, "unknown dataset 'mnistt'; valid choices: 'mnist', 'fashion_mnist'"),
    (["model/algorithm=nope"], 2, "unknown model/algorithm option 'nope'; valid choices: "),
    (["data=foo"], 2, "unknown data option 'foo'; valid choices: "),
    (["model.optimizer.lr=abc"], 2, "model.optimizer.lr must be a number > 0, got 'abc'"),
    (["model.optimizer.lr=-1"], 2, "model.optimizer.lr must be a number > 0, got -1"),
    (["seed=abc"], 2, "seed must be an integer, got 'abc'"),
    pytest.param(["trainer=gpu"], 2, "this machine has no CUDA GPU", marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here")),
    (["trainer.accelerator=tpu"], 2, "unknown trainer.accelerator 'tpu'; valid choices: 'cpu'"),
    (["+trainer.no_such_option=1"], 2, "unknown trainer option(s) ['no_such_option']"),
    (["paths.log_dir=a_file/logs"], 2, "a_file/logs"),
    (["experiment_name=../../x"], 2, "experiment_name must be a plain name"),
    (["data.val_size=1.5"], 2, "data.val_size must be a fraction in [0, 1) or a whole number of samples >= 1, got 1.5"),
    (["experiment=pmnist_hat", "model.algorithm.s_max=0"], 2, "s_max"),
    (["experiment=smnist_cil_finetuning", "model/head=til"], 2, "SplitDataModule in scenario CIL needs a CIL head (model/head=cil)"),
    (["experiment=smnist_til_finetuning", "data.num_tasks=6"], 2, "can make at most 5 tasks, got num_tasks=6"),
    (["trainer.max_epochs=-1"], 2, "trainer.max_epochs must be an integer >= 1, got -1"),
    (["experiment=smnist_cil_finetuning", "model/algorithm=hat"], 2, "HAT is defined for scenarios TIL, not CIL"),
    (["data.scenario=XIL"], 2, "unknown data.scenario 'XIL'; valid choices: 'TIL', 'CIL', 'DIL'"),
    (["data=rotated_fashion_mnist", "data.scenario=CIL"], 2, "unknown scenario for RotatedDataModule 'CIL'; valid choices: 'TIL'"),
    (["data.scenario=CIL"], 2, "PermutedDataModule in scenario CIL needs a CIL head (model/head=cil)"),
    (["data.num_tasks=-1"], 2, "data.num_tasks must be an integer >= 1, got -1"),
    (["-m", "data.batch_size=0"], 2, "data.batch_size must be an integer >= 1, got 0"),
    # issue 22: tracebacks, values that trained and then failed, and values silently accepted; each one line, exit 2, nothing left
    (["model.optimizer.lr=1e300"], 2, "model.optimizer.lr must be a finite number > 0 up to 3.4e+38 (float32's largest), got 1e+300"),
    (["model.optimizer.lr=inf"], 2, "model.optimizer.lr must be a finite number > 0 up to 3.4e+38 (float32's largest), got inf"),
    (["model.optimizer.weight_decay=nan"], 2, "model.optimizer.weight_decay must be a finite number, got nan"),
    (["model/algorithm=si", "model.algorithm.strength=1e300"], 2, "model.algorithm.strength=1e+300 is beyond float32's largest number"),
    (["model/algorithm=ewc", "model.algorithm.strength=inf"], 2, "model.algorithm.strength must be a finite number, got inf"),
    (["model/algorithm=lwf", "model.algorithm.strength=inf"], 2, "model.algorithm.strength must be a finite number, got inf"),
    (["model/algorithm=lwf", "model.algorithm.temperature=1e-300"], 2, "LwF's temperature (T) must be a finite number of sensible magnitude"),
    (["experiment=pmnist_hat", "model.algorithm.s_max=1e308"], 2, "model.algorithm.s_max=1e+308 is beyond float32's largest number"),
    (["seed=-1"], 2, "seed must be an integer from 0 to 2**32 - 1"),
    (["seed=4294967296"], 2, "seed must be an integer from 0 to 2**32 - 1"),
    (["trainer.limit_train_batches=-1"], 2, "trainer.limit_train_batches must be null (all), a number of batches >= 1"),
    (["trainer.limit_train_batches=0"], 2, "trainer.limit_train_batches must be null (all), a number of batches >= 1"),
    (["trainer.precision=bogus"], 2, "unknown trainer.precision 'bogus'"),
    (["trainer.devices=0"], 2, "trainer.devices must be a number of devices >= 1"),
    (["data.val_size=1.0"], 2, "data.val_size must be a fraction in [0, 1) or a whole number of samples >= 1, got 1.0 (a count is an integer: 1)"),
    (["trainer.gradient_clip_val=-1"], 2, "trainer.gradient_clip_val must be a finite number >= 0, got -1"),
    (["+trainer.max_steps=0"], 2, "trainer.max_steps must be an integer >= 1, got 0"),
    (["experiment=smnist_cil_finetuning", "model/algorithm=er", "model.algorithm.buffer_size=100000", "data.num_tasks=2",
      "trainer.limit_train_batches=2"], 2, "ER's buffer_size=100000 is larger than the training set"),
    # bounded in the replay chapter (ER, DER++, ...): a 313 GB allocation was attempted
    (["experiment=smnist_cil_finetuning", "model/algorithm=er", "model.algorithm.replay_batch_size=1e8", "data.num_tasks=2",
      "trainer.limit_train_batches=2"], 2, "replay_batch_size"),
    (["experiment=smnist_cil_finetuning", "model/algorithm=er", "model.algorithm.replay_batch_size=100000000", "data.num_tasks=2",
      "trainer.limit_train_batches=2"], 2, "replay_batch_size"),
])
def test_bad_input_fails_before_training(tmp_path, args, code, message):
    (tmp_path / "a_file").write_text("a file where a directory should be")
    r = train([*args, f"paths.data_dir={tmp_path / 'none'}"], tmp_path)
    assert r.returncode == code, (r.returncode, r.stderr[-2000:])
    assert message in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and r.stderr.strip().splitlines()[-1].startswith("clarena: "), r.stderr[-2000:]
    assert not list(tmp_path.rglob("*.ckpt")) and not list(tmp_path.rglob("metrics.json"))
    assert not list(tmp_path.rglob(".hydra")) and not list(tmp_path.rglob("config.yaml"))  # no run directory left behind


@pytest.mark.parametrize("module,args,message", [
    ("clarena.evaluate", [], "clarena-eval needs a checkpoint: clarena-eval ckpt_path="),
    ("clarena.evaluate", ["ckpt_path=nowhere.ckpt"], "checkpoint nowhere.ckpt does not exist"),
])
def test_bad_input_to_eval(tmp_path, module, args, message):
    r = subprocess.run([sys.executable, "-m", module, *args], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, (r.returncode, r.stderr[-2000:])
    assert not list(tmp_path.rglob(".hydra"))


@pytest.mark.parametrize("args,message", [(["num_samples=0"], "num_samples must be an integer >= 1, got 0"),
                                          (["num_samples=-3"], "num_samples must be an integer >= 1, got -3"),
                                          (["task_id=abc"], "task_id must be an integer, got 'abc'")])
def test_bad_input_to_predict(tmp_path, args, message):
    from clarena.evaluate import predict_main
    r = subprocess.run([sys.executable, "-c", "from clarena.evaluate import predict_main; predict_main()", "ckpt_path=x.ckpt", *args],
                       cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, (r.returncode, r.stderr[-2000:])


def test_ddp_two_processes_on_cpu(tmp_path, no_data_root):
    common = ["data.num_tasks=2", "trainer.limit_train_batches=20", "trainer.enable_progress_bar=false", f"paths.data_dir={no_data_root}"]
    ddp = train(["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", *common, f"paths.output_dir={tmp_path / 'ddp'}"], tmp_path)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one = train([*common, f"paths.output_dir={tmp_path / 'one'}"], tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    m_ddp, m_one = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("ddp", "one"))
    assert m_ddp["config"]["trainer"]["devices"] == 2
    # each process takes half of every batch and the test sums are added across processes:
    # the same SGD updates and the whole test set, so the matrix is that of one process (up to float rounding)
    for r_ddp, r_one in zip(m_ddp["acc_matrix"], m_one["acc_matrix"]):
        assert all(abs(a - b) < 0.005 for a, b in zip(r_ddp, r_one)), (m_ddp["acc_matrix"], m_one["acc_matrix"])
    assert ddp.stdout.count("task 1 (2/2): accuracy on tasks 0..1") == 1  # results reported and written by process 0 only
    assert len(list((tmp_path / "ddp").rglob("metrics.json"))) == 1


def test_optuna_search_maximises_validation_accuracy(tmp_path, no_data_root):
    # no -m: an hparams_search config sets Hydra's multirun mode
    r = train(["experiment=pmnist_hat", "hparams_search=hat_optuna", "hydra.sweeper.n_trials=2", "data.num_tasks=2",
               "trainer.limit_train_batches=5", "measure_fwt=false", "trainer.enable_progress_bar=false", f"paths.data_dir={no_data_root}"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    sweep = next((tmp_path / "logs" / "pmnist_hat" / "multiruns").iterdir())
    import yaml
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    trials = [json.loads((sweep / j / "metrics.json").read_text()) for j in ("0", "1")]
    assert best["best_value"] == max(t["final_val_avg_acc"] for t in trials)  # the objective is validation accuracy
    assert set(best["best_params"]) == {"model.optimizer.lr", "model.algorithm.capacity_reg"}


PROBE = """import sys
entry, *args = sys.argv[1:]
module, _, name = entry.partition(":")
sys.argv = ["clarena-" + {"clarena.train": "train", "clarena.evaluate": name.removesuffix("_main"), "clarena.arena": "arena", "clarena.league": "arena"}[module], *args]
main = getattr(__import__(module, fromlist=[name]), name)
try: main()
except SystemExit as e: print("exit", e.code, "lightning" in sys.modules, "torch" in sys.modules)
"""

@pytest.mark.parametrize("entry,args,code,message", [
    ("clarena.train:main", ["--help"], 0, "config groups (group=option; * the default):"),
    ("clarena.train:main", ["data=foo"], 2, "unknown data option 'foo'"),
    ("clarena.train:main", ["seed=abc"], 2, "seed must be an integer"),
    ("clarena.train:main", ["model.optimizer.lr=-1"], 2, "must be a number > 0"),
    ("clarena.train:main", ["data.num_tasks=-1"], 2, "data.num_tasks must be an integer >= 1, got -1"),
    ("clarena.train:main", ["data.scenario=XIL"], 2, "unknown data.scenario 'XIL'; valid choices: 'TIL', 'CIL', 'DIL'"),
    ("clarena.train:main", ["checkpoint.every_minutes=0"], 2, "checkpoint.every_minutes must be a number > 0, got 0"),
    ("clarena.train:main", ["-m", "seed=1,2", "trainer.max_epochs=0"], 2, "trainer.max_epochs must be an integer >= 1, got 0"),  # a sweep
    ("clarena.evaluate:eval_main", ["--help"], 0, "ckpt_path=???"),
    ("clarena.evaluate:eval_main", [], 2, "clarena-eval needs a checkpoint"),
    ("clarena.evaluate:eval_main", ["ckpt_path=nowhere.ckpt"], 2, "checkpoint nowhere.ckpt does not exist"),
    ("clarena.evaluate:predict_main", ["--help"], 0, "num_samples=16"),
    ("clarena.evaluate:predict_main", ["ckpt_path=x.ckpt", "num_samples=0"], 2, "num_samples must be an integer >= 1, got 0"),
    ("clarena.arena:main", ["--help"], 0, "model/algorithm"),
    ("clarena.arena:main", ["data.num_tasks=-1"], 2, "data.num_tasks must be an integer >= 1, got -1"),
    ("clarena.league:main", ["--help"], 0, "model/algorithm"),  # the clarena-arena entry point: a plain arena without preset=
])
def test_help_and_bad_input_answer_before_lightning_is_imported(tmp_path, entry, args, code, message):
    r = subprocess.run([sys.executable, "-c", PROBE, entry, *args], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert f"exit {code} False False" in r.stdout, (r.stdout[-2000:], r.stderr[-2000:])  # neither Lightning nor torch imported
    assert message in r.stdout + r.stderr, (r.stdout[-2000:], r.stderr[-2000:])
    assert not list(tmp_path.rglob(".hydra"))  # and no run directory made


def test_debug_runs_have_their_own_experiment_name_and_limit_any_experiment():
    from clarena.train import compose_config
    for debug in ("default", "fdr", "limit", "overfit", "profiler"):
        assert compose_config("pmnist_hat", [f"debug={debug}"]).experiment_name == "debug"
    assert compose_config("pmnist_hat_paper", ["debug=default"]).trainer.max_epochs == 1  # the experiment's 200 epochs are limited
    assert compose_config("pmnist_hat_paper").callbacks.keys() == {"progress_bar", "patience_lr"}
