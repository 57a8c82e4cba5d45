"""The cases of ops.mlp_maml / mlp_maml_grad shared by the op tests (test_ops_mlp_maml,
test_ops_mlp_maml_grad, test_ops_batched, test_ops_mlp_fused, test_ops_cuda) and their helpers."""

from dataclasses import dataclass

import torch

from _ops_helpers import dot, gen, leaves, mlp_batch, mlp_params, randn
from maml_ext import reference
from maml_ext.reference import split_lr


@dataclass(frozen=True)
class Case:
    tasks: int
    k: int
    widths: tuple
    activation: str
    loss: str
    steps: int
    lr_kind: str  # float | scalar | elementwise | per_step | per_step_scalar
    first_order: bool = False
    snapshots: bool | int = False
    weighted: bool = False

    def __str__(self):
        w = "-".join(map(str, self.widths))
        parts = [f"T{self.tasks}", f"K{self.k}", w, self.activation, self.loss, f"S{self.steps}",
                 self.lr_kind, "FO" if self.first_order else "SO"]
        if self.snapshots is not False:
            parts.append(f"snap{self.snapshots}")
        if self.weighted:
            parts.append("weighted")
        return "-".join(parts)

    def inputs(self, seed=0, dtype=torch.float64):
        """(params, lr, data kwargs): shared initialisation, learning rates, support/query sets."""
        g = gen(seed)
        params = mlp_params(g, self.widths, self.loss, dtype=dtype)
        xs, ys = mlp_batch(g, self.widths, self.loss, self.tasks, self.k, dtype)
        xq, yq = mlp_batch(g, self.widths, self.loss, self.tasks, self.k + 2, dtype)
        data = dict(x_support=xs, y_support=ys, x_query=xq, y_query=yq)
        if self.weighted:
            # Positive support weights keep S steps on a weighted NLL from diverging.
            data["w_support"] = 0.5 + torch.rand(self.tasks, self.k, generator=g, dtype=dtype)
            data["w_query"] = randn(g, self.tasks, self.k + 2, dtype=dtype)
        base = 0.05 if self.loss != "gaussian_nll" else 0.02
        lead = (self.steps,) if self.lr_kind.startswith("per_step") else ()
        if self.lr_kind == "float":
            lr = base
        elif self.lr_kind in ("scalar", "per_step_scalar"):
            lr = [base * (1 + 0.5 * torch.rand(lead, generator=g, dtype=dtype)) for _ in params]
        else:
            lr = [base * (1 + 0.5 * torch.rand(*lead, *p.shape, generator=g, dtype=dtype)) for p in params]
        return params, lr, data

    def kwargs(self, **overrides):
        kw = dict(steps=self.steps, per_step_lr=self.lr_kind.startswith("per_step"),
                  activation=self.activation, loss=self.loss, first_order=self.first_order,
                  snapshots=self.snapshots)
        kw.update(overrides)
        return kw


CASES = [
    Case(1, 1, (1, 5, 1), "relu", "mse", 1, "float"),
    Case(3, 5, (2, 7, 3), "tanh", "mse", 2, "scalar"),
    Case(25, 10, (1, 9, 9, 1), "relu", "mse", 5, "elementwise", snapshots=True),
    Case(3, 10, (3, 5, 3, 7, 4), "relu", "cross_entropy", 2, "per_step"),
    Case(25, 5, (2, 11, 3), "tanh", "cross_entropy", 1, "float", first_order=True),
    Case(3, 5, (2, 7, 2), "tanh", "gaussian_nll", 5, "per_step_scalar", snapshots=2, weighted=True),
    Case(1, 10, (3, 5, 5, 2), "relu", "gaussian_nll", 2, "elementwise", first_order=True, weighted=True),
    Case(3, 1, (1, 3, 1), "tanh", "mse", 5, "float", first_order=True, snapshots=True),
    Case(25, 10, (1, 13, 13, 1), "relu", "mse", 5, "scalar", snapshots=True),
    Case(3, 5, (2, 5, 2), "relu", "gaussian_nll", 2, "scalar", first_order=True, weighted=True),
    Case(3, 5, (2, 7, 3), "tanh", "cross_entropy", 5, "per_step", snapshots=3, weighted=True),
    Case(3, 5, (2, 7, 3), "tanh", "mse", 5, "per_step_scalar", first_order=True, snapshots=1),
]
def lr_list(lr):
    return [] if isinstance(lr, float) else lr


def run(fn, case, params, lr, data, **overrides):
    return fn(params, lr=lr, **data, **case.kwargs(**overrides))


def meta_gradients(fn, case, params, lr, data, cot, **overrides):
    """Outputs and d/d(params, lr tensors) of Σ c_t·L_t + <u, adapted>."""
    p = leaves(params)
    a = lr if isinstance(lr, float) else leaves(lr)
    query_loss, adapted = run(fn, case, p, a, data, **overrides)
    c, u = cot
    objective = (c * query_loss).sum() + dot(u, adapted)
    grads = torch.autograd.grad(objective, [*p, *lr_list(a)])
    return query_loss.detach(), [t.detach() for t in adapted], grads


def cotangents(case, params, seed=1):
    g = gen(seed)
    return randn(g, case.tasks), [randn(g, case.tasks, *p.shape) for p in params]


# Beyond CASES: the paper's sinusoid net, query sets larger than the support
# sets (workspace sized by the larger), deep nets and every loss with per-step elementwise rates.
EXTRA = [
    Case(4, 10, (1, 40, 40, 1), "relu", "mse", 3, "float"),
    Case(2, 3, (2, 4, 3, 5, 4, 3, 2), "tanh", "cross_entropy", 2, "per_step", weighted=True),
    Case(2, 4, (3, 6, 2), "relu", "gaussian_nll", 3, "per_step", weighted=True),
    Case(3, 6, (2, 5, 3), "tanh", "gaussian_nll", 4, "elementwise"),
    Case(2, 5, (2, 5, 3), "relu", "cross_entropy", 3, "per_step_scalar", first_order=True),
]


def grad_args(case, seed, dtype=torch.float64):
    params, lr, data = case.inputs(seed=seed, dtype=dtype)
    lrs, lr_value = split_lr(lr)
    weight = randn(gen(seed + 1), case.tasks, dtype=dtype)
    return (params, lrs, lr_value, case.lr_kind.startswith("per_step"), data["x_support"],
            data["y_support"], data.get("w_support"), data["x_query"], data["y_query"],
            data.get("w_query"), case.steps, case.activation, case.loss, case.first_order, weight)


def reference_grad(args):
    params, lrs, lr_value, per_step, xs, ys, ws, xq, yq, wq, steps, act, loss, fo, weight = args
    return reference.mlp_maml_grad(
        params, xs, ys, xq, yq, lr=list(lrs) if lrs else lr_value, steps=steps, per_step_lr=per_step,
        activation=act, loss=loss, first_order=fo, w_support=ws, w_query=wq, loss_weight=weight)
