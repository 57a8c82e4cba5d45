"""Data-parallel meta-training: 2 gloo processes (file:// rendezvous, loopback only) against one."""

import json
import os
import signal
from pathlib import Path

import pytest
from torch import nn

from _dist_runs import TINY, assert_same_run, cfg, single
from maml_ext import cli, plugins
from maml_ext.tasks.sinusoid import Sinusoid
from maml_ext.train import config, distributed, loop

FUSED = ["train.iterations=4"]  # the built-in MLP: MAML through the fused mlp_maml op


def _bn_mlp(in_features, out_features, hidden):
    # No bias, and not the 1-input layer, right before BatchNorm: their exact meta-gradients would be
    # zero (BN removes shifts and per-channel scales) and Adam would amplify rounding noise.
    (h,) = hidden
    return nn.Sequential(nn.Linear(in_features, h), nn.Tanh(), nn.Linear(h, h, bias=False), nn.BatchNorm1d(h),
                         nn.ReLU(), nn.Linear(h, out_features))


def bn_cfg():
    """MAML++ on an MLP with BatchNorm: per-step running statistics (buffers) change every step."""
    plugins.register_model("bn_mlp", _bn_mlp, replace=True)
    model = {"name": "bn_mlp"}
    algorithm = {"name": "maml++", "lr": 0.01, "steps": 2}
    base = {"model": model, "task": {"name": "sinusoid"}, "algorithm": algorithm}
    return config.validate(config.apply_overrides(base, [*TINY, "train.iterations=3"]))


def test_task_chunk_is_refused_with_per_step_batchnorm(tmp_path):
    bad = bn_cfg()
    bad["train"]["task_chunk"] = 2
    with pytest.raises(config.ConfigError, match="task_chunk cannot be used with per-step BatchNorm"):
        loop.train(bad, tmp_path, progress=False)
    assert not (tmp_path / loop.CHECKPOINT).exists()


def _train_all(runs):
    bn_cfg()  # registers the BatchNorm model in this process too
    for c, out, resume in runs:
        loop.train(c, out, resume=resume, progress=False)


def test_two_ranks_equal_one_process_with_resume_and_bn_buffers(tmp_path):
    fused, bn = tmp_path / "fused2", tmp_path / "bn2"
    half = cfg(*FUSED, "train.iterations=2")
    runs = [(half, fused, False), (cfg(*FUSED), fused, True), (bn_cfg(), bn, False)]
    distributed.launch(2, _train_all, runs, timeout=30)

    assert_same_run(fused, single(tmp_path, "fused1", cfg(*FUSED)))
    assert_same_run(bn, single(tmp_path, "bn1", bn_cfg()))
    # Rank 0 alone wrote the metrics: one line per iteration, the resumed run continuing the first.
    for out, n in ((fused, 4), (bn, 3)):
        lines = [json.loads(line) for line in (out / loop.METRICS).read_text().splitlines()]
        assert [r["iteration"] for r in lines] == list(range(1, n + 1))
    ref = [json.loads(line)["loss"] for line in (tmp_path / "bn1" / loop.METRICS).read_text().splitlines()]
    got = [json.loads(line)["loss"] for line in (bn / loop.METRICS).read_text().splitlines()]
    assert got == pytest.approx(ref, rel=1e-5)  # the logged loss is the whole meta-batch's mean


def test_cli_nproc_trains_then_evaluates_once(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["train", "sinusoid", "--out", str(out), "--nproc", "2", "--quiet", "--timeout", "30"]
    assert cli.main(args + [f"--set={s}" for s in (*TINY, "train.iterations=2")]) == 0
    assert_same_run(out, single(tmp_path, "one", cfg("train.iterations=2")))
    assert (out / "eval.json").exists() and (out / "learning_curve.png").exists()
    assert capsys.readouterr().out.count("checkpoint: ") == 1


class _DyingSinusoid(Sinusoid):
    """Rank 1 is killed (SIGKILL, no cleanup) while drawing its third meta-batch."""

    calls = 0

    def sample(self, *args, **kwargs):
        type(self).calls += 1
        if os.environ["RANK"] == "1" and self.calls == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().sample(*args, **kwargs)


def _report_package(out):
    import maml_ext
    from maml_ext import ops

    rank = int(os.environ["RANK"])
    (out / f"rank{rank}.json").write_text(json.dumps([maml_ext.__file__, ops.extension_available()]))


def test_ranks_import_the_same_package_as_the_launcher(tmp_path, monkeypatch):
    """Launched from a source checkout (the working directory here), the ranks must still import the
    installed package with its compiled kernels, as the launching process does."""
    import maml_ext
    from maml_ext import ops

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    distributed.launch(2, _report_package, tmp_path, timeout=30)
    for rank in range(2):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == [maml_ext.__file__, ops.extension_available()]


def _train_dying(c, out):
    plugins.register_task("dying_sinusoid", lambda **_: _DyingSinusoid())
    loop.train(c, out, progress=False)


def test_a_killed_rank_ends_the_job_with_a_clear_error(tmp_path):
    c = cfg("train.iterations=50", "task.name=dying_sinusoid")
    with pytest.raises(distributed.DistributedError) as err:
        distributed.launch(2, _train_dying, c, tmp_path / "dying", timeout=20)
    # Rank 0 noticed by itself (its all-reduce failed when the peer's socket closed) and exited;
    # it was not merely stopped by the launcher after its grace period.
    assert str(err.value).startswith(
        "distributed training failed: rank 0 exited with code 2: rank 0: all_reduce at iteration 2 failed: "
        "another rank died or did not answer within 20 s (")
    assert str(err.value).endswith("; rank 1 was killed by SIGKILL")


def test_more_processes_than_tasks_is_a_config_error():
    learner = loop.build(cfg("train.iterations=1")).learner
    with pytest.raises(config.ConfigError, match=r"train.meta_batch \(3\) must be at least the number of processes \(4\)"):
        distributed.Shard(rank=0, world=4).prepare(learner, 3)
