"""Loads the compiled kernels (maml_ext._C) or explains why the pure-PyTorch reference is used."""

from __future__ import annotations

import importlib.metadata
import os
import warnings
from pathlib import Path
from types import ModuleType

import torch

NO_EXTENSION_ENV = "MAML_EXT_NO_EXTENSION"


def _public(version: str) -> str:
    return version.split("+", 1)[0]


def _missing_advice(package_dir: Path) -> str:
    """What to do about a missing ``_C``: a source checkout imported by accident (the current
    directory comes first on sys.path) needs another working directory, not another build."""
    if (package_dir.parent / "pyproject.toml").exists() and (package_dir.parent / "csrc").is_dir():
        try:
            installed = importlib.metadata.distribution("maml_ext").locate_file("")
        except importlib.metadata.PackageNotFoundError:
            installed = None
        where = f"the installed package (in {installed})" if installed else "any installed package"
        return (f"maml_ext is imported from the source tree {package_dir}, which shadows {where}: run from "
                "another directory or with PYTHONSAFEPATH=1, or install the source tree itself with "
                "`pip install --no-build-isolation -e .`")
    return "Build with `pip install --no-build-isolation .`"


def _load() -> tuple[ModuleType | None, str]:
    if os.environ.get(NO_EXTENSION_ENV, "") not in ("", "0"):
        return None, f"disabled by {NO_EXTENSION_ENV}"
    try:
        from maml_ext import _C
    except ImportError as exc:
        warnings.warn(
            f"maml_ext: compiled kernels unavailable ({exc}); using the pure-PyTorch reference. "
            + _missing_advice(Path(__file__).resolve().parent),
            RuntimeWarning,
            stacklevel=3,
        )
        return None, f"not built ({exc})"
    if _public(_C.torch_version) != _public(torch.__version__):
        # Never call into kernels compiled against another libtorch: that crashes, or worse.
        warnings.warn(
            f"maml_ext was built against torch {_C.torch_version} but torch {torch.__version__} "
            "is installed; using the pure-PyTorch reference. Rebuild maml_ext.",
            RuntimeWarning,
            stacklevel=3,
        )
        return None, f"built for torch {_C.torch_version}"
    return _C, "loaded"


C, STATUS = _load()


def available() -> bool:
    """True when the compiled kernels are loaded and will be used."""
    return C is not None


def supports(device: torch.device) -> bool:
    """True when the compiled kernels handle tensors on ``device``."""
    if C is None:
        return False
    return device.type == "cpu" or (device.type == "cuda" and bool(C.with_cuda))
