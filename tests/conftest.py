import pytest
import torch

from maml_ext import _extension


def cuda_usable() -> bool:
    """A CUDA device is present and the compiled extension has CUDA kernels."""
    return torch.cuda.is_available() and _extension.C is not None and bool(_extension.C.with_cuda)


def pytest_collection_modifyitems(config, items):
    if cuda_usable():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device and a CUDA build of maml_ext")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
