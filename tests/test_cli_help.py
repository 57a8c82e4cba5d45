"""What a user reads first: ``maml-ext --help`` is plain text and shows how the commands are used."""

import pytest

from maml_ext import cli


def test_help_page_is_plain_text_with_the_example_commands(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--help"])
    assert done.value.code == 0
    page = capsys.readouterr().out
    assert "``" not in page  # no reST markup from the docstring
    assert "maml-ext: train, evaluate and plot meta-learning runs from a TOML config." in page
    for example in ("maml-ext train --resume --out runs/sinusoid", "maml-ext eval runs/sinusoid",
                    "maml-ext plot runs/sinusoid [--compare runs/other ...]"):
        assert example in page


def test_plots_set_says_it_picks_an_evaluation(capsys):
    with pytest.raises(SystemExit):
        cli.main(["plot", "--help"])
    page = " ".join(capsys.readouterr().out.split())
    assert "eval.* settings of the evaluation to draw (default: the run's own, eval.json)" in page
