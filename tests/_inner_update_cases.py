"""The cases of ops.inner_update shared by test_ops_inner_update and test_ops_cuda."""

import torch

from _ops_helpers import gen, randn

# Parameter shapes of one task: a matrix, a vector, a 0-dim scalar and a 3-d tensor.
SHAPES = [(7, 3), (7,), (), (2, 3, 4)]
SMALL_SHAPES = [(3, 2), (3,), ()]  # for finite differences
STEPS = 3
LAYOUTS = ["shared", "per_task"]
LR_KINDS = ["float", "scalar", "elementwise", "per_step", "per_step_scalar"]


def make_case(layout, lr_kind, tasks, seed=0, dtype=torch.float64, shapes=SHAPES):
    """(params, grads, lr, step) with θ shared ([*shape], g [T, *shape]) or per task ([T, *shape])."""
    g = gen(seed)
    params = [randn(g, *((tasks,) if layout == "per_task" else ()), *s, dtype=dtype) for s in shapes]
    grads = [randn(g, tasks, *s, dtype=dtype) for s in shapes]
    step = None
    if lr_kind == "float":
        lr = 0.07
    elif lr_kind == "scalar":
        lr = [randn(g, dtype=dtype).abs() for _ in shapes]
    elif lr_kind == "elementwise":  # Meta-SGD: one rate per entry of a task's parameter
        lr = [randn(g, *s, dtype=dtype).abs() for s in shapes]
    elif lr_kind == "per_step":  # MAML++ LSLR with elementwise rates
        lr, step = [randn(g, STEPS, *s, dtype=dtype).abs() for s in shapes], 1
    else:
        lr, step = [randn(g, STEPS, dtype=dtype).abs() for _ in shapes], 2
    return params, grads, lr, step


def closed_form(params, grads, lr, step):
    out = []
    for i, (p, g) in enumerate(zip(params, grads)):
        a = lr if isinstance(lr, float) else (lr[i] if step is None else lr[i][step])
        out.append(p - a * g)
    return out


def lr_tensors(lr):
    return [] if isinstance(lr, float) else lr
