"""No code from a file, no foreign state (issue 22): a checkpoint's or a run's config builds only registered classes; every checkpoint
is bound to its run (config, seed, data and tasks, config.yaml); a user's own algorithm runs, resumes and is evaluated from the
command line through a plugin module recorded with the run."""
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import yaml

from clarena.checkpoints import load_checkpoint, write_checkpoint
from clarena.core import ConfigError, register
from clarena.loop import run_experiment
from clarena.train import compose_config

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
QUICK = ["data.num_tasks=2", "trainer.limit_train_batches=5", "trainer.enable_progress_bar=false", "measure_fwt=false"]


def cli(module, args, cwd):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)


def one_line(r, code, *words):
    "The process ended with `code` and one `clarena:` line on stderr holding `words` (no traceback)."
    lines = [l for l in r.stderr.splitlines() if l.startswith("clarena:")]
    assert r.returncode == code and len(lines) == 1 and all(w in lines[0] for w in words) and "Traceback" not in r.stderr, \
        (r.returncode, r.stderr[-3000:])


def train(d: Path, *extra) -> Path:
    "A 2-task Permuted MNIST run (the bundled sample) in `d`, in this process."
    run_experiment(compose_config(None, [*QUICK, f"paths.output_dir={d}", f"paths.data_dir={d.parent / 'none'}", *extra]))
    return d


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    "Two finished runs that differ only in their seed."
    d = tmp_path_factory.mktemp("runs")
    return {seed: train(d / f"seed{seed}", f"seed={seed}") for seed in (0, 1)}


def unfinished(run: Path, dest: Path, keep_tasks: int = 1) -> Path:
    "A copy of `run` as if stopped after `keep_tasks` tasks (no metrics.json, the later task checkpoints gone)."
    shutil.copytree(run, dest)
    (dest / "metrics.json").unlink()
    for p in (dest / "checkpoints").glob("task_*.ckpt"):
        if int(p.stem.split("_")[1]) >= keep_tasks: p.unlink()
    return dest


class Evil:
    "A pickle that runs a shell command when it is loaded with weights_only=False."
    def __init__(self, marker): self.marker = marker
    def __reduce__(self): return (os.system, (f"touch {self.marker}",))


def evil_nodes(tmp: Path) -> dict:
    "Configs that write a file, truncate one and run a command, if anything builds them; and the files that show it."
    victim = tmp / "victim.txt"; victim.write_text("precious")
    evil = tmp / "evil.pkl"; evil.write_bytes(pickle.dumps(Evil(tmp / "ran")))
    nodes = {"write_text": {"_target_": "pathlib.Path.write_text", "_args_": [{"_target_": "pathlib.Path", "_args_": [str(tmp / "pwned")]}, "x"]},
             "open": {"_target_": "builtins.open", "file": str(victim), "mode": "w"},
             "torch_load": {"_target_": "torch.load", "f": str(evil), "weights_only": False}}
    return nodes, lambda: not (tmp / "pwned").exists() and victim.read_text() == "precious" and not (tmp / "ran").exists()


TARGETS = {"write_text": "pathlib.Path.write_text", "open": "builtins.open", "torch_load": "torch.load"}
WHERE = {"write_text": ("model", "backbone"), "open": ("model", "optimizer"), "torch_load": ("data",)}


def put(config: dict, where: tuple, node: dict):
    for k in where[:-1]: config = config[k]
    config[where[-1]] = node


@pytest.mark.parametrize("name", list(TARGETS))
def test_a_checkpoint_naming_code_is_refused_before_it_runs(runs, tmp_path, name):
    nodes, untouched = evil_nodes(tmp_path)
    ck = load_checkpoint(runs[0] / "checkpoints" / "task_1.ckpt")
    put(ck["config"], WHERE[name], nodes[name])
    write_checkpoint(tmp_path / "evil.ckpt", ck)  # the sha256 is recomputed by whoever edits the file
    r = cli("clarena.evaluate", [f"ckpt_path={tmp_path / 'evil.ckpt'}", f"hydra.run.dir={tmp_path / 'eval'}"], tmp_path)
    one_line(r, 2, f"_target_ '{TARGETS[name]}' is not a class clarena builds", "register")
    assert untouched() and not (tmp_path / "eval").exists()


