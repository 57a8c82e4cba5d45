"""TRPO's KL Hessian-vector products for MAML-RL from passes computed once per meta-step.

The Hessian of the mean KL w.r.t. θ at θ is mean_t J_tᵀ F_t J_t with J_t = I − α H_t (see
:mod:`maml_ext.rl.algorithms`). Each conjugate-gradient iteration multiplies by it, but the
networks involved do not change within a meta-step: θ on each task's pre-update samples (for the
inner loss's Hessian H_t) and the adapted policies θ'_t on the post-update samples (for the
Fisher matrix F_t). :class:`KLHessian` runs their forward passes and the inner loss's backward
pass once and keeps the activations and deltas, so a product costs only directional passes:

* H_t w (for J_t v and J_tᵀ w): Pearlmutter's R-operator, a forward pass in the direction and
  the backward pass of the directional derivatives, both on the cached passes;
* F_t u in Gauss-Newton form: the means' Jacobian-vector product, the diagonal Gaussian Fisher
  (1/σ² per mean, 2 per log-std), the means' vector-Jacobian product. The KL's residual terms
  vanish at θ'_t = θ'_old, so this is F_t itself, not an approximation of it.

The last product, J_tᵀ (F_t J_t v) summed over tasks, sums inside its weight-gradient GEMMs (one
[T·K, out]ᵀ [T·K, in] product per layer instead of T). Plain batched torch matmuls throughout:
no autograd graph, no third derivatives, any device.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def _per_example(b: Tensor) -> Tensor:
    """A per-layer vector [n] or per-task [T, n], broadcastable against [T, K, n]."""
    return b.unsqueeze(-2) if b.dim() == 2 else b


def _products(pairs: Sequence[tuple[Tensor, Tensor]], bias: Tensor | None = None) -> Tensor:
    """bias + Σ a @ b over ``pairs``, a [T, K, n], b shared [n, m] or per task [T, n, m].

    Each further product and the bias accumulate into the first result inside the GEMM
    (addmm/baddbmm), not in separate passes over the [T, K, m] result: at the paper's size those
    passes cost as much as the products themselves.
    """
    (a, b), rest = pairs[0], pairs[1:]
    if bias is not None and b.dim() == 3:
        out = torch.baddbmm(_per_example(bias), a, b)
    elif bias is not None and bias.dim() == 1:
        out = torch.addmm(bias, a.reshape(-1, a.shape[-1]), b).view(*a.shape[:-1], b.shape[-1])
    else:
        out = a @ b
        if bias is not None:
            out += _per_example(bias)
    for a, b in rest:
        if b.dim() == 3:
            out.baddbmm_(a, b)
        else:
            out.view(-1, out.shape[-1]).addmm_(a.reshape(-1, a.shape[-1]), b)
    return out


def _weight_grad(pairs: Sequence[tuple[Tensor, Tensor]], sum_tasks: bool) -> Tensor:
    """Σ over ``pairs`` (δ, a) of Σ_k δ_kᵀ a_k: per task [T, out, in], or also summed over tasks
    [out, in], in one [T·K, out]ᵀ [T·K, in] GEMM per pair."""
    if sum_tasks:
        pairs = [(d.reshape(-1, d.shape[-1]), a.reshape(-1, a.shape[-1])) for d, a in pairs]
    out = pairs[0][0].transpose(-1, -2) @ pairs[0][1]
    for d, a in pairs[1:]:
        out += d.transpose(-1, -2) @ a  # [out, in] per task: small next to the products
    return out


class _Network:
    """An MLP's forward pass on x [T, K, in], kept for directional passes.

    ``weights``/``biases`` shared ([out, in]) or per task ([T, out, in]). ``slopes[l]`` is
    σ'(z_l) of hidden layer l, ``curvatures[l]`` σ''(z_l) (tanh only: ReLU's is zero a.e.).
    """

    def __init__(self, weights: Sequence[Tensor], biases: Sequence[Tensor], x: Tensor, activation: str) -> None:
        self.weights_t = [w.transpose(-1, -2) for w in weights]
        self.weights = list(weights)
        self.inputs: list[Tensor] = []
        self.slopes: list[Tensor] = []
        self.curvatures: list[Tensor] = []
        h = x
        for w_t, b in zip(self.weights_t[:-1], biases[:-1]):
            self.inputs.append(h)
            z = _products([(h, w_t)], b)
            if activation == "relu":
                h = z.clamp_min(0)
                self.slopes.append((z > 0).to(z.dtype))
            else:
                h = torch.tanh(z)
                self.slopes.append(1 - h * h)
                self.curvatures.append(-2 * h * self.slopes[-1])
        self.inputs.append(h)
        self.output = _products([(h, self.weights_t[-1])], biases[-1])

    def jvp(self, dw: Sequence[Tensor], db: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor], Tensor]:
        """R-forward: the directional derivatives of the hidden pre-activations (rz) and
        activations (ra), and of the output."""
        rz: list[Tensor] = []
        ra: list[Tensor] = []
        r = _products([(self.inputs[0], dw[0].transpose(-1, -2))], db[0])  # the input does not move
        for layer in range(1, len(self.weights)):
            rz.append(r)
            ra.append(self.slopes[layer - 1] * r)
            r = _products([(ra[-1], self.weights_t[layer]), (self.inputs[layer], dw[layer].transpose(-1, -2))],
                          db[layer])
        return rz, ra, r

    def backward(self, top: Tensor, sum_tasks: bool, second: _Backward | None = None,
                 rz: Sequence[Tensor] = (), ra: Sequence[Tensor] = (), dw: Sequence[Tensor] = ()) -> list[Tensor]:
        """Backpropagate ``top`` (∂/∂output) to [W1, b1, ..., WL, bL] gradients.

        With ``second`` (a cached plain backward pass) this is the R-operator of that pass in the
        direction whose R-forward gave ``rz``/``ra`` and whose weights were ``dw``: the terms where
        the activations and weights move are added. Without it, a Gauss-Newton product Jᵀ top.
        """
        grads: list[Tensor] = []
        d = top
        for layer in range(len(self.weights) - 1, -1, -1):
            pairs = [(d, self.inputs[layer])]
            if second is not None and layer > 0:  # δ_lᵀ R(a_{l-1})
                pairs.append((second.deltas[layer], ra[layer - 1]))
            grads[0:0] = [_weight_grad(pairs, sum_tasks), d.sum(dim=(0, 1) if sum_tasks else 1)]
            if layer == 0:
                break
            pairs = [(d, self.weights[layer])]
            if second is not None:
                pairs.append((second.deltas[layer], dw[layer]))
            d = _products(pairs).mul_(self.slopes[layer - 1])
            if second is not None and self.curvatures:
                d.addcmul_(second.curved[layer - 1], rz[layer - 1])
        return grads


class _Backward:
    """The plain backward pass of ``top`` through a cached network: each layer's delta
    ∂/∂z_l and (tanh) the ∂/∂a_l · σ''(z_l) terms the R-operator needs."""

    def __init__(self, net: _Network, top: Tensor) -> None:
        self.deltas = [top]
        self.curved: list[Tensor] = []
        for layer in range(len(net.weights) - 1, 0, -1):
            da = self.deltas[0] @ net.weights[layer]
            self.deltas.insert(0, da * net.slopes[layer - 1])
            if net.curvatures:
                self.curved.insert(0, da * net.curvatures[layer - 1])


class KLHessian:
    """v ↦ Σ_t J_tᵀ F_t J_t v for one meta-batch (this process's tasks; the caller averages).

    Args:
        params: θ, [W1, b1, ..., WL, bL, log_std] shared over tasks.
        adapted: θ'_t per task ([T, ...] each), the policies of the post-update samples.
        pre_obs, pre_actions, pre_weight: the inner loss's samples and weights (A · valid) [T, K, ·].
        post_obs, post_valid: the post-update samples and their mean-over-taken-steps weights.
        lr: the inner step size α. first_order: J_t = I (FOMAML).

    Memory: the kept passes are about ten [T, K, hidden width] tensors (0.64 GB in float32 at the
    paper's HalfCheetah size, 40 tasks × 4,000 samples × 100).
    """

    def __init__(self, params: Sequence[Tensor], adapted: Sequence[Tensor], pre_obs: Tensor, pre_actions: Tensor,
                 pre_weight: Tensor, post_obs: Tensor, post_valid: Tensor, lr: float, activation: str,
                 first_order: bool = False) -> None:
        if activation not in ("relu", "tanh"):
            raise ValueError(f"activation must be 'relu' or 'tanh', got {activation!r}")
        if len(adapted) != len(params) or any(a.dim() != p.dim() + 1 for a, p in zip(adapted, params)):
            raise ValueError("adapted must hold one [T, ...] tensor per tensor of params (per-task copies), got shapes "
                             f"{[tuple(a.shape) for a in adapted]} for params {[tuple(p.shape) for p in params]}")
        self.lr, self.first_order = lr, first_order
        # F_t: the adapted policies on the post-update samples; per example valid/K · (1/σ²)
        self.post = _Network(adapted[0:-1:2], adapted[1:-1:2], post_obs, activation)
        k = post_obs.shape[1]
        self.fisher_scale = (post_valid / k).unsqueeze(-1) * torch.exp(-2 * _per_example(adapted[-1]))
        if first_order:
            return
        # H_t: the weighted Gaussian NLL of θ on the pre-update samples, mean over K of
        # c_k Σ_j (½ r_kj² e_j + s_j), r = y − μ, e = exp(−2s), c = weight / K
        self.pre = _Network(params[0:-1:2], params[1:-1:2], pre_obs, activation)
        c = (pre_weight / pre_obs.shape[1]).unsqueeze(-1)
        e = torch.exp(-2 * params[-1])
        r = pre_actions - self.pre.output
        self.pre_mean_curv = c * e  # ∂²/∂μ²
        self.pre_cross = 2 * c * r * e  # ∂²/∂μ∂s
        self.pre_log_std_curv = (self.pre_cross * r).sum(1)  # ∂²/∂s², [T, act]
        self.pre_backward = _Backward(self.pre, -c * r * e)

    def _split(self, v: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor], Tensor]:
        return list(v[0:-1:2]), list(v[1:-1:2]), v[-1]

    def inner_hvp(self, v: Sequence[Tensor], sum_tasks: bool) -> list[Tensor]:
        """H_t v per task ([T, ...] each; v shared or per task), or Σ_t H_t v_t."""
        dw, db, ds = self._split(v)
        rz, ra, rmu = self.pre.jvp(dw, db)
        top = self.pre_mean_curv * rmu + self.pre_cross * _per_example(ds)
        grads = self.pre.backward(top, sum_tasks, self.pre_backward, rz, ra, dw)
        log_std = (self.pre_cross * rmu).sum(1) + self.pre_log_std_curv * ds
        return grads + [log_std.sum(0) if sum_tasks else log_std]

    def fisher(self, u: Sequence[Tensor], sum_tasks: bool) -> list[Tensor]:
        """F_t u_t per task, or Σ_t F_t u_t (u shared or per task)."""
        dw, db, ds = self._split(u)
        _, _, rmu = self.post.jvp(dw, db)
        grads = self.post.backward(self.fisher_scale * rmu, sum_tasks)
        tasks = self.post.output.shape[0]
        log_std = 2.0 * (ds.expand(tasks, *ds.shape[-1:]) if ds.dim() == 1 else ds)  # the KL's 2·I block
        return grads + [log_std.sum(0) if sum_tasks else log_std]

    def __call__(self, v: Sequence[Tensor]) -> list[Tensor]:
        """Σ_t J_tᵀ F_t J_t v for a shared direction v."""
        if self.first_order:
            return self.fisher(v, sum_tasks=True)
        u = [a - self.lr * b for a, b in zip(v, self.inner_hvp(v, sum_tasks=False))]
        fu = self.fisher(u, sum_tasks=False)
        return [a.sum(0) - self.lr * b for a, b in zip(fu, self.inner_hvp(fu, sum_tasks=True))]
