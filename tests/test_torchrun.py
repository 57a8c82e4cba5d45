"""`torchrun` (the several-machines path of the README) on one machine: two ranks rendezvous
through torchrun's c10d store, train, stop, resume, and end on the parameters of one process."""

import json
import os
import subprocess
import sys

from _dist_runs import TINY, assert_same_run, cfg, single
from maml_ext.train import loop

TEARDOWN_ABORT = "terminate called without an active exception"


def _torchrun(out, iterations: int, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
               "-m", "maml_ext.cli", "train", "sinusoid", "--out", str(out), "--quiet", "--timeout", "60",
               "--no-eval", *[f"--set={s}" for s in (*TINY, f"train.iterations={iterations}")], *extra]
    # Outside the source tree, so that the ranks import the installed package (as users run it).
    env = {**os.environ, "PYTHONSAFEPATH": "1"}
    done = subprocess.run(command, cwd=out.parent, env=env, capture_output=True, text=True, timeout=240)
    if done.returncode != 0 and TEARDOWN_ABORT in done.stderr and "checkpoint: " in done.stdout:
        # Seen in CI under load (not locally in 10 runs): a rank aborted in torch's C++ teardown
        # after training had finished and rank 0 had written the checkpoint. The run is complete
        # (the caller's checks read that checkpoint); rerunning would not be the same test, as a
        # resumed run that has finished is refused. Named, so that it stays visible.
        print(f"torchrun: a rank aborted at exit after the checkpoint was written ({TEARDOWN_ABORT!r})")
        return done
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_torchrun_two_ranks_with_resume_equal_one_process(tmp_path):
    out = tmp_path / "torchrun"
    first = _torchrun(out, 2)
    assert first.stdout.count("checkpoint: ") == 1  # rank 0 alone reports (and writes)
    _torchrun(out, 4, "--resume")
    assert_same_run(out, single(tmp_path, "one", cfg("train.iterations=4")))
    lines = [json.loads(line) for line in (out / loop.METRICS).read_text().splitlines()]
    assert [r["iteration"] for r in lines] == [1, 2, 3, 4]
