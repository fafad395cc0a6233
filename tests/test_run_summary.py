"""A plain `clarena-train` run (not only an arena's) writes its page, `summary.html`, into its run directory."""
import json
import os
import subprocess
import sys

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}


def test_clarena_train_writes_summary_html(tmp_path, no_data_root):
    r = subprocess.run([sys.executable, "-m", "clarena.train", "data.num_tasks=2", "trainer.limit_train_batches=3",
                        "trainer.enable_progress_bar=false", "measure_fwt=false", f"paths.data_dir={no_data_root}"],
                       cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = (tmp_path / "logs" / "pmnist_finetuning" / "runs").iterdir()
    m = json.loads((run / "metrics.json").read_text())
    page = (run / "summary.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and f"{m['final_avg_acc']:.4f}" in page and "Permuted MNIST (TIL, 2 tasks)" in page
    assert page.count("data:image/png;base64,") == len(list(run.glob("*.png"))) >= 3  # every figure the run wrote, embedded
