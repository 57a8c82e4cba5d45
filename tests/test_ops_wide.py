"""Wide layers and row counts that select the other CPU kernel paths, under every CPU capability.

The shapes in the other op tests are narrow (widths <= 67, K <= 10). The engine picks its GEMM
kernels by shape: dot products for h Wᵀ once a row is >= 512 bytes (128 floats, 64 doubles),
4-vector tiles for outputs taller than one register tile, row tiles split evenly once K exceeds
one tile (12 rows with AVX-512, 6 otherwise), fused pairs of products in the Hessian-vector
product. These cases take each of those paths (and their remainders) and compare against the
float64 reference.
"""

import pytest
import torch

from _ops_helpers import TOL, as_double, assert_rel, gen, like, mlp_batch, mlp_params, randn
from maml_ext import ops, reference

# (widths, activation, loss, examples per task K, dtype)
WIDE_CASES = [
    ((1, 256, 256, 1), "relu", "mse", 10, torch.float32),  # the large benchmark's shape
    ((3, 130, 37, 2), "tanh", "gaussian_nll", 13, torch.float64),  # two row tiles, odd N
    ((2, 70, 129, 5), "tanh", "cross_entropy", 3, torch.float32),  # dot path with a k tail
    ((4, 131, 66, 3), "relu", "mse", 25, torch.float32),  # three row tiles, tall tn outputs
    ((5, 20, 7, 1), "tanh", "mse", 14, torch.float64),  # narrow: transposed-B path, K > tile
]
wide_cases = pytest.mark.parametrize(
    "widths, activation, loss, k, dtype", WIDE_CASES,
    ids=[f"{'-'.join(map(str, w))}-{a}-{l}-K{k}-{str(d)[6:]}" for w, a, l, k, d in WIDE_CASES],
)
TASKS = 3


@wide_cases
def test_mlp_hvp_wide(capability, widths, activation, loss, k, dtype):
    g = gen(20)
    params = mlp_params(g, widths, loss, tasks=TASKS, dtype=dtype)
    x, y = mlp_batch(g, widths, loss, TASKS, k, dtype)
    v = like(g, params)
    w = randn(g, TASKS, k, dtype=dtype).abs()
    got = ops.mlp_hvp(params, x, y, v, activation=activation, loss=loss, sample_weight=w)
    expected = reference.mlp_hvp(as_double(params), x.double(), *as_double([y]), as_double(v),
                                 activation=activation, loss=loss, sample_weight=w.double())
    tol = TOL[dtype] * 10
    assert_rel(got[0].double(), expected[0], tol, "loss")
    assert_rel(as_double(got[1]), expected[1], tol, "grads")
    assert_rel(as_double(got[2]), expected[2], tol, "hvps")


@wide_cases
@pytest.mark.parametrize("lr_kind", ["float", "elementwise"])
def test_mlp_maml_grad_wide(capability, widths, activation, loss, k, dtype, lr_kind):
    g = gen(21)
    params = mlp_params(g, widths, loss, dtype=dtype)
    xs, ys = mlp_batch(g, widths, loss, TASKS, k, dtype)
    xq, yq = mlp_batch(g, widths, loss, TASKS, k + 1, dtype)
    if lr_kind == "float":
        lr, lr64 = 0.01, 0.01
    else:
        lr = [0.01 * (1 + torch.rand(p.shape, generator=g, dtype=dtype)) for p in params]
        lr64 = as_double(lr)
    weight = randn(g, TASKS, dtype=dtype)
    kw = dict(steps=3, activation=activation, loss=loss)
    got = ops.mlp_maml_grad(params, xs, ys, xq, yq, lr=lr, loss_weight=weight, **kw)
    expected = reference.mlp_maml_grad(as_double(params), xs.double(), *as_double([ys]), xq.double(),
                                       *as_double([yq]), lr=lr64, loss_weight=weight.double(), **kw)
    tol = TOL[dtype] * 10
    assert_rel(got[0].double(), expected[0], tol, "query loss")
    assert_rel(as_double(got[1]), expected[1], tol, "meta-gradient")
    assert_rel(as_double(got[2]), expected[2], tol, "lr gradient")