@pytest.mark.parametrize("name", list(TARGETS))
def test_a_run_config_naming_code_is_refused_on_resume(runs, tmp_path, name):
    nodes, untouched = evil_nodes(tmp_path)
    run = unfinished(runs[0], tmp_path / "run")
    config = yaml.safe_load((run / "config.yaml").read_text())
    put(config, WHERE[name], nodes[name])
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    r = cli("clarena.train", [f"resume={run}"], tmp_path)
    one_line(r, 2, f"_target_ '{TARGETS[name]}' is not a class clarena builds")
    assert untouched() and sorted(p.relative_to(run) for p in run.rglob("*") if ".hydra" not in p.parts and p.suffix != ".log") == \
        [p for p in before if ".hydra" not in p.parts]  # nothing written into the run (but Hydra's record of the command)


def test_registry_in_process():
    "What the command line refuses is refused by the functions themselves, before the class is looked up."
    from clarena.loop import build, make
    with pytest.raises(ConfigError, match="_target_ 'subprocess.Popen' is not a class clarena builds"):
        make({"_target_": "subprocess.Popen", "args": ["true"]}, "callback")
    cfg = compose_config(None, ["+callbacks.x._target_=os.system", "+callbacks.x.command=true"])
    with pytest.raises(ConfigError, match="callbacks.x: _target_ 'os.system'"): build(cfg)


# ---- a checkpoint belongs to its run ----

def test_another_seeds_task_checkpoint_is_refused(runs, tmp_path):
    run = unfinished(runs[0], tmp_path / "run")
    shutil.copy(runs[1] / "checkpoints" / "task_0.ckpt", run / "checkpoints" / "task_0.ckpt")
    r = cli("clarena.train", [f"resume={run}"], tmp_path)
    one_line(r, 2, "task_0.ckpt is from a run with seed 1, this run has seed 0")
    assert not (run / "metrics.json").exists() and not (run / "checkpoints" / "task_1.ckpt").exists()
    shutil.copy(runs[1] / "checkpoints" / "task_1.ckpt", run / "checkpoints" / "task_1.ckpt")  # eval beside the run's config.yaml
    r = cli("clarena.evaluate", [f"ckpt_path={run / 'checkpoints' / 'task_1.ckpt'}", f"hydra.run.dir={tmp_path / 'eval'}"], tmp_path)
    one_line(r, 2, "task_1.ckpt is from a run with seed 1, this run has seed 0")
    assert not (tmp_path / "eval").exists()


def test_an_edited_config_yaml_is_refused(runs, tmp_path):
    run = unfinished(runs[0], tmp_path / "run", keep_tasks=2)
    y = run / "config.yaml"
    assert "lr: 0.05\n" in y.read_text()
    y.write_text(y.read_text().replace("lr: 0.05\n", "lr: 0.5\n"))
    r = cli("clarena.train", [f"resume={run}"], tmp_path)
    one_line(r, 2, "config.yaml is not the one its checkpoint task_1.ckpt recorded", "model.optimizer.lr: 0.05 in the checkpoint, 0.5 now")
    assert not (run / "metrics.json").exists()
    r = cli("clarena.evaluate", [f"ckpt_path={run / 'checkpoints' / 'task_1.ckpt'}", f"hydra.run.dir={tmp_path / 'eval'}"], tmp_path)
    one_line(r, 2, "config.yaml is not the one its checkpoint task_1.ckpt recorded")


@register
class KillAt(L.Callback):
    "Stop the run dead before Lightning batch `batch` of task `task_id` (as SIGKILL would, after its step checkpoints)."
    def __init__(self, task_id: int, batch: int): self.task_id, self.batch = task_id, batch
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if pl_module.task_id == self.task_id and batch_idx == self.batch: raise KeyError(f"killed in task {self.task_id}")


