"""Ctrl-C during ``maml-ext train`` (progress bar on, one process or ``--nproc 2``): one line
naming the kept checkpoint, exit status 130 (128 + SIGINT), no traceback from any process, and
``--resume`` continues from that checkpoint."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch


@pytest.mark.parametrize("nproc", [1, 2])
def test_ctrl_c_names_the_kept_checkpoint_and_resume_continues(tmp_path, nproc):
    run = tmp_path / "run"
    cli = [sys.executable, "-m", "maml_ext.cli", "train", "sinusoid", "--out", str(run)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONSAFEPATH": "1"}
    sets = ["--set", "train.checkpoint_every=300", "--set", "train.log_every=100", "--set", "train.threads=1"]
    # A session of its own: Ctrl-C in a terminal signals the whole foreground process group
    # (launcher and ranks), as killpg does here.
    with subprocess.Popen([*cli, *sets, "--nproc", str(nproc)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, start_new_session=True,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)) as proc:
        deadline = time.monotonic() + 120
        while not (run / "checkpoint.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(0.2)  # into the next iterations: the message must name the checkpoint on disk
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGINT, err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    kept = torch.load(run / "checkpoint.pt", weights_only=True)["iteration"]
    assert last.startswith("maml-ext: interrupted at iteration "), last
    assert last.endswith(f"checkpoint.pt keeps iteration {kept}; continue with --resume"), last
    resumed = subprocess.run([*cli, "--resume", "--no-eval", "--quiet", "--set", f"train.iterations={kept + 20}"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert torch.load(run / "checkpoint.pt", weights_only=True)["iteration"] == kept + 20


def test_ctrl_c_right_after_a_checkpoint_is_renamed_into_place_names_that_checkpoint(tmp_path, monkeypatch, capsys):
    """The race the test above can hit: Ctrl-C after the new checkpoint replaced the old one but
    before the driver noted it named the previous iteration."""
    from maml_ext import cli
    from maml_ext.train import checkpoint

    real_save = checkpoint.save

    def save_then_ctrl_c(state, path):
        real_save(state, path)
        if state["iteration"] == 4:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(checkpoint, "save", save_then_ctrl_c)
    run = tmp_path / "run"
    sets = ["model.hidden=[8]", "train.meta_batch=2", "train.log_every=1", "train.checkpoint_every=2",
            "train.iterations=8"]
    assert cli.main(["train", "sinusoid", "--out", str(run), "--quiet", "--no-eval",
                     *(a for s in sets for a in ("--set", s))]) == 128 + signal.SIGINT
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert torch.load(run / "checkpoint.pt", weights_only=True)["iteration"] == 4
    assert last.endswith("checkpoint.pt keeps iteration 4; continue with --resume"), last
