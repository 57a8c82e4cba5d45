"""maml_ext: fast exact second-order MAML for PyTorch.

``maml_ext.ops`` holds the fused operators (C++/CUDA, with autograd), ``maml_ext.reference`` their
pure-PyTorch twins. The rest of the package (algorithms, tasks, models, training) is imported on
first use so that ``import maml_ext`` stays cheap and never fails because of a plugin.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch  # noqa: F401  (libtorch must be loaded before the compiled extension)

from maml_ext import ops, reference

__version__ = "0.1.0"
__all__ = ["ops", "reference", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy submodules: `maml_ext.algorithms`, `maml_ext.tasks`, ... are imported when touched.
    try:
        return importlib.import_module(f"maml_ext.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"maml_ext.{name}":
            raise
        raise AttributeError(f"module 'maml_ext' has no attribute {name!r}") from None
