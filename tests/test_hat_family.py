"""The architecture family beyond HAT and PackNet: AdaHAT (Wang et al. 2024), WSN (Kang et al. 2022), NISPA (Gurbuz & Dovrolis 2022).
What every algorithm owes the arena (chunks give the one-step matrices, resume is bit for bit, from a task's checkpoint and from
a step checkpoint; through test_algorithms' own check), and each method's defining invariant on a real run: WSN's and NISPA's
BWT exactly 0 with earlier tasks' weights unchanged, WSN's mask density c and bit-packed masks, AdaHAT's capacity above HAT's
rule; all on the MLP and on the HAT paper's AlexNet-style CNN."""
import math

import pytest
import torch

import test_algorithms as ta
from test_cifar import write_cifar10
from clarena.checkpoints import load_checkpoint
from clarena.core import ConfigError
from clarena.loop import run_experiment
from clarena.train import compose_config

WSN_ADAM = ["model/optimizer=adam", "model.optimizer.lr=0.01"]  # plain SGD barely moves the scores (see the WSN chapter)
NISPA_FAST = ["model/optimizer=adam", "model.optimizer.lr=0.01", "model.algorithm.k=4", "model.algorithm.phase_epochs=1"]
# (name, experiment, overrides), as test_algorithms.ALGORITHMS lists them
FAMILY = [
    ("adahat", "pmnist_hat", ["model/algorithm=adahat", "trainer.max_epochs=1", "trainer.limit_train_batches=120"]),  # HAT's s annealing
    ("wsn", "pmnist_finetuning", ["model/algorithm=wsn", *WSN_ADAM]),
    ("nispa", "pmnist_finetuning", ["model/algorithm=nispa", *NISPA_FAST]),
]


@pytest.mark.parametrize("name,experiment,extra", FAMILY, ids=[a[0] for a in FAMILY])
def test_chunks_and_resume_give_the_uninterrupted_matrices(tmp_path, no_data_root, name, experiment, extra):
    ta.test_chunks_and_resume_give_the_uninterrupted_matrices(tmp_path, no_data_root, name, experiment, extra)


@pytest.fixture(scope="module")
def mlp_runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("family")
    return {name: (ta.run(d, name, str(d / "no-data"), experiment, *extra), d / name) for name, experiment, extra in FAMILY}


def columns_constant(A):
    return all(A[i][j] == A[j][j] for j in range(len(A)) for i in range(j, len(A)))


def test_wsn_bwt_zero_density_c_and_packed_masks(mlp_runs):
    m, run_dir = mlp_runs["wsn"]
    assert columns_constant(m["acc_matrix"]) and columns_constant(m["loss_matrix"]) and m["bwt"] == 0.0, m["acc_matrix"]
    sd = [load_checkpoint(run_dir / "checkpoints" / f"task_{t}.ckpt")["state_dict"] for t in range(3)]
    names = ["fcs.0.weight", "fcs.0.bias", "fcs.1.weight", "fcs.1.bias"]
    for t in range(3):
        for i, n in enumerate(names):
            w, packed = sd[t][f"backbone.{n}"], sd[t][f"mask_{t}_{i}"]
            assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(w.numel() / 8)
            bits = ((packed[:, None].int() >> torch.arange(7, -1, -1)) & 1).flatten()[:w.numel()].view(w.shape).bool()
            assert int(bits.sum()) == int(0.5 * w.numel() + 0.5), (t, n)  # density c = 0.5 exactly, rounded to whole weights
            for later in range(t + 1, 3): assert torch.equal(sd[later][f"backbone.{n}"][bits], w[bits]), (t, later, n)  # bit for bit
    assert [r["task_density"] for r in m["algorithm_report"]] == [[0.5] * 4] * 3


