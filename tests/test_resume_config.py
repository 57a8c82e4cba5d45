"""--resume reads the run's config.json (only changed keys are given), names both values of a
differing key and says when the run has finished; learning curves get enough points; --unset
drops a config key (issue 15, items 4, 5 and 7)."""

import json

import pytest
import torch
from torch import nn

from maml_ext import cli, plugins
from maml_ext.train import checkpoint, config, driver, loop

TINY = ["model.hidden=[8]", "train.meta_batch=2", "train.log_every=1", "train.checkpoint_every=2",
        "algorithm.lr=0.02", "seed=3"]


def train(out, *sets, resume=False, config_name="sinusoid"):
    argv = ["train", *([config_name] if config_name else []), "--out", str(out), "--quiet", "--no-eval",
            *(["--resume"] if resume else []), *(a for s in sets for a in ("--set", s))]
    return cli.main(argv)


def weights(out):
    return checkpoint.load(out / loop.CHECKPOINT)["learner"]


def test_resume_needs_only_the_changed_keys(tmp_path, capsys):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert train(straight, *TINY, "train.iterations=6") == 0
    assert train(split, *TINY, "train.iterations=4") == 0
    # Neither the config name nor the original --set values are given again.
    assert train(split, "train.iterations=6", resume=True, config_name=None) == 0
    a, b = weights(straight), weights(split)
    assert all(torch.equal(a[k], b[k]) for k in a)
    saved = json.loads((split / "config.json").read_text())
    assert saved["algorithm"]["lr"] == 0.02 and saved["seed"] == 3 and saved["train"]["iterations"] == 6


def test_resume_names_both_values_of_a_changed_key(tmp_path, capsys):
    out = tmp_path / "run"
    assert train(out, *TINY, "train.iterations=2") == 0
    capsys.readouterr()
    assert train(out, "train.iterations=4", "algorithm.lr=0.05", "model.hidden=[9]", resume=True) == 2
    assert capsys.readouterr().err.splitlines() == [
        "maml-ext: error: --resume with a different config: algorithm.lr is 0.02 in the run, 0.05 now; "
        "model.hidden is [8] in the run, [9] now; only train.iterations, train.log_every, train.checkpoint_every "
        "and eval.* may change"]
    assert cli.main(["train", "--resume", "--out", str(out), "--quiet", "--unset", "model.init"]) == 2
    assert "model.init is 'trunc_normal' in the run, unset now" in capsys.readouterr().err
    # Keys that do not change the weights may change.
    assert train(out, "train.iterations=4", "train.checkpoint_every=1", "eval.num_tasks=7", resume=True) == 0


def test_resuming_a_finished_run_says_so(tmp_path, capsys):
    out = tmp_path / "run"
    assert train(out, *TINY, "train.iterations=2") == 0
    capsys.readouterr()
    assert train(out, resume=True) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"maml-ext: error: {out} has finished: its checkpoint is at iteration 2 of train.iterations=2. To train on, "
        f"--resume --set train.iterations=N with N > 2; to evaluate it, maml-ext eval {out}"]
    assert train(out, "train.iterations=1", resume=True) == 2
    assert "checkpoint is at iteration 2 of train.iterations=1" in capsys.readouterr().err


def test_resume_without_config_json_or_name_is_an_error(tmp_path, capsys):
    assert cli.main(["train", "--resume", "--quiet"]) == 2
    assert capsys.readouterr().err.splitlines() == ["maml-ext: error: give a config, or --out RUN_DIR with --resume"]
    assert train(tmp_path / "none", resume=True, config_name=None) == 2
    assert "--resume: no " in capsys.readouterr().err


