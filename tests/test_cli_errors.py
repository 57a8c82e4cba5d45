"""Every user error of the CLI is one ``maml-ext: error: ...`` line on stderr, exit status 2, no
traceback, and no finished work is lost (issue 12, defect 5)."""

import errno
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from maml_ext import cli
from maml_ext.train import checkpoint, loop, results

TINY = ["train.iterations=6", "train.meta_batch=2", "train.checkpoint_every=3",
        "eval.num_tasks=4", "eval.shots=[5]", "eval.k_query=5", "eval.steps=1"]


def read_only_directory(monkeypatch, tmp_path):
    def refuse(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
    monkeypatch.setattr(Path, "mkdir", refuse)  # as a read-only file system answers (the tests may run as root)


def full_disk_at_second_checkpoint(monkeypatch, tmp_path):
    calls, save = [], torch.save

    def save_or_fail(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            f.write(b"PK\x03\x04 half a checkpoint")  # the write stops part-way
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return save(obj, f, *args, **kwargs)
    monkeypatch.setattr(torch, "save", save_or_fail)


def no_matplotlib(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ModuleNotFoundError


def binary_config(tmp_path):
    (tmp_path / "bin.toml").write_bytes(bytes(range(256)))
    return str(tmp_path / "bin.toml")


def string_hidden_config(tmp_path):
    (tmp_path / "c.toml").write_text('[model]\nname = "mlp"\nhidden = "40"\n[task]\nname = "sinusoid"\n'
                                     '[algorithm]\nname = "maml"\n')
    return str(tmp_path / "c.toml")


def train(config, *sets):
    def argv(tmp_path):
        given = {s.partition("=")[0] for s in sets}
        tiny = [a for item in TINY if item.partition("=")[0] not in given for a in ("--set", item)]
        return ["train", config if isinstance(config, str) else config(tmp_path), "--out", str(tmp_path / "run"),
                "--quiet", *tiny, *(a for s in sets for a in ("--set", s))]
    return argv


CASES = {
    "unclosed array": (train("sinusoid", "model.hidden=[40,40"), None,
                       r"override 'model.hidden=\[40,40': the value is not valid TOML \(Unclosed array"),
    "model not a table": (train("sinusoid", "model=5"), None, r"\[model\] must be a table, got 5$"),
    "task not a table": (train("sinusoid", "task=[1]"), None, r"\[task\] must be a table, got \[1\]$"),
    "infinite inner lr": (train("sinusoid", "algorithm.lr=inf"), None, r"algorithm.lr must be a finite number, got inf$"),
    "infinite meta lr": (train("sinusoid", "train.meta_lr=inf"), None, r"train.meta_lr must be a finite number, got inf$"),
    "nan clip": (train("sinusoid", "train.clip_grad=nan"), None, r"train.clip_grad must be a finite number, got nan$"),
    "zero width": (train("sinusoid", "model.hidden=[0]"), None,
                   r"model 'mlp': hidden must be a list of layer widths \(integers >= 1\), got \[0\]$"),
    "unknown activation": (train("sinusoid", "model.activation=gelu"), None,
                           r"model 'mlp': activation must be one of \['relu', 'tanh'\], got 'gelu'$"),
    "unknown init": (train("sinusoid", "model.init=zeros"), None, r"model 'mlp': init must be .*got 'zeros'$"),
    "bare-word bool": (train("sinusoid", "algorithm.first_order=yes"), None,
                       r"algorithm.first_order must be true or false, got 'yes'$"),
    "string hidden": (train(string_hidden_config), None, r"model.hidden must be a list, each an integer, got '40'$"),
    "unknown option": (train("sinusoid", "model.widths=[3]"), None,
                       r"model 'mlp' has no option\(s\) \['widths'\]; its options: \['activation', 'hidden', 'init'\]"),
    "unknown algorithm option": (train("sinusoid", "algorithm.temperature=0.5"), None,
                                 r"algorithm 'maml' has no option\(s\) \['temperature'\]; its options: \['adapt', "
                                 r"'first_order', .*'second_order_after', 'steps', 'task_batched', 'trace'\] "),
    "self as an option": (train("sinusoid", "algorithm.self=1"), None, r"algorithm 'maml' has no option\(s\) \['self'\]"),
    "binary config": (train(binary_config), None, r"cannot read config .*bin.toml: not a UTF-8 TOML text file"),
    "missing dataset": (train("omniglot-5way", "task.root='/nonexistent/omniglot'"), None,
                        r"task 'omniglot': Omniglot root /nonexistent/omniglot does not exist; expected the Omniglot"),
    "read-only output": (train("sinusoid"), read_only_directory, r"Permission denied: .*run$"),
    "full disk": (train("sinusoid"), full_disk_at_second_checkpoint,
                  r"cannot write checkpoint .*checkpoint.pt: No space left on device \(the previous checkpoint is kept\)$"),
    "no matplotlib": (train("sinusoid"), no_matplotlib,
                      r"plots need matplotlib: pip install 'maml_ext\[plots\]' \(the run in .*run is saved; draw it then "
                      r"with `maml-ext plot .*run`\)$"),
    "bad argument": (lambda tmp_path: ["train", "sinusoid", "--nproc", "x"], None,
                     r"argument --nproc: invalid int value: 'x' \(see `maml-ext train --help`\)$"),
    "unset a missing key": (lambda tmp_path: ["train", "sinusoid", "--unset", "model.widths"], None,
                            r"--unset model.widths: the config has no key 'model.widths'$"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_user_error_is_one_line_exit_2(case, tmp_path, monkeypatch, capsys):
    argv, setup, message = CASES[case]
    monkeypatch.chdir(tmp_path)
    if setup is not None:
        setup(monkeypatch, tmp_path)
    try:
        code = cli.main(argv(tmp_path))
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("maml-ext: error: "), err
    assert re.search(message, lines[0].removeprefix("maml-ext: error: ")), lines[0]


def test_full_disk_keeps_the_last_checkpoint_loadable(tmp_path, monkeypatch, capsys):
    full_disk_at_second_checkpoint(monkeypatch, tmp_path)
    assert cli.main(train("sinusoid")(tmp_path)) == 2
    monkeypatch.undo()
    run = tmp_path / "run"
    assert checkpoint.load(run / loop.CHECKPOINT)["iteration"] == 3
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt", "config.json", "metrics.jsonl"]  # no .tmp


def test_missing_matplotlib_comes_after_checkpoint_and_evaluation(tmp_path, monkeypatch, capsys):
    no_matplotlib(monkeypatch, tmp_path)
    assert cli.main(train("sinusoid")(tmp_path)) == 2
    run = tmp_path / "run"
    assert checkpoint.load(run / loop.CHECKPOINT)["iteration"] == 6
    assert json.loads((run / results.DEFAULT).read_text())["iteration"] == 6
    assert "| 5 | MSE |" in capsys.readouterr().out  # the evaluation table was printed


def test_missing_dataset_creates_no_run_directory(tmp_path, capsys):
    assert cli.main(train("omniglot-5way", "task.root='/nonexistent/omniglot'")(tmp_path)) == 2
    assert not (tmp_path / "run").exists()


def test_closed_pipe_ends_quietly(tmp_path):
    # `maml-ext list | head -1`: the reader is gone before the listing is written.
    code = "import sys; from maml_ext.cli import main; sys.exit(main())"
    with subprocess.Popen([sys.executable, "-c", code, "list"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          cwd=tmp_path) as proc:
        proc.stdout.close()
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=300) == 128 + signal.SIGPIPE
    assert err == "", err


def test_a_stream_that_cannot_encode_plus_minus_gets_ascii(tmp_path):
    """``maml-ext eval`` under PYTHONIOENCODING=ascii prints ``+/-`` (was: UnicodeEncodeError
    after the evaluation, exit 1)."""
    assert cli.main(train("sinusoid", "train.iterations=2")(tmp_path) + ["--no-eval"]) == 0
    code = "import sys; from maml_ext.cli import main; sys.exit(main())"
    done = subprocess.run([sys.executable, "-c", code, "eval", str(tmp_path / "run"), "--set", "eval.num_tasks=4"],
                          capture_output=True, cwd=tmp_path, timeout=300,
                          env={**os.environ, "PYTHONIOENCODING": "ascii", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr.decode()
    out = done.stdout.decode("ascii")
    assert "| MSE | " in out and " +/- " in out
