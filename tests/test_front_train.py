"""Training loop, config handling, checkpoints, resume, evaluation, plots and the CLI."""

import json
import re

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from maml_ext import cli
from maml_ext.tasks.episodes import Episodes
from maml_ext.tasks.sinusoid import Sinusoid
from maml_ext.train import checkpoint, config, loop

TINY = [
    "model.hidden=[8]", "train.iterations=6", "train.meta_batch=4", "train.log_every=1",
    "train.checkpoint_every=3", "eval.num_tasks=20", "eval.shots=[5]", "eval.k_query=10", "eval.steps=3",
]


def tiny(*extra):
    return config.load("sinusoid", [*TINY, *extra])


def final_state(out):
    return torch.load(out / loop.CHECKPOINT, weights_only=True)


# ----- tasks -------------------------------------------------------------------------------
def test_sinusoid_ranges_and_reproducibility():
    family = Sinusoid()
    a = family.sample(500, 10, 5, torch.Generator().manual_seed(3))
    b = family.sample(500, 10, 5, torch.Generator().manual_seed(3))
    assert torch.equal(a.x_support, b.x_support) and torch.equal(a.y_query, b.y_query)
    amp, phase = a.info["amplitude"], a.info["phase"]
    assert 0.1 <= amp.min() and amp.max() <= 5.0 and 0 <= phase.min() and phase.max() <= torch.pi
    assert -5 <= a.x_support.min() and a.x_query.max() <= 5
    torch.testing.assert_close(a.y_support, amp[:, None, None] * torch.sin(a.x_support - phase[:, None, None]))


def test_episodes_are_n_way_k_shot_with_distinct_examples():
    labels = torch.arange(70) % 7
    inputs = torch.arange(70.0)[:, None]  # input i is example i
    family = Episodes(inputs, labels, n_way=3)
    batch = family.sample(10, 2, 4, torch.Generator().manual_seed(0))
    assert batch.x_support.shape == (10, 6, 1) and batch.x_query.shape == (10, 12, 1)
    for t in range(10):
        idx = torch.cat([batch.x_support[t, :, 0], batch.x_query[t, :, 0]]).long()
        assert len(set(idx.tolist())) == 18  # no example twice in a task
        for x, y in ((batch.x_support[t], batch.y_support[t]), (batch.x_query[t], batch.y_query[t])):
            assert torch.equal(labels[x[:, 0].long()], batch.info["classes"][t][y])
    with pytest.raises(ValueError, match="only 0 classes have"):
        family.sample(1, 5, 10, torch.Generator())


# ----- config -------------------------------------------------------------------------------
def test_packaged_config_is_the_paper_setting():
    cfg = config.load("sinusoid")
    assert cfg["model"]["hidden"] == [40, 40] and cfg["algorithm"] == {"name": "maml", "lr": 0.01, "steps": 1}
    assert (cfg["train"]["meta_batch"], cfg["train"]["k_support"], cfg["train"]["iterations"]) == (25, 10, 70000)
    assert cfg["train"]["meta_lr"] == 1e-3 and cfg["eval"]["num_tasks"] >= 600


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.iterations=0", "train.iterations must be an integer >= 1, got 0"),
        ("train.meta_lr=-1", "train.meta_lr must be a number > 0"),
        ("eval.shots=[0]", "eval.shots must be a non-empty list of integers >= 1"),
        ("train.meta_batch=true", "train.meta_batch must be an integer >= 1, got True"),
        ("train.iteratons=5", "unknown config key\\(s\\) \\['train.iteratons'\\]"),
        ("model.name=3", "model.name is required"),
        ("nonsense", "must look like section.key=value"),
    ],
)
def test_bad_values_name_key_and_range(override, message):
    with pytest.raises(config.ConfigError, match=message):
        config.load("sinusoid", [override])