def test_nispa_bwt_zero_and_stable_connections_unchanged(mlp_runs):
    m, run_dir = mlp_runs["nispa"]
    assert columns_constant(m["acc_matrix"]) and m["bwt"] == 0.0, m["acc_matrix"]
    sd = [load_checkpoint(run_dir / "checkpoints" / f"task_{t}.ckpt")["state_dict"] for t in range(3)]
    for t in range(2):
        for l in range(2):
            st = sd[t][f"stable_{l}"]
            assert st.any()
            for later in range(t + 1, 3):
                for k in (f"backbone.fcs.{l}.weight", f"backbone.fcs.{l}.bias", f"conn_{l}"):
                    assert torch.equal(sd[later][k][st], sd[t][k][st]), (t, later, k)
    assert all(abs(d - 0.1) < 1e-3 for r in m["algorithm_report"] for d in r["density"])


def test_adahat_keeps_capacity_above_hats_rule(mlp_runs):
    m, _ = mlp_runs["adahat"]
    reps = m["algorithm_report"]
    assert reps[0]["network_capacity"] == reps[0]["hat_network_capacity"] == 1.0
    assert all(r["network_capacity"] > r["hat_network_capacity"] for r in reps[1:]), reps
    assert min(m["acc_matrix"][t][t] for t in range(3)) > 0.4


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_cifar10(root)
    return root


@pytest.mark.parametrize("name,experiment,extra", [
    # HAT itself, at these settings: [[0.525], [0.525, 0.5]] with lr 0.05 (the sgd default), [[0.8], [0.8, 0.5]] with lr 0.01
    ("adahat", "scifar10_hat", ["model/algorithm=adahat", "model.optimizer.lr=0.01", "trainer.max_epochs=10"]),
    ("wsn", "scifar10_finetuning", ["model/algorithm=wsn", *WSN_ADAM]),
    ("nispa", "scifar10_finetuning", ["model/algorithm=nispa", *NISPA_FAST])], ids=["adahat", "wsn", "nispa"])
def test_on_the_hat_papers_cnn(cifar_root, tmp_path, name, experiment, extra):
    m = run_experiment(compose_config(experiment, ["model.backbone.fc_dims=[64,64]", f"paths.data_dir={cifar_root}", "data.verify_checksums=false",
                                                   "data.num_tasks=2", "data.batch_size=16", "trainer.max_epochs=4", "trainer.enable_progress_bar=false",
                                                   "measure_fwt=false", f"paths.output_dir={tmp_path}", *extra]))
    assert m["algorithm"] == {"adahat": "AdaHAT", "wsn": "WSN", "nispa": "NISPA"}[name]
    learned = range(1) if name == "adahat" else range(2)  # HAT's second task on this CNN stays at chance, HAT's as AdaHAT's
    assert min(m["acc_matrix"][t][t] for t in learned) > 0.6, m["acc_matrix"]  # colour-coded classes, two per task: chance 0.5
    if name != "adahat": assert columns_constant(m["acc_matrix"]) and m["bwt"] == 0.0, m["acc_matrix"]
    else: assert 0 < m["algorithm_report"][1]["hat_network_capacity"] < m["algorithm_report"][1]["network_capacity"] < 1


@pytest.mark.parametrize("override, message", [
    ("model.algorithm.adjustment_intensity=-1", "AdaHAT's adjustment_intensity must be a number >= 0.0, got -1"),
    ("model.algorithm.density=0", "WSN's density must be a number > 0.0, got 0"),
    ("model.algorithm.k=1", "NISPA's k=1 with min_fraction=0.05 leaves no phase"),
])
def test_bad_settings_stop_before_training(tmp_path, no_data_root, override, message):
    algo = override.split(".")[2].split("=")[0]
    name = {"adjustment_intensity": "adahat", "density": "wsn", "k": "nispa"}[algo]
    cfg = compose_config("pmnist_finetuning", [f"model/algorithm={name}", override, f"paths.output_dir={tmp_path / 'out'}", f"paths.data_dir={no_data_root}"])
    with pytest.raises(ConfigError, match=message): run_experiment(cfg)
    assert not (tmp_path / "out").exists()
