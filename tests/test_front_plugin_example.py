"""Installs examples/plugin_example into this environment and trains with it through the CLI."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "plugin_example"
CLI = Path(sys.executable).with_name("maml-ext")


def run(*args, cwd):
    return subprocess.run(args, capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.fixture
def installed(tmp_path):
    pytest.importorskip("setuptools", reason="the example plugin builds with setuptools")
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-build-isolation", "--no-deps", str(EXAMPLE)]
    done = run(*pip, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    yield
    run(sys.executable, "-m", "pip", "uninstall", "-q", "-y", "maml-ext-plugin-example", cwd=tmp_path)


def test_installed_plugin_is_discovered_and_trains(installed, tmp_path):
    # cwd=tmp_path: the installed maml_ext is used, not the source tree.
    listing = run(str(CLI), "list", cwd=tmp_path)
    assert listing.returncode == 0 and "sine_net" in listing.stdout, listing.stderr
    config = tmp_path / "sine_net.toml"
    config.write_text(
        '[model]\nname = "sine_net"\nhidden = 8\n[task]\nname = "sinusoid"\n'
        '[algorithm]\nname = "maml"\n[train]\niterations = 4\nlog_every = 2\nmeta_batch = 3\n'
    )
    out = tmp_path / "run"
    train = run(str(CLI), "train", str(config), "--out", str(out), "--quiet", "--no-eval", cwd=tmp_path)
    assert train.returncode == 0, train.stderr
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [1, 2, 3, 4]  # a 4-iteration run logs every iteration (>= 20 points or all)
    assert (out / "checkpoint.pt").is_file()
    # The same plugin is hidden by the kill switch (it is not part of maml_ext itself).
    env_off = run("env", "MAML_EXT_PLUGIN_AUTOLOAD=0", str(CLI), "list", cwd=tmp_path)
    assert "sine_net" not in env_off.stdout and "mlp" in env_off.stdout