def test_bad_algorithm_option_is_a_config_error():
    with pytest.raises(config.ConfigError, match=r"\[algorithm\].*lr must be > 0"):
        loop.build(tiny("algorithm.lr=0.0"))


def test_override_parses_toml_and_bare_strings():
    cfg = config.apply_overrides({}, ["a.b=[1, 2]", "a.c=relu", "a.d=0.5", "a.e=true"])
    assert cfg == {"a": {"b": [1, 2], "c": "relu", "d": 0.5, "e": True}}


# ----- training, checkpoints, resume ------------------------------------------------------------
@pytest.mark.parametrize("algorithm", ["maml", "anil"])  # fused kernel path, generic vmap path
def test_task_chunk_gives_the_same_training(tmp_path, algorithm):
    whole, chunked = tmp_path / "whole", tmp_path / "chunked"
    loop.train(tiny(f"algorithm.name={algorithm}"), whole, progress=False)
    loop.train(tiny(f"algorithm.name={algorithm}", "train.task_chunk=3"), chunked, progress=False)
    a, b = final_state(whole), final_state(chunked)
    for name in a["learner"]:
        torch.testing.assert_close(a["learner"][name], b["learner"][name], rtol=1e-4, atol=1e-6)
    losses = [[json.loads(r)["loss"] for r in (d / loop.METRICS).read_text().splitlines()] for d in (whole, chunked)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_clip_grad_bounds_every_meta_gradient_entry(tmp_path):
    seen = []

    def record(opt, args, kwargs):
        seen.append(max(p.grad.abs().max().item() for g in opt.param_groups for p in g["params"]))

    handle = register_optimizer_step_pre_hook(record)
    try:
        loop.train(tiny("train.iterations=2"), tmp_path / "free", progress=False)
        loop.train(tiny("train.iterations=2", "train.clip_grad=0.01"), tmp_path / "clipped", progress=False)
    finally:
        handle.remove()
    free, clipped = seen[:2], seen[2:]
    assert min(free) > 0.01 and max(clipped) == pytest.approx(0.01)
    with pytest.raises(config.ConfigError, match="train.clip_grad must be a number > 0"):
        tiny("train.clip_grad=0")


@pytest.mark.parametrize("algorithm", ["maml", "metasgd", "reptile"])
@pytest.mark.filterwarnings("ignore:Reptile with steps=1")
def test_resume_equals_uninterrupted(tmp_path, algorithm):
    straight, split = tmp_path / "straight", tmp_path / "split"
    loop.train(tiny(f"algorithm.name={algorithm}"), straight, progress=False)
    loop.train(tiny(f"algorithm.name={algorithm}", "train.iterations=3"), split, progress=False)
    loop.train(tiny(f"algorithm.name={algorithm}"), split, resume=True, progress=False)
    a, b = final_state(straight), final_state(split)
    assert a["iteration"] == b["iteration"] == 6
    for name in a["learner"]:
        assert torch.equal(a["learner"][name], b["learner"][name]), name
    losses = [[json.loads(r)["loss"] for r in (d / loop.METRICS).read_text().splitlines()] for d in (straight, split)]
    assert losses[0] == losses[1] and len(losses[0]) == 6


def test_resume_after_a_crash_drops_metrics_past_the_checkpoint(tmp_path):
    out = tmp_path / "run"
    loop.train(tiny("train.iterations=3"), out, progress=False)
    with (out / loop.METRICS).open("a") as f:  # lines a crashed run logged after its checkpoint
        f.write(json.dumps({"iteration": 4, "loss": 9.9, "it_s": 1.0}) + "\n")
    loop.train(tiny(), out, resume=True, progress=False)
    iterations = [json.loads(r)["iteration"] for r in (out / loop.METRICS).read_text().splitlines()]
    assert iterations == [1, 2, 3, 4, 5, 6]


def test_resume_refuses_a_changed_config(tmp_path):
    out = tmp_path / "run"
    loop.train(tiny("train.iterations=3"), out, progress=False)
    with pytest.raises(config.ConfigError, match="algorithm.lr"):
        loop.train(tiny("algorithm.lr=0.02"), out, resume=True, progress=False)


def test_missing_or_corrupt_checkpoint_is_a_clear_error_and_never_overwritten(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint at"):
        loop.train(tiny(), out, resume=True, progress=False)
    out.mkdir(exist_ok=True)
    (out / loop.CHECKPOINT).write_bytes(b"not a checkpoint")
    with pytest.raises(checkpoint.CheckpointError, match="corrupt or unreadable"):
        loop.train(tiny(), out, resume=True, progress=False)
    with pytest.raises(checkpoint.CheckpointError, match="exists: pass --resume"):
        loop.train(tiny(), out, progress=False)
    assert (out / loop.CHECKPOINT).read_bytes() == b"not a checkpoint"
    torch.save({"iteration": 3}, out / loop.CHECKPOINT)
    with pytest.raises(checkpoint.CheckpointError, match="incomplete"):
        checkpoint.load(out / loop.CHECKPOINT)


def test_atomic_save_leaves_no_temporary_file(tmp_path):
    checkpoint.save({"x": torch.ones(2)}, tmp_path / "c.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


# ----- evaluation, plots, CLI ----------------------------------------------------------------------
def test_cli_train_shows_the_progress_bar(tmp_path, capsys):
    """The README's first command as a user runs it: not --quiet, the bar on stderr names the loss."""
    sets = [arg for item in TINY for arg in ("--set", item)]
    assert cli.main(["train", "sinusoid", "--out", str(tmp_path / "run"), "--no-eval", *sets]) == 0
    err = capsys.readouterr().err
    assert re.search(r"6/6 .*loss [0-9.]+", err), err


def test_cli_train_eval_plot(tmp_path, capsys):
    out = tmp_path / "run"
    sets = [arg for item in TINY for arg in ("--set", item)]
    assert cli.main(["train", "sinusoid", "--out", str(out), "--quiet", *sets]) == 0  # evaluates too
    results = json.loads((out / "eval.json").read_text())
    r = results["shots"]["5"]
    assert results["num_tasks"] == 20 and results["iteration"] == 6
    loss = r["loss"]
    assert len(loss["mean"]) == len(loss["ci95"]) == len(loss["median"]) == 4 and all(c > 0 for c in loss["ci95"])
    assert "| 5 |" in capsys.readouterr().out
    # The held-out set is fixed: evaluating again gives identical numbers.
    assert cli.main(["eval", str(out)]) == 0
    assert json.loads((out / "eval.json").read_text()) == results
    for png in ("learning_curve.png", "adaptation.png", "fits_5shot.png"):
        (out / png).unlink()
    assert cli.main(["plot", str(out)]) == 0
    for png in ("learning_curve.png", "adaptation.png", "fits_5shot.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    other = tmp_path / "pretrained"
    assert cli.main(["train", "sinusoid", "--out", str(other), "--quiet", "--set", "algorithm.name=pretrain", *sets]) == 0
    (out / "adaptation.png").unlink()
    assert cli.main(["plot", str(out), "--compare", str(other)]) == 0
    assert (out / "adaptation.png").is_file()
    assert cli.main(["plot", str(out), "--compare", str(tmp_path / "nothing")]) == 2


def test_cli_errors_are_reported_not_raised(tmp_path, capsys):
    assert cli.main(["train", "sinusoid", "--out", str(tmp_path), "--set", "model.name=nope"]) == 2
    assert not list(tmp_path.iterdir())
    assert "unknown model 'nope'; available: " in capsys.readouterr().err
    assert cli.main(["eval", str(tmp_path / "missing")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
    assert cli.main(["train", "no_such_config"]) == 2
    assert re.search(r"packaged configs: .*\bsinusoid\b", capsys.readouterr().err)
