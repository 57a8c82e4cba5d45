"""Tasks spread over threads (at::parallel_for) give the results of one thread."""

import pytest
import torch

from _ops_helpers import assert_rel, gen, leaves, mlp_batch, mlp_params, requires_extension
from maml_ext import ops

pytestmark = requires_extension


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_multithreaded_meta_gradients_equal_single_thread(two_threads):
    # Large enough per task that the kernels split the tasks over threads.
    g = gen(12)
    widths, tasks, k = (4, 200, 200, 3), 6, 20
    params = mlp_params(g, widths)
    xs, ys = mlp_batch(g, widths, "mse", tasks, k)
    xq, yq = mlp_batch(g, widths, "mse", tasks, k)
    lrs = [torch.full((2,), 0.01, dtype=torch.float64) for _ in params]

    def run():
        p, a = leaves(params), leaves(lrs)
        loss, _ = ops.mlp_maml(p, xs, ys, xq, yq, lr=a, steps=2, per_step_lr=True)
        grads = torch.autograd.grad(loss.mean(), [*p, *a])
        fused = ops.mlp_maml_grad(params, xs, ys, xq, yq, lr=lrs, steps=2, per_step_lr=True)
        return [loss.detach(), *grads, fused[0], *fused[1], *fused[2]]

    torch.set_num_threads(1)
    single = run()
    torch.set_num_threads(2)
    assert_rel(run(), single, what="two threads vs one")