def test_another_seeds_step_checkpoint_is_refused(tmp_path):
    kill = ["speed.steps_per_call=1", "checkpoint.every_n_steps=2", "+callbacks.kill._target_=test_security.KillAt",
            "+callbacks.kill.task_id=1", "+callbacks.kill.batch=3"]
    for seed in (0, 1):
        with pytest.raises(KeyError, match="killed in task 1"): train(tmp_path / f"seed{seed}", f"seed={seed}", *kill)
        assert load_checkpoint(tmp_path / f"seed{seed}" / "checkpoints" / "step.ckpt")["step"]["task_id"] == 1
    run = tmp_path / "seed0"
    shutil.copy(tmp_path / "seed1" / "checkpoints" / "step.ckpt", run / "checkpoints" / "step.ckpt")
    cfg = compose_config(None, [*QUICK, f"paths.output_dir={run}", f"paths.data_dir={tmp_path / 'none'}", "seed=0", *kill, f"resume={run}"])
    with pytest.raises(ConfigError, match="step.ckpt is from a run with seed 1, this run has seed 0"): run_experiment(cfg)
    assert not (run / "metrics.json").exists()


# ---- a user's algorithm from the command line ----

PLUGIN = '''"A user's algorithm, outside clarena: an L2 pull of the backbone towards its weights after the previous task."
from clarena.algorithms.base import CLAlgorithm
from clarena.core import register

@register
class L2Anchor(CLAlgorithm):
    def __init__(self, backbone, head, optimizer, scheduler=None, strength: float = 1.0):
        super().__init__(backbone, head, optimizer, scheduler)
        self.strength, self.anchor = strength, None
    def on_task_end(self, task_id, data): self.anchor = [p.detach().clone() for p in self.backbone.parameters()]
    def extra_loss(self, batch, logits):
        if self.anchor is None: return 0.0
        return {"anchor": self.strength / 2 * sum(((p - a) ** 2).sum() for p, a in zip(self.backbone.parameters(), self.anchor))}
    def state(self): return {"anchor": self.anchor}
    def load_state(self, state): self.anchor = state["anchor"]
'''


def user_project(d: Path) -> Path:
    "A folder holding a plugin module and its config (conf/model/algorithm/l2anchor.yaml)."
    (d / "conf" / "model" / "algorithm").mkdir(parents=True)
    (d / "my_l2anchor.py").write_text(PLUGIN)
    (d / "conf" / "model" / "algorithm" / "l2anchor.yaml").write_text("_target_: my_l2anchor.L2Anchor\nstrength: 5.0\n")
    return d


@pytest.mark.slow  # five command-line runs; test_plugin_modules_are_checked_before_they_are_imported is its fast version
def test_own_algorithm_trains_resumes_and_evaluates_from_the_command_line(tmp_path):
    proj = user_project(tmp_path / "proj")
    r = cli("clarena.train", ["hydra.searchpath=[file://conf]", "model/algorithm=l2anchor", "plugins=[my_l2anchor]", *QUICK,
                              "paths.output_dir=run", "paths.data_dir=none"], proj)
    assert r.returncode == 0, r.stderr[-3000:]
    run = proj / "run"
    whole = json.loads((run / "metrics.json").read_text())
    assert whole["algorithm"] == "L2Anchor" and whole["config"]["plugins"] == ["my_l2anchor"]
    assert whole["config"]["model"]["algorithm"] == {"_target_": "my_l2anchor.L2Anchor", "strength": 5.0}
    (run / "metrics.json").unlink(); (run / "checkpoints" / "task_1.ckpt").unlink()  # stopped after task 0
    r = cli("clarena.train", [f"resume={run}"], proj)  # the module is found by the name the run recorded
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((run / "metrics.json").read_text())["acc_matrix"] == whole["acc_matrix"]
    r = cli("clarena.evaluate", ["ckpt_path=run/checkpoints/task_1.ckpt", "hydra.run.dir=eval"], proj)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((proj / "eval" / "eval.json").read_text())["acc"] == whole["acc_matrix"][1]
    # from a folder where the module is not on the path: one line, exit status 2, nothing written
    (tmp_path / "elsewhere").mkdir()
    r = cli("clarena.evaluate", [f"ckpt_path={run / 'checkpoints' / 'task_1.ckpt'}", "hydra.run.dir=eval"], tmp_path / "elsewhere")
    one_line(r, 2, "plugin module 'my_l2anchor'", "is not on the Python path")
    (run / "metrics.json").unlink()
    r = cli("clarena.train", [f"resume={run}"], tmp_path / "elsewhere")
    one_line(r, 2, "plugin module 'my_l2anchor'", "is not on the Python path")
    assert not (run / "metrics.json").exists() and not list((tmp_path / "elsewhere").iterdir())