@pytest.mark.parametrize(("iterations", "log_every", "logged"), [
    (40, 500, list(range(2, 41, 2))),  # a short run still draws a 20-point curve
    (45, 1, list(range(1, 46))),  # log_every below the cap is kept
    (7, 100, list(range(1, 8))),  # fewer iterations than points: every one
])
def test_short_runs_log_a_learning_curve(tmp_path, iterations, log_every, logged):
    assert driver.log_every({"iterations": iterations, "log_every": log_every}) == (logged[1] - logged[0])
    out = tmp_path / "run"
    assert train(out, *TINY, f"train.iterations={iterations}", f"train.log_every={log_every}") == 0
    records = [json.loads(line) for line in (out / loop.METRICS).read_text().splitlines()]
    assert [r["iteration"] for r in records] == logged


class SineNet(nn.Module):
    def __init__(self, in_features: int, out_features: int, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, out_features))

    def forward(self, x):
        return self.net(x)


def build_sine_net(in_features: int, out_features: int, hidden: int = 32) -> SineNet:
    return SineNet(in_features, out_features, hidden)


@pytest.fixture
def sine_net():
    plugins.register_model("sine_net_test", build_sine_net)
    yield
    plugins.models.unregister("sine_net_test")


def test_unset_drops_keys_a_plugin_does_not_take(tmp_path, sine_net, capsys):
    """The plugin example's documented command: the packaged config's activation/init are dropped."""
    base = ["train", "sinusoid", "--quiet", "--no-eval", "--set", "model.name=sine_net_test", "--set", "model.hidden=8",
            "--set", "train.iterations=2", "--set", "train.meta_batch=2"]
    assert cli.main([*base, "--out", str(tmp_path / "a")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "maml-ext: error: model 'sine_net_test' has no option(s) ['activation', 'init']; its options: ['hidden'] "
        "(drop a key with --unset model.KEY)"]
    out = tmp_path / "b"
    assert cli.main([*base, "--out", str(out), "--unset", "model.activation", "--unset", "model.init"]) == 0
    assert json.loads((out / "config.json").read_text())["model"] == {"name": "sine_net_test", "hidden": 8}


def test_unset_and_set_order():
    cfg = {"model": {"name": "mlp", "init": "torch"}}
    assert config.apply_overrides(cfg, ["model.init=trunc_normal"], ["model.init"])["model"]["init"] == "trunc_normal"
    assert config.apply_overrides(cfg, [], ["model.init"]) == {"model": {"name": "mlp"}}
    assert cfg == {"model": {"name": "mlp", "init": "torch"}}  # the input is not modified
    with pytest.raises(config.ConfigError, match="--unset model.hidden: the config has no key 'model.hidden'"):
        config.apply_overrides(cfg, [], ["model.hidden"])


class _Jittered:
    """A task plugin drawing from Python's ``random``: the sinusoid with a random target scale."""

    def __init__(self) -> None:
        from maml_ext.tasks.sinusoid import Sinusoid

        self.family = Sinusoid()
        self.loss, self.in_features, self.out_features = "mse", 1, 1

    def sample(self, num_tasks, k_support, k_query, generator):
        import random

        b = self.family.sample(num_tasks, k_support, k_query, generator)
        scale = random.uniform(0.5, 2.0)
        return type(b)(b.x_support, b.y_support * scale, b.x_query, b.y_query * scale, b.info)


@pytest.fixture
def jittered():
    plugins.register_task("test_jittered", _Jittered)
    yield "task.name=test_jittered"
    plugins.tasks.unregister("test_jittered")


def test_pythons_random_is_seeded_by_the_run_and_resumed(tmp_path, jittered):
    """Two runs with one seed train the same weights, and a resumed run continues Python's
    ``random`` where it stopped (its state is in the checkpoint)."""
    import random

    first, second, split = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert train(first, *TINY, jittered, "train.iterations=4") == 0
    random.random()  # the process's generator moved on between the runs
    assert train(second, *TINY, jittered, "train.iterations=4") == 0
    assert train(split, *TINY, jittered, "train.iterations=2") == 0
    random.random()
    assert train(split, "train.iterations=4", resume=True, config_name=None) == 0
    a, b, c = weights(first), weights(second), weights(split)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(a[k], c[k]) for k in a)
