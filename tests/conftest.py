import pytest

from _ops_helpers import cuda_usable


def pytest_collection_modifyitems(config, items):
    if cuda_usable():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device and a CUDA build of maml_ext")
    for item in items:
        # The marker, not item.keywords: keywords also hold directory names (a checkout in .../cuda).
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)
