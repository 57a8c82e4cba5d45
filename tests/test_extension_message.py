"""The advice printed when the compiled kernels are missing names the real cause."""

import pytest

from maml_ext import __version__, _extension, cli


def test_source_tree_shadowing_is_named(tmp_path):
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "csrc").mkdir()
    advice = _extension._missing_advice(tmp_path / "maml_ext")
    assert "source tree" in advice and "shadows" in advice and "pip install --no-build-isolation -e ." in advice


def test_an_unbuilt_install_is_told_to_build(tmp_path):
    assert "pip install --no-build-isolation ." in _extension._missing_advice(tmp_path / "maml_ext")


def test_version_names_the_kernels_status(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps the line to the terminal
    assert f"maml-ext {__version__}" in out and f"compiled kernels: {_extension.STATUS}" in out

