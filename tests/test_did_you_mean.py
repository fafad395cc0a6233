"""A misspelt option or key gets the nearest valid name in the one-line input error, exit status 2, before anything runs."""
import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize("override, hint", [("model/algorithm=ewcc", "did you mean 'ewc'?"),
                                            ("data.num_taks=3", "did you mean 'data.num_tasks'?")])
def test_typo_gets_did_you_mean_and_exit_2(tmp_path, override, hint):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    p = subprocess.run([sys.executable, "-m", "clarena.train", override, f"paths.log_dir={tmp_path}"], capture_output=True, text=True,
                       env=env, cwd=tmp_path, timeout=120)
    assert p.returncode == 2, p.stderr
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and hint in lines[0] and "+data" not in lines[0], p.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_no_hint_for_a_name_near_nothing():
    from clarena.train import did_you_mean
    from clarena.train import compose_config
    with pytest.raises(Exception) as e: compose_config("smnist_til_finetuning", ["data.zzzzzz=1"])
    assert did_you_mean(e.value) is None
