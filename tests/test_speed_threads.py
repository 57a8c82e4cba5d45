"""The CPU kernels run in parallel (torch's OpenMP backend) and their sums over tasks are bitwise
the same for any thread count: tasks are summed per fixed chunk in task order, then the chunks in
order (per-thread partial sums would change with torch.set_num_threads)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from _ops_helpers import gen, leaves, mlp_batch, mlp_params, requires_extension
from maml_ext import _extension, ops

pytestmark = requires_extension

# 17k parameters x 8 examples x 4 steps = 0.54M multiply-adds per task: chunks of 3 tasks (the
# kernels' grain), so 7, 13 and 70 tasks make 3, 5 and 24 chunks with a shorter last one, split
# unevenly over 2 and 3 threads.
WIDTHS, K, STEPS = (1, 128, 128, 2), 8, 4


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _problem(dtype: torch.dtype, tasks: int):
    g = gen(5)
    params = [p.to(dtype) for p in mlp_params(g, WIDTHS)]
    xs, ys = (t.to(dtype) for t in mlp_batch(g, WIDTHS, "mse", tasks, K))
    xq, yq = (t.to(dtype) for t in mlp_batch(g, WIDTHS, "mse", tasks, K))
    return params, xs, ys, xq, yq


def _results(dtype: torch.dtype, tasks: int, lr_kind: str) -> list[torch.Tensor]:
    params, xs, ys, xq, yq = _problem(dtype, tasks)
    if lr_kind == "float":
        lrs: float | list[torch.Tensor] = 0.003
    else:  # Meta-SGD: learned elementwise rates, whose gradients are summed over tasks too
        lrs = [torch.full_like(p, 0.003) for p in params]
    query_loss, grads, lr_grads = ops.mlp_maml_grad(params, xs, ys, xq, yq, lr=lrs, steps=STEPS)
    # The general op's backward (per-task rows summed by the caller) must be as reproducible.
    p = leaves(params)
    a = leaves(lrs) if isinstance(lrs, list) else lrs
    loss, _ = ops.mlp_maml(p, xs, ys, xq, yq, lr=a, steps=STEPS)
    inputs = [*p, *(a if isinstance(a, list) else [])]
    back = torch.autograd.grad(loss.mean(), inputs)
    return [query_loss, *grads, *lr_grads, loss.detach(), *back]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("tasks", [7, 13, 70])
@pytest.mark.parametrize("lr_kind", ["float", "elementwise"])
def test_bitwise_equal_for_1_2_3_threads(restore_threads, dtype, tasks, lr_kind):
    by_threads = {}
    for n in (1, 2, 3):
        torch.set_num_threads(n)
        by_threads[n] = _results(dtype, tasks, lr_kind)
    for n in (2, 3):
        for i, (a, b) in enumerate(zip(by_threads[n], by_threads[1])):
            assert torch.equal(a, b), (
                f"{n} threads vs 1, output {i}: max abs diff {(a - b).abs().max().item():.3e}"
            )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads ELF symbols and /proc")
def test_built_with_torchs_openmp_runtime():
    """A build without -fopenmp runs every at::parallel_for serially and imports no GOMP symbol;
    a second OpenMP runtime next to torch's would oversubscribe the cores."""
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        pytest.skip("torch's parallel backend is not OpenMP")
    so = Path(_extension.C.__file__)
    assert b"GOMP_parallel" in so.read_bytes(), f"{so.name} has no OpenMP parallel regions"
    maps = Path("/proc/self/maps").read_text().splitlines()
    runtimes = {line.split()[-1] for line in maps if "libgomp" in line or "libiomp" in line
                or "libomp" in line}
    assert len(runtimes) == 1, f"more than one OpenMP runtime loaded: {sorted(runtimes)}"
