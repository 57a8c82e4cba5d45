"""Ctrl-C while ``maml-ext`` starts (importing its modules, parsing, building the run): the same
one line and exit status 130 as Ctrl-C during training, no traceback."""

import os
import signal
import subprocess
import sys
import textwrap

from maml_ext import cli
from maml_ext.rl import train as rl


def test_ctrl_c_while_building_or_parsing_is_one_line(monkeypatch, capsys):
    def interrupt(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(rl, "task_family", interrupt)  # building the run's task family
    assert cli.main(["train", "sinusoid", "--out", "unused", "--quiet"]) == 128 + signal.SIGINT
    monkeypatch.setattr(cli, "_fall_back_to_ascii", interrupt)  # right after parsing
    assert cli.main(["list"]) == 128 + signal.SIGINT
    assert capsys.readouterr().err.splitlines() == ["maml-ext: interrupted"] * 2


def test_ctrl_c_while_importing_the_cli_is_one_line(tmp_path):
    # The interrupt arrives while cli.py imports the algorithms (a finder raising it at that import).
    code = textwrap.dedent("""
        import sys

        class Interrupt:
            def find_spec(self, name, path=None, target=None):
                if name == "maml_ext.algorithms":
                    raise KeyboardInterrupt

        sys.meta_path.insert(0, Interrupt())
        from maml_ext.cli import main
        sys.exit(main(["list"]))
    """)
    env = {**os.environ, "PYTHONSAFEPATH": "1"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 128 + signal.SIGINT, done.stderr
    assert done.stderr.splitlines() == ["maml-ext: interrupted"], done.stderr
