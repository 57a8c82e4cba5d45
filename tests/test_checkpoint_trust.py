"""Checkpoints and the training loop under damage (issue 12, defects 2 and 6): a non-finite loss
or meta-gradient stops training with the last good checkpoint kept; a checksum catches flipped
bytes; well-formed but wrong contents are named; a partial metrics line and a left-over
temporary file do not block --resume; a crash mid-write leaves the previous checkpoint loadable."""

import json
import subprocess
import sys
import textwrap
import zipfile

import pytest
import torch

from maml_ext import cli, plugins
from maml_ext.tasks.sinusoid import Sinusoid
from maml_ext.train import checkpoint, config, driver, loop

TINY = ["model.hidden=[8]", "train.iterations=6", "train.meta_batch=2", "train.log_every=1", "train.checkpoint_every=2"]


def tiny(*extra):
    return config.load("sinusoid", [*TINY, *extra])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 6-iteration run (checkpoint at iteration 6) to copy and damage."""
    out = tmp_path_factory.mktemp("trained") / "run"
    loop.train(tiny(), out, progress=False)
    return out


def copy_run(trained, tmp_path, iterations=6):
    out = tmp_path / "run"
    out.mkdir()
    for name in ("checkpoint.pt", "metrics.jsonl", "config.json"):
        (out / name).write_bytes((trained / name).read_bytes())
    return out


# ----- defect 2: non-finite training ------------------------------------------------------------
class PoisonedSinusoid(Sinusoid):
    """Sinusoid tasks whose targets turn NaN from the ``poison_at``-th sampled batch on."""

    def __init__(self, poison_at: int = 5) -> None:
        super().__init__()
        self.poison_at, self.calls = poison_at, 0

    def sample(self, *args, **kwargs):
        batch = super().sample(*args, **kwargs)
        self.calls += 1
        if self.calls >= self.poison_at:
            batch.y_query[0, 0] = float("nan")
        return batch


@pytest.fixture
def poisoned():
    plugins.register_task("poisoned_sinusoid", PoisonedSinusoid)
    yield
    plugins.tasks.unregister("poisoned_sinusoid")


def test_non_finite_loss_stops_with_the_iteration_and_keeps_the_last_good_checkpoint(tmp_path, poisoned, capsys):
    out = tmp_path / "run"
    argv = ["train", "sinusoid", "--out", str(out), "--quiet", "--no-eval", "--set", "task.name=poisoned_sinusoid",
            *(a for item in TINY for a in ("--set", item))]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"maml-ext: error: iteration 5: the meta-loss is nan; training stopped, "
                   f"{out / loop.CHECKPOINT} keeps iteration 4 (try a smaller train.meta_lr or algorithm.lr, or "
                   "train.clip_grad)"]
    state = checkpoint.load(out / loop.CHECKPOINT)
    assert state["iteration"] == 4 and all(torch.isfinite(v).all() for v in state["learner"].values())
    # The stopped run resumes from iteration 4 (the rebuilt family's first batches are clean again).
    assert cli.main([*argv, "--resume"]) == 0
    assert checkpoint.load(out / loop.CHECKPOINT)["iteration"] == 6
    assert [json.loads(r)["iteration"] for r in (out / loop.METRICS).read_text().splitlines()] == [1, 2, 3, 4, 5, 6]


def test_non_finite_meta_gradient_is_named():
    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = torch.tensor([0.0, float("inf"), 1.0])
    with pytest.raises(driver.NonFinite, match=r"^the meta-gradient has non-finite entries$"):
        loop.check_finite(0.5, [p])
    p.grad = torch.ones(3)
    loop.check_finite(0.5, [p])  # finite: no error
    with pytest.raises(driver.NonFinite, match=r"^the meta-loss is inf$"):
        loop.check_finite(float("inf"), [p])


def test_non_finite_before_any_checkpoint(tmp_path, poisoned):
    with pytest.raises(driver.TrainingError, match=r"^iteration 1: the meta-loss is nan; training stopped, no checkpoint "
                                                   r"had been written yet \(try a smaller train.meta_lr"):
        loop.train(tiny("task.name=poisoned_sinusoid", "task.poison_at=1"), tmp_path / "run", progress=False)


@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
@pytest.mark.parametrize("key", ["train.meta_lr", "train.clip_grad", "eval.lr", "algorithm.lr", "model.scale"])
def test_non_finite_config_values_are_refused(key, value):
    with pytest.raises(config.ConfigError, match=rf"^{key} must be a finite number, got {value}$"):
        tiny(f"{key}={value}")


# ----- defect 6: checksum, validation, metrics, temporary files ----------------------------------------
def flip_tensor_byte(path):
    """Flip one byte inside the first tensor-data record of a torch zip checkpoint."""
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if "/data/" in i.filename and i.file_size >= 4)
    data = bytearray(path.read_bytes())
    # The local header's name and extra-field lengths (the extra field pads tensor data to 64 bytes).
    name_len, extra_len = (int.from_bytes(data[info.header_offset + i:info.header_offset + i + 2], "little")
                           for i in (26, 28))
    offset = info.header_offset + 30 + name_len + extra_len
    data[offset + 2] ^= 0x40
    path.write_bytes(bytes(data))


def test_flipped_tensor_bytes_are_detected(trained, tmp_path):
    out = copy_run(trained, tmp_path)
    flip_tensor_byte(out / loop.CHECKPOINT)
    torch.load(out / loop.CHECKPOINT, weights_only=True)  # torch alone loads the damaged file silently
    with pytest.raises(checkpoint.CheckpointError, match="is corrupt: its contents do not match the checksum"):
        checkpoint.load(out / loop.CHECKPOINT)
    with pytest.raises(checkpoint.CheckpointError, match="do not match the checksum"):
        loop.train(tiny("train.iterations=8"), out, resume=True, progress=False)


def rewrite(out, change):
    state = checkpoint.load(out / loop.CHECKPOINT)
    change(state)
    checkpoint.save(state, out / loop.CHECKPOINT)  # a valid checksum over wrong contents


def first_weight(state):
    return next(iter(state["learner"]))


WRONG = {
    "missing key": (lambda s: s.pop("rng"), r"is incomplete \(missing \['rng'\]\)"),
    "iteration a string": (lambda s: s.update(iteration="6"), r"iteration must be an integer >= 0, got '6'"),
    "negative iteration": (lambda s: s.update(iteration=-1), r"iteration must be an integer >= 0, got -1"),
    "learner a list": (lambda s: s.update(learner=[1, 2]), r"learner must be a state dict, got list"),
    "learner values not tensors": (lambda s: s["learner"].update({first_weight(s): 1.0}),
                                   r"learner must map parameter names to tensors"),
    "missing weight": (lambda s: s["learner"].pop(first_weight(s)),
                       r"learner does not fit this run's model: Missing key\(s\) in state_dict: \"model.0.weight\""),
    "wrong shape": (lambda s: s["learner"].update({first_weight(s): torch.zeros(3, 3)}),
                    r"learner does not fit this run's model: size mismatch for model.0.weight: .*torch.Size\(\[3, 3\]\)"),
    "config not a table": (lambda s: s.update(config=[1]), r"config must be a table, got list"),
    "optimizer not a dict": (lambda s: s.update(optimizer="adam"), r"optimizer must be a state dict, got str"),
    "optimizer state shape": (lambda s: s["optimizer"]["state"][0].update(exp_avg=torch.zeros(2)),
                              r"optimizer state 'exp_avg' has shape \(2,\), its parameter \(8, 1\)"),
    "rng tasks truncated": (lambda s: s["rng"].update(tasks=s["rng"]["tasks"][:10]),
                            r"rng.tasks must be a CPU generator state \(torch.uint8 \(5056,\)\), got torch.uint8 \(10,\)"),
    "rng torch missing": (lambda s: s["rng"].pop("torch"), r"rng.torch must be a CPU generator state"),
    "rng python bad": (lambda s: s["rng"].update(python=(3, (1, 2), None)), r"rng.python is not a Python random state"),
    "window bad": (lambda s: s.update(window="x"), r"window must be \[loss sum, count\], got 'x'"),
}


@pytest.mark.parametrize("case", list(WRONG))
def test_wrong_contents_are_named(case, trained, tmp_path):
    out = copy_run(trained, tmp_path)
    change, message = WRONG[case]
    rewrite(out, change)
    with pytest.raises(checkpoint.CheckpointError, match=message):
        loop.train(tiny("train.iterations=8"), out, resume=True, progress=False)


def test_wrong_contents_are_one_line_through_the_cli(trained, tmp_path, capsys):
    out = copy_run(trained, tmp_path)
    rewrite(out, WRONG["wrong shape"][0])
    assert cli.main(["train", "--resume", "--out", str(out), "--quiet", "--set", "train.iterations=8"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("maml-ext: error: checkpoint ") and "size mismatch" in err[0]
    assert cli.main(["eval", str(out)]) == 2
    assert len(capsys.readouterr().err.splitlines()) == 1


def test_partial_last_metrics_line_is_dropped_with_a_notice(tmp_path, capsys):
    out = tmp_path / "run"
    loop.train(tiny("train.iterations=4"), out, progress=False)
    with (out / loop.METRICS).open("a") as f:
        f.write('{"iteration": 5, "lo')  # killed mid-write
    loop.train(tiny(), out, resume=True, progress=False)
    assert "notice: dropped the partial last line of" in capsys.readouterr().err
    records = [json.loads(line) for line in (out / loop.METRICS).read_text().splitlines()]
    assert [r["iteration"] for r in records] == [1, 2, 3, 4, 5, 6]


def test_damaged_metrics_line_in_the_middle_is_an_error(tmp_path):
    out = tmp_path / "run"
    loop.train(tiny("train.iterations=4"), out, progress=False)
    lines = (out / loop.METRICS).read_text().splitlines()
    lines[1] = "garbage"
    (out / loop.METRICS).write_text("\n".join(lines) + "\n")
    with pytest.raises(checkpoint.CheckpointError, match=r"metrics.jsonl line 2 is not a metrics record: 'garbage'"):
        loop.train(tiny(), out, resume=True, progress=False)


def test_left_over_temporary_file_is_removed(tmp_path, capsys):
    out = tmp_path / "run"
    loop.train(tiny("train.iterations=4"), out, progress=False)
    tmp = checkpoint.temporary(out / loop.CHECKPOINT)
    tmp.write_bytes(b"half a checkpoint")
    loop.train(tiny(), out, resume=True, progress=False)
    assert not tmp.exists() and "removed checkpoint.pt.tmp" in capsys.readouterr().err


def test_save_failure_removes_its_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    checkpoint.save({"x": torch.ones(2)}, path)

    def interrupted(obj, f, *args, **kwargs):
        f.write(b"PK partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save({"x": torch.zeros(2)}, path)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_kill_mid_write_leaves_the_previous_checkpoint_loadable(trained, tmp_path):
    """SIGKILL while the next checkpoint is half written: the old one still loads, --resume
    removes the left-over temporary file and continues."""
    out = copy_run(trained, tmp_path)
    before = checkpoint.load(out / loop.CHECKPOINT)
    script = textwrap.dedent(f"""
        import os, signal, torch
        from pathlib import Path
        from maml_ext.train import checkpoint
        def half_then_die(obj, f, *args, **kwargs):
            f.write(b"PK\\x03\\x04" + bytes(4096))
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        torch.save = half_then_die
        checkpoint.save({{"iteration": 99}}, Path({str(out / loop.CHECKPOINT)!r}))
    """)
    assert subprocess.run([sys.executable, "-c", script], cwd=tmp_path, timeout=300).returncode == -9
    assert checkpoint.temporary(out / loop.CHECKPOINT).stat().st_size > 4096
    after = checkpoint.load(out / loop.CHECKPOINT)
    assert after["iteration"] == before["iteration"] == 6
    assert all(torch.equal(after["learner"][k], before["learner"][k]) for k in before["learner"])
    loop.train(tiny("train.iterations=8"), out, resume=True, progress=False)
    assert checkpoint.load(out / loop.CHECKPOINT)["iteration"] == 8
    assert not checkpoint.temporary(out / loop.CHECKPOINT).exists()


def test_checkpoint_stays_a_plain_torch_file(trained):
    state = torch.load(trained / loop.CHECKPOINT, weights_only=True)
    assert state["checksum"] == checkpoint.digest({k: v for k, v in state.items() if k != "checksum"})


def test_meta_rl_stops_on_a_non_finite_statistic(tmp_path, monkeypatch):
    from maml_ext.rl import train as rl
    from maml_ext.rl.algorithms import MetaRL

    real, calls = MetaRL.iteration, []

    def iteration(self, *args, **kwargs):
        info = real(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            info["return_post"] = float("nan")
        return info

    monkeypatch.setattr(MetaRL, "iteration", iteration)
    small = ["model.hidden=[8]", "train.meta_batch=2", "train.rollouts=2", "task.horizon=5", "train.iterations=3",
             "train.checkpoint_every=1", "eval.num_tasks=2", "eval.trajectories=0"]
    cfg = rl.load_config(config.apply_overrides(config.read("point-nav"), small))
    out = tmp_path / "run"
    with pytest.raises(driver.TrainingError, match=r"^iteration 2: non-finite return_post; training stopped, .*"
                                                   r"checkpoint.pt keeps iteration 1 \(try a smaller train.max_kl"):
        rl.train(cfg, out, progress=False)
    state = checkpoint.load(out / loop.CHECKPOINT)
    assert state["iteration"] == 1 and state["kind"] == "rl"
