"""Build-time metadata provider: pins the runtime torch to the torch the extension is built against.

scikit-build-core imports this module while building (``[tool.scikit-build.metadata]`` in
pyproject.toml). A C++ extension built against torch X crashes or fails to import under torch Y,
so the wheel must never let pip swap torch under it.
"""

from __future__ import annotations

from typing import Any

BASE_DEPENDENCIES = ["numpy>=1.22"]


def torch_requirement(version: str) -> str:
    """``torch==X.Y.Z`` for a torch version string such as ``2.13.0+cpu``."""
    public = version.split("+", 1)[0]
    return f"torch=={public}"


def dynamic_metadata(field: str, settings: Any = None, project: Any = None) -> list[str]:
    if field != "dependencies":
        raise RuntimeError(f"_torch_pin only provides 'dependencies', not {field!r}")
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - exercised only by broken build set-ups
        raise RuntimeError(
            "maml_ext is built against the installed torch: install torch first "
            "(e.g. `pip install torch==2.13.0`) and build with `pip install --no-build-isolation .`"
        ) from exc
    return [*BASE_DEPENDENCIES, torch_requirement(torch.__version__)]
