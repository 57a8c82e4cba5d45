"""The op input checks have one source, maml_ext/reference/_checks.py: the build compiles it into
the C++ header the kernels include (csrc/gen_checks.py). The messages of both paths are compared
case by case in test_ops_bad_input.py; here, the generator itself."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import maml_ext
from _ops_helpers import requires_extension

ROOT = Path(__file__).resolve().parents[1]
GENERATOR = ROOT / "csrc" / "gen_checks.py"
SPEC = ROOT / "maml_ext" / "reference" / "_checks.py"


def generate(spec: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(GENERATOR), str(spec), str(out)], capture_output=True, text=True)


def test_every_compiled_check_becomes_a_cpp_function(tmp_path):
    result = generate(SPEC, tmp_path / "checks.h")
    assert result.returncode == 0, result.stderr
    header = (tmp_path / "checks.h").read_text()
    for name in ("check_inner_update", "mlp_widths", "check_batch", "check_label_range", "check_hvp",
                 "check_lrs_for_params", "check_maml", "check_backward", "check_loss_weight"):
        assert f" {name}(" in header, name
    # @inline helpers are expanded, never called: their messages are formatted only on failure.
    assert "check_same_dtype(" not in header and "check_choice(" not in header
    assert "\"activation\", \": expected \", \"'relu' or 'tanh'\"" in header  # constants evaluated once


def test_generator_names_the_line_it_cannot_compile(tmp_path):
    spec = tmp_path / "spec.py"
    spec.write_text(textwrap.dedent('''\
        from __future__ import annotations


        def compiled(fn):
            return fn


        @compiled
        def check_foo(x: Tensor) -> None:
            while x.dim() > 2:
                raise ValueError(f"x: expected at most 2 dims, got {x.dim()}")
    '''))
    result = generate(spec, tmp_path / "out.h")
    assert result.returncode == 1
    assert "line 10: unsupported statement: while x.dim() > 2" in result.stderr
    assert not (tmp_path / "out.h").exists()


@requires_extension
def test_the_build_compiled_the_current_checks(tmp_path):
    """An editable build's header is what the spec generates now (a stale or hand-edited header
    would let the paths drift apart)."""
    built = list(ROOT.glob("build/*/generated/maml_ext_checks.h"))
    if Path(maml_ext.__file__).resolve().parents[1] != ROOT or not built:
        pytest.skip("not an editable build of this tree")
    assert generate(SPEC, tmp_path / "checks.h").returncode == 0
    assert any(path.read_text() == (tmp_path / "checks.h").read_text() for path in built)
