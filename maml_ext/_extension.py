"""Loads the compiled kernels (maml_ext._C) or explains why the pure-PyTorch reference is used."""

from __future__ import annotations

import os
import warnings
from types import ModuleType

import torch

NO_EXTENSION_ENV = "MAML_EXT_NO_EXTENSION"


def _public(version: str) -> str:
    return version.split("+", 1)[0]


def _load() -> tuple[ModuleType | None, str]:
    if os.environ.get(NO_EXTENSION_ENV, "") not in ("", "0"):
        return None, f"disabled by {NO_EXTENSION_ENV}"
    try:
        from maml_ext import _C
    except ImportError as exc:
        warnings.warn(
            f"maml_ext: compiled kernels unavailable ({exc}); using the pure-PyTorch reference. "
            "Build with `pip install --no-build-isolation .`",
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
