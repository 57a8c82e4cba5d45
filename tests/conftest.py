import pytest

from _ops_helpers import cuda_usable
from maml_ext import _extension, ops


def pytest_collection_modifyitems(config, items):
    if cuda_usable():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device and a CUDA build of maml_ext")
    for item in items:
        # The marker, not item.keywords: keywords also hold directory names (a checkout in .../cuda).
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


# Every compiled CPU kernel variant (test_ops_cpu, test_ops_wide): skipped where the CPU lacks it.
@pytest.fixture(params=["default", "avx2", "avx512"])
def capability(request):
    if not ops.extension_available():
        pytest.skip("the compiled maml_ext kernels are not loaded")
    c = _extension.C
    original = c.cpu_capability()
    try:
        c.set_cpu_capability(request.param)
    except RuntimeError as exc:
        pytest.skip(str(exc))
    assert c.cpu_capability() == request.param
    yield request.param
    c.set_cpu_capability(original)