def test_plugin_modules_are_checked_before_they_are_imported(tmp_path, monkeypatch):
    proj = user_project(tmp_path)
    (proj / "not_a_plugin.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w')\n")
    monkeypatch.syspath_prepend(str(proj))
    with pytest.raises(ConfigError, match="module 'not_a_plugin' .* is not a clarena plugin"):
        run_experiment(compose_config(None, [*QUICK, "plugins=[not_a_plugin]", f"paths.output_dir={tmp_path / 'run'}"]))
    assert not (tmp_path / "ran").exists() and not (tmp_path / "run").exists()
    cfg = compose_config(None, [f"hydra.searchpath=[file://{proj / 'conf'}]", "model/algorithm=l2anchor", *QUICK,
                                f"paths.output_dir={tmp_path / 'run'}", f"paths.data_dir={tmp_path / 'none'}"])
    with pytest.raises(ConfigError, match="_target_ 'my_l2anchor.L2Anchor' is not a class clarena builds"): run_experiment(cfg)
    cfg.plugins = ["my_l2anchor"]
    assert run_experiment(cfg)["algorithm"] == "L2Anchor"


def test_entry_point_plugins(tmp_path, monkeypatch):
    "An installed package's `clarena.plugins` entry point registers its class: no plugins= needed."
    import clarena.core as core
    site = tmp_path / "site"; site.mkdir()
    (site / "ep_l2anchor.py").write_text(PLUGIN.replace("from clarena.core import register\n", "").replace("@register\n", ""))
    info = site / "ep_l2anchor-0.1.dist-info"; info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-l2anchor\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[clarena.plugins]\nl2anchor = ep_l2anchor:L2Anchor\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(core, "_entry_points_loaded", False)
    assert not core.registered("ep_l2anchor.L2Anchor")
    assert core.check_target("ep_l2anchor.L2Anchor") == "ep_l2anchor.L2Anchor"


@pytest.mark.parametrize("field, value, words", [("y", 17, "label 17 for a row of task"), ("task_id", 5, "rows of task")])
def test_an_edited_replay_buffer_is_refused_on_resume(tmp_path, field, value, words):
    "A step of ER's buffer rewritten with a label (or a task) the run never had, and the file's sha256 recomputed: one line, exit 2."
    run = train(tmp_path / "er", "model/algorithm=er", "data.num_tasks=3")
    stopped = unfinished(run, tmp_path / "stopped", keep_tasks=2)
    path = stopped / "checkpoints" / "task_1.ckpt"
    ck = load_checkpoint(path)
    ck["state_dict"]["_extra_state"]["state"]["buffer"][field][0] = value  # Permuted MNIST TIL: 10 classes a task, 2 tasks so far
    write_checkpoint(path, ck)
    r = cli("clarena.train", [f"resume={stopped}"], tmp_path)
    one_line(r, 2, words, "the checkpoint was edited")
    assert not (stopped / "metrics.json").exists()


@pytest.mark.parametrize("row", ["+callbacks.x._target_=os.system", "plugins=[os]", "paths.log_dir=/", "model.optimizer.lr=${oc.env:HOME}"])
def test_a_selection_file_reaching_beyond_hyperparameters_is_refused(tmp_path, row):
    "`selected=FILE` is an input from elsewhere: a row that is not one of the preset's hyperparameters with a plain value is refused in one line, exit 2, before any run."
    f = tmp_path / "selected.yaml"
    f.write_text(yaml.safe_dump({"selected": {"ER": {"seq-mnist": {200: ["model.optimizer.lr=0.1", row]}}}}))
    arena = tmp_path / "arena"
    r = subprocess.run([sys.executable, "-c", "import sys; from clarena.league import main; sys.argv[0] = 'clarena-arena'; main()",
                        "preset=der_paper", f"selected={f}", f"arena.dir={arena}", "seeds=0", "only_algorithms=ER", "n_jobs=1"],
                       cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    one_line(r, 2, "selected=", repr(row), "ER / seq-mnist / 200")
    assert not arena.exists()
