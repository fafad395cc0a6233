"""The arena's report can be trusted: runs that differ in anything but the seed are separate rows, the spread is the sample std with n,
results edited or damaged after a run finished are listed as broken (and the report still written), `arena.name` is one folder name,
and two arenas never share a directory at once. Hand-made runs where no training is needed; one tiny real arena (2 runs of 2 batches per task)."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clarena.arena import arena_job, collect, lock_arena, plot_arena, run_identity, unlock_arena, write_report
from clarena.loop import results_sha256

ENV = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
ARENA = [sys.executable, "-c", "from clarena.arena import main; main()"]
TINY = ["model/algorithm=finetuning", "data=split_mnist", "data.num_tasks=2", "trainer.limit_train_batches=2", "measure_fwt=false",
        "trainer.enable_progress_bar=false", "~hydra.callbacks.arena_report", "hydra/launcher=basic"]


def arena(tmp_path, *args):
    "clarena-arena in `tmp_path`, on the bundled MNIST sample (an empty data root), its logs under `tmp_path/logs`."
    return subprocess.run([*ARENA, *TINY, f"paths.data_dir={tmp_path / 'none'}", f"paths.log_dir={tmp_path / 'logs'}", *args],
                          cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)


def fake_run(arena_dir, identity, seed, lr, acc, algorithm="Finetuning", **extra):
    "A finished run as the loop writes it (with its results hash), without training: final average accuracy `acc`, learning rate `lr`."
    config = dict(seed=seed, experiment_name="e", data=dict(_target_="clarena.data.split.SplitDataModule", dataset="mnist", scenario="TIL",
                                                            num_tasks=2, seed=seed),
                  model=dict(algorithm=dict(_target_=f"clarena.algorithms.{algorithm}"), head=dict(init_seed=seed), optimizer=dict(lr=lr)))
    m = dict(algorithm=algorithm, experiment="e", seed=seed, scenario="TIL", num_tasks=2, data_source="mnist-bundled-10k", data_is_sample=True,
             acc_matrix=[[acc], [acc, acc]], avg_acc=[acc, acc], final_avg_acc=acc, bwt=0.0, fwt=None, forgetting=0.0, total_wall_s=1.0,
             peak_host_memory_mb=100.0, config=config) | extra
    d = Path(arena_dir) / "runs" / identity
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(json.dumps(config))  # written when the run starts (YAML: JSON is YAML)
    (d / "metrics.json").write_text(json.dumps(dict(m, results_sha256=results_sha256(m)), indent=1))
    return d


def table_rows(arena_dir) -> list[str]:
    return [l for l in (Path(arena_dir) / "report.md").read_text().splitlines() if l.startswith("| Split")]


def test_hyperparameters_are_rows_not_seeds(tmp_path):
    "The issue's case by hand: two learning rates, one seed each, are two rows labelled by their learning rate, each n=1 (no std)."
    fake_run(tmp_path, "a", 0, 0.05, 0.5)
    fake_run(tmp_path, "b", 0, 0.001, 0.25)
    groups = write_report(tmp_path)["groups"]
    assert [(g["setting"], g["finished"]) for g in groups] == [("model.optimizer.lr=0.001", 1), ("model.optimizer.lr=0.05", 1)]
    rows = table_rows(tmp_path)
    assert len(rows) == 2 and "Finetuning [model.optimizer.lr=0.05] | 1 | 0.5000 |" in rows[1] and "±" not in "".join(rows), rows


def test_seeds_of_one_setting_are_one_row_with_the_sample_std(tmp_path):
    "Three seeds (0.5, 0.25, 0.75): one row, mean 0.5, sample std 0.25 (ddof=1; np.std's ddof=0 gives 0.2041), n=3, in every report file and the figure."
    for seed, acc in enumerate((0.5, 0.25, 0.75)): fake_run(tmp_path, f"s{seed}", seed, 0.05, acc)
    fake_run(tmp_path, "other", 0, 0.05, 0.9, algorithm="HAT")  # another algorithm, one run: its value alone
    rep = write_report(tmp_path)
    g = rep["groups"][0]
    assert (g["finished"], g["setting"]) == (3, "")  # data.seed and the head's init_seed follow the seed: not a setting
    assert g["final_avg_acc"].std == pytest.approx(0.25) and g["final_avg_acc"].n == 3
    rows = table_rows(tmp_path)
    assert "| Finetuning | 3 | 0.5000 ± 0.2500 |" in rows[0] and "| HAT | 1 | 0.9000 | 0.0000 |" in rows[1], rows
    assert "sample standard deviation (ddof=1)" in (tmp_path / "report.md").read_text()
    import csv
    table = list(csv.DictReader((tmp_path / "report.csv").open()))
    assert [(r["final_avg_acc_mean"], r["final_avg_acc_std"], r["final_avg_acc_n"]) for r in table] == [("0.5", "0.25", "3"), ("0.9", "", "1")]
    html = (tmp_path / "report.html").read_text()
    assert "0.5000 ± 0.2500" in html and "0.9000 ± " not in html
    ax = plot_arena(rep["rows"])["arena_avg_acc.png"].axes[0]
    bands = [c.get_paths()[0].vertices[:, 1] for c in ax.collections]
    assert len(bands) == 1 and bands[0].max() == pytest.approx(0.75)  # mean + sample std; the one-run curve has no band


def test_edited_truncated_and_unhashed_results_are_broken_and_the_report_is_written(tmp_path):
    good = fake_run(tmp_path, "good", 0, 0.05, 0.5)
    edited = fake_run(tmp_path, "edited", 1, 0.05, 0.25)
    m = json.loads((edited / "metrics.json").read_text()); m["final_avg_acc"] = 0.99
    (edited / "metrics.json").write_text(json.dumps(m))
    cut = fake_run(tmp_path, "truncated", 2, 0.05, 0.25)
    (cut / "metrics.json").write_text((cut / "metrics.json").read_text()[:200])
    old = fake_run(tmp_path, "unhashed", 3, 0.05, 0.25)
    m = json.loads((old / "metrics.json").read_text()); del m["results_sha256"]
    (old / "metrics.json").write_text(json.dumps(m))
    rep = write_report(tmp_path)
    status = {r["identity"]: (r["status"], r.get("error", "")) for r in rep["rows"]}
    assert status["good"] == ("finished", "")
    assert status["edited"][0] == "broken" and "changed after the run finished" in status["edited"][1]
    assert status["truncated"][0] == "broken" and "cannot be read" in status["truncated"][1] and "truncated" in status["truncated"][1]
    assert status["unhashed"][0] == "broken" and "no results hash" in status["unhashed"][1]
    [g] = rep["groups"]
    assert (g["finished"], g["broken"], g["final_avg_acc"].mean) == (1, 3, 0.5)  # the edited 0.99 is not in the mean
    md = (tmp_path / "report.md").read_text()
    assert "| 1 (+3 broken) | 0.5000 |" in md and "Broken runs" in md
    assert "truncated: Finetuning on Split MNIST (TIL, 2 tasks), seed 2: its metrics.json cannot be read" in md, md
    assert "Broken runs" in (tmp_path / "report.html").read_text()


def test_a_broken_finished_run_fails_its_job_untouched(tmp_path):
    "Run again, an arena job whose finished run was edited neither skips with the edited numbers nor overwrites them: it fails, saying why."
    from clarena.train import compose_config
    from omegaconf import OmegaConf
    cfg = compose_config("smnist_til_finetuning", ["data.num_tasks=2", f"paths.data_dir={tmp_path / 'none'}"])
    OmegaConf.update(cfg, "arena", dict(name=tmp_path.name, dir=str(tmp_path)), force_add=True)
    run = fake_run(tmp_path, run_identity(cfg), 0, 0.05, 0.5)
    text = (run / "metrics.json").read_text().replace('"final_avg_acc": 0.5', '"final_avg_acc": 0.99')
    (run / "metrics.json").write_text(text)
    assert arena_job(cfg) is None
    assert (run / "metrics.json").read_text() == text and not (run / "failed.json").exists()


@pytest.mark.parametrize("name", ["../../../x", "''", "a/b", ".."])
def test_arena_name_is_one_folder_name(tmp_path, name):
    r = arena(tmp_path, f"arena.name={name}", "seed=0")
    assert r.returncode == 2, r.stderr[-3000:]
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "arena.name must be a plain name" in r.stderr, r.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == [] and not (tmp_path.parent / "x").exists()  # nothing written, anywhere


def hold_lock(arena_dir):
    "Another process holding the arena's lock (as a running arena does)."
    p = subprocess.Popen([sys.executable, "-c", f"import time; from clarena.arena import lock_arena; f = lock_arena({str(arena_dir)!r}); "
                          "print('held', flush=True); time.sleep(600)"], stdout=subprocess.PIPE, text=True, env=ENV)
    assert p.stdout.readline().strip() == "held"
    return p


def test_second_arena_in_one_directory_is_refused_naming_the_first(tmp_path):
    d = tmp_path / "logs" / "arena" / "t"
    holder = hold_lock(d)
    try:
        r = arena(tmp_path, "arena.name=t", "seed=0")
        assert r.returncode == 2, r.stderr[-3000:]
        assert r.stderr.strip().splitlines() == [r.stderr.strip()], r.stderr[-3000:]
        assert f"is in use by process {holder.pid} on " in r.stderr and "choose another arena.name" in r.stderr, r.stderr
        assert sorted(p.name for p in d.iterdir()) == ["arena.lock"]  # no job ran: no runs/, no sweep folder
        with pytest.raises(Exception, match=f"in use by process {holder.pid}"): lock_arena(d)
    finally:
        holder.send_signal(signal.SIGKILL); holder.wait()
    assert f"process {holder.pid}" in (d / "arena.lock").read_text()  # a stale lock: its process is dead
    lock = lock_arena(d)  # taken over
    assert f"process {os.getpid()}" in (d / "arena.lock").read_text()
    unlock_arena(lock)


def test_real_arena_two_learning_rates_after_a_stale_lock(tmp_path):
    "The issue's command: 'model.optimizer.lr=0.05,0.001' with one seed, in a directory whose lock holder was killed: two rows, n=1 each."
    d = tmp_path / "logs" / "arena" / "t"
    holder = hold_lock(d); holder.send_signal(signal.SIGKILL); holder.wait()
    r = arena(tmp_path, "arena.name=t", "seed=0", "model.optimizer.lr=0.05,0.001")
    assert r.returncode == 0, r.stderr[-3000:]
    write_report(d)  # the arena_report callback is left out (it executes the report notebook too)
    rows = table_rows(d)
    assert len(rows) == 2 and "[model.optimizer.lr=0.001] | 1 |" in rows[0] and "[model.optimizer.lr=0.05] | 1 |" in rows[1], rows
    assert "±" not in "".join(rows)
    assert all(r["status"] == "finished" for r in collect(d)) and len(collect(d)) == 2  # the hashes the loop recorded check out
    assert (d / "arena.lock").read_text() == ""  # released when the sweep ended
