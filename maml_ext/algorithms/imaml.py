"""iMAML (Rajeswaran, Finn, Kakade & Levine 2019): implicit meta-gradients.

Each task's adapted parameters approximately solve the regularised inner problem
φ* = argmin_φ L_support(φ) + λ/2 ‖φ − θ‖², by gradient steps from θ. At the solution
dφ*/dθ = (I + H/λ)⁻¹ with H = ∇²L_support(φ*), so the meta-gradient of the query loss is
(I + H/λ)⁻¹ ∇L_query(φ*), solved by conjugate gradient on Hessian-vector products. Nothing of the
inner loop is kept for the backward pass: memory does not grow with the number of inner steps.

All tasks of a meta-batch run together: parameters carry a task dimension ``[T, ...]``; gradients
and Hessian-vector products come from ``ops.mlp_hvp`` for a model that declares a fused MLP spec,
else from one batched double backward (tasks are independent, so the gradient of the summed
losses is every task's own); CG runs per task with per-task step sizes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from maml_ext import ops
from maml_ext.models import FusedMLPSpec
from maml_ext.tasks import TaskBatch

from .base import Loss, MetaLearner, Params, task_loss
from .clone import TaskClone
from .fusable import choose_spec

Vectors = dict[str, Tensor]


def conjugate_gradient(apply: Callable[[Tensor], Tensor], b: Tensor, steps: int) -> Tensor:
    """``steps`` CG iterations from 0 for A x = b, every task its own system: b ``[T, P]`` (one
    flattened parameter vector per task), A symmetric positive definite per task, ``apply``
    computing A·p for all tasks at once."""
    tiny = torch.finfo(b.dtype).tiny
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rs = (r * r).sum(1, keepdim=True)
    for _ in range(steps):
        ap = apply(p)
        curvature = (p * ap).sum(1, keepdim=True)
        # A task already solved exactly has r = p = 0: it takes no step instead of 0/0.
        alpha = torch.where(curvature > 0, rs / curvature.clamp_min(tiny), torch.zeros_like(rs))
        x = x + alpha * p
        r = r - alpha * ap
        rs_new = (r * r).sum(1, keepdim=True)
        p = r + torch.where(rs > 0, rs_new / rs.clamp_min(tiny), torch.zeros_like(rs)) * p
        rs = rs_new
    return x


class IMAML(MetaLearner):
    """Implicit MAML: every parameter is adapted by ``steps`` gradient steps (size ``lr``) on the
    support loss plus λ/2 ‖φ − θ‖², and the meta-gradient is (I + H/λ)⁻¹ ∇L_query(φ) from
    ``cg_steps`` conjugate-gradient iterations, averaged over tasks. ``meta_loss``'s value is the
    mean query loss after adaptation. Test-time adaptation (``adapt``, evaluation) solves the same
    regularised problem.

    Paper / official-code values (Omniglot 5-way 1-shot, github.com/aravindr93/imaml_dev):
    λ = 2, 16 inner steps at lr 0.1, 5 CG steps, meta-batch 32, Adam 1e-3 outer.

    Args (beyond lr, steps, loss, task_batched of :class:`MetaLearner`):
        lam: λ, the proximal regularisation strength (> 0).
        cg_steps: conjugate-gradient iterations per meta-gradient (>= 1).
        fused: use ``ops.mlp_hvp`` for plain MLPs, declared or detected, as MAML does (None: whenever
            possible; True: required, else an error).
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float = 0.1,
        steps: int = 16,
        *,
        lam: float = 2.0,
        cg_steps: int = 5,
        loss: Loss = "mse",
        fused: bool | None = None,
        task_batched: bool | None = None,
    ) -> None:
        if not (isinstance(lam, (int, float)) and not isinstance(lam, bool) and lam > 0):
            raise ValueError(f"lam must be a number > 0, got {lam!r}")
        if not (isinstance(cg_steps, int) and not isinstance(cg_steps, bool) and cg_steps >= 1):
            raise ValueError(f"cg_steps must be an integer >= 1, got {cg_steps!r}")
        super().__init__(model, lr=lr, steps=steps, loss=loss, task_batched=task_batched)
        self.lam = float(lam)
        self.cg_steps = cg_steps
        self.fused_spec: FusedMLPSpec | None = choose_spec(
            model, fused, [("a custom loss function (the fused HVPs compute mse and cross_entropy)", callable(loss))])

    # ----- per-task gradients and Hessian-vector products ----------------------------------
    def _grad_hvp(self, phi: Vectors, x: Tensor, y: Tensor, v: Vectors | None) -> tuple[Tensor, Vectors, Vectors]:
        """Per-task losses ``[T]``, gradients and (with ``v``) H·v at per-task ``phi``, detached."""
        spec = self.fused_spec
        if spec is not None:
            params = [phi[n].detach().contiguous() for n in spec.param_names]
            direction = [v[n].contiguous() for n in spec.param_names] if v is not None else None
            losses, grads, hvps = ops.mlp_hvp(params, x, y, direction, activation=spec.activation, loss=self.loss)
            hv = dict(zip(spec.param_names, (h.detach() for h in hvps))) if v is not None else {}
            return losses.detach(), dict(zip(spec.param_names, (g.detach() for g in grads))), hv
        with torch.enable_grad():  # evaluation runs under no_grad but still needs these
            inputs = {n: p.detach().requires_grad_() for n, p in phi.items()}
            losses = task_loss(self._over_tasks(inputs, {}, 1, True, x), y, self.loss)
            grads = torch.autograd.grad(losses.sum(), list(inputs.values()), create_graph=v is not None)
            hv = {}
            if v is not None:
                hvps = torch.autograd.grad(sum((g * v[n]).sum() for g, n in zip(grads, inputs)), list(inputs.values()))
                hv = dict(zip(inputs, (h.detach() for h in hvps)))
        return losses.detach(), dict(zip(inputs, (g.detach() for g in grads))), hv

    def inner_loop(
        self, x: Tensor, y: Tensor, steps: int, *, first_order: bool, lr: float | None = None
    ) -> Iterator[Params]:
        """Gradient steps on L_support(φ) + λ/2 ‖φ − θ‖² from θ, per task; no graph is kept
        (``first_order`` is accepted for the interface: the implicit gradient needs none)."""
        theta = {n: p.detach() for n, p in self.init_params().adapted.items()}
        phi = {n: p.expand(x.shape[0], *p.shape).contiguous() for n, p in theta.items()}
        names = list(phi)
        for s in range(steps):
            _, grads, _ = self._grad_hvp(phi, x, y, None)
            proximal = [grads[n] + self.lam * (phi[n] - theta[n]) for n in names]
            phi = dict(zip(names, ops.inner_update([phi[n] for n in names], proximal, self.lr if lr is None else lr)))
            yield Params(phi, {}, s + 1)

    def clone(self, first_order: bool | None = None) -> TaskClone:
        raise NotImplementedError("iMAML's meta-gradient is implicit, not backpropagated through adaptation: "
                                  "use meta_loss (a clone's backward would give MAML's gradient)")

    def meta_loss(self, batch: TaskBatch, iteration: int = 0) -> Tensor:
        params = None
        with torch.no_grad():
            for params in self.inner_loop(batch.x_support, batch.y_support, self.steps, first_order=True):
                pass
            phi = params.adapted
            query, g_query, _ = self._grad_hvp(phi, batch.x_query, batch.y_query, None)

            # CG on one flat vector per task ([T, P]): few, large tensor ops.
            names = list(phi)
            sizes = [phi[n][0].numel() for n in names]

            def flat(v: Vectors) -> Tensor:
                return torch.cat([v[n].flatten(1) for n in names], 1)

            def unflat(v: Tensor) -> Vectors:
                return {n: c.view(phi[n].shape) for n, c in zip(names, v.split(sizes, 1))}

            def system(p: Tensor) -> Tensor:  # (I + H/λ) p, H the support Hessian at φ
                _, _, hv = self._grad_hvp(phi, batch.x_support, batch.y_support, unflat(p))
                return p + flat(hv) / self.lam

            meta_grad = unflat(conjugate_gradient(system, flat(g_query), self.cg_steps))
        theta = self.init_params().adapted
        # Linear in θ with slope mean_t (I + H_t/λ)⁻¹ g_t; shifted so its value is the query loss.
        surrogate = sum((theta[n] * meta_grad[n].mean(0)).sum() for n in theta)
        return query.mean() + surrogate - surrogate.detach()
