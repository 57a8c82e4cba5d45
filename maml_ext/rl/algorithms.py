"""MAML for RL (paper §5.3): a REINFORCE inner step per task, the meta-objective on the
post-update rollouts, and a TRPO or Adam meta-optimizer, on the fused MLP ops.

The inner loss of task t is the advantage-weighted Gaussian negative log-likelihood
``L_t(θ) = −mean_valid(A · log π_θ(a|s))``, which is ``ops`` loss ``"gaussian_nll"`` with
``sample_weight = A · valid`` (``valid`` rescales the padded steps away, so the mean over the
R·H slots equals the mean over the steps actually taken). ``ops.mlp_maml`` adapts all tasks at
once, θ'_t = θ − α∇L_t(θ), and ``ops.mlp_maml_grad`` gives the meta-gradient of the post-update
surrogate through that step exactly (second order: the inner Hessian enters through analytic
Hessian-vector products, no autograd graph).

TRPO's KL Hessian-vector products are exact too, not finite differences. At the current
parameters the KL's gradient vanishes, so its Hessian w.r.t. θ is Jᵀ F J with J = dθ'/dθ =
I − α H_t (the inner-loss Hessian) and F the Fisher matrix of the adapted Gaussian policy: no
step size ε (the paper's finite differences of the meta-gradient trade truncation against
rounding error) and no third derivatives. Two implementations compute it:
:class:`~maml_ext.rl.kl_hessian.KLHessian` (the default) keeps the forward and backward passes of
θ on the pre-update samples and of θ'_t on the post-update samples for the whole meta-step and
runs only directional passes per product; ``kl_hvp_fused`` makes three fused ``ops.mlp_hvp`` calls
per product (H_t·v; F·u as the Hessian of the Gaussian NLL whose targets are the adapted policy's
own means, where a zero residual leaves exactly the Gauss-Newton term JμᵀΣ⁻¹Jμ, plus the log-std
block 2·I that this NLL lacks; H_t·w), each recomputing its passes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.nn.utils import vector_to_parameters

from maml_ext import ops
from maml_ext.train import progress

from . import baseline, policy, trpo
from .envs.base import TaskEnv
from .kl_hessian import KLHessian
from .policy import LOSS, GaussianMLPPolicy
from .rollouts import Rollouts, sample

OPTIMIZERS = ("trpo", "adam")
KL_PRODUCTS = ("cached", "fused")  # MetaObjective.kl_hvp, MetaObjective.kl_hvp_fused


def flat(tensors: Sequence[Tensor]) -> Tensor:
    """One vector of all entries (any strides: the reference ops may return expanded views)."""
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(vector: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    """Inverse of :func:`flat` for tensors shaped like ``like``."""
    return [c.view_as(t) for c, t in zip(torch.split(vector, [t.numel() for t in like]), like)]


@dataclass
class TaskData:
    """One batch of rollouts in the fused ops' layout (K = R·H examples per task).

    ``valid`` is ``mask · K / n_valid`` per task: a mean over K of ``valid · x`` is the mean of x
    over the steps taken. ``weight = advantages · valid`` is the inner loss's sample weight.
    """

    obs: Tensor  # [T, K, obs_dim]
    actions: Tensor  # [T, K, act_dim]
    advantages: Tensor  # [T, K], zero on padding
    valid: Tensor  # [T, K]

    @property
    def weight(self) -> Tensor:
        return self.advantages * self.valid

    def subsample(self, fraction: float) -> TaskData:
        """Every task's same ``int(K · fraction)`` (at least 1) evenly spaced samples: rllab's
        ``subsample_factor`` for TRPO's Hessian products, as a systematic sample (no random state
        to checkpoint; with K = R·H in rollout-major order it spreads over every rollout). Means
        over the kept slots of ``valid · x`` still estimate the means over the steps taken."""
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
        k = self.obs.shape[1]
        n = max(1, int(k * fraction))
        if n == k:
            return self
        rows = torch.arange(n, device=self.obs.device) * k // n
        return TaskData(self.obs[:, rows], self.actions[:, rows], self.advantages[:, rows], self.valid[:, rows])


def process(rollouts: Rollouts, gamma: float = 0.99, gae_lambda: float = 1.0, center: bool = True) -> TaskData:
    """Returns, the per-task linear baseline, GAE advantages (centred per task) and the layout."""
    returns = baseline.discounted_returns(rollouts.rewards, rollouts.mask, gamma)
    values = baseline.fit_linear_baseline(rollouts.obs, returns, rollouts.mask)
    adv = baseline.gae(rollouts.rewards, values, rollouts.mask, gamma, gae_lambda)
    if center:
        adv = baseline.center(adv, rollouts.mask)
    obs, actions, mask = rollouts.flat()
    valid = mask * mask.shape[1] / mask.sum(1, keepdim=True).clamp_min(1.0)
    return TaskData(obs, actions, adv.reshape(mask.shape), valid)


@torch.no_grad()
def adapt(params: Sequence[Tensor], data: TaskData, lr: float, activation: str = "relu") -> list[Tensor]:
    """One policy-gradient step per task, θ'_t = θ − α∇L_t(θ): from shared parameters by the fused
    ``mlp_maml``; from per-task parameters ``[T, ...]`` (later test-time steps) with the per-task
    gradient of the fused ``mlp_hvp`` (its gradient-only mode) and ``ops.inner_update``."""
    params = [p.detach() for p in params]
    if params[0].dim() == 2:
        one_x, one_y = data.obs[:, :1], data.actions[:, :1]  # the query set is not used here
        _, adapted = ops.mlp_maml(params, data.obs, data.actions, one_x, one_y, lr=lr, steps=1,
                                  activation=activation, loss=LOSS, w_support=data.weight)
        return adapted
    _, grads, _ = ops.mlp_hvp(params, data.obs, data.actions, None, activation=activation, loss=LOSS,
                              sample_weight=data.weight)  # gradient-only mode: no R-pass
    return ops.inner_update(params, grads, lr)


class MetaObjective:
    """The post-update surrogate of one meta-batch as a function of the initialisation θ.

    ``pre`` (rollouts of θ) defines each task's inner step, ``post`` (rollouts of the adapted
    policies θ'_t) the objective L(θ) = −mean_t mean_valid(π_θ'_t(a|s) / π_old'_t(a|s) · A) and
    the constraint mean_t mean_valid KL(π_old'_t ‖ π_θ'_t), both evaluated on the post-update
    samples with the adapted policies recomputed from θ.
    """

    def __init__(self, params: Sequence[Tensor], pre: TaskData, post: TaskData, lr: float,
                 activation: str = "relu", first_order: bool = False,
                 adapted: Sequence[Tensor] | None = None, total_tasks: int | None = None,
                 reduce: Callable[[Tensor], Tensor] | None = None, hvp_subsample: float = 1.0) -> None:
        # Data parallel: this process holds ``pre.obs.shape[0]`` of ``total_tasks`` tasks; every
        # mean over tasks is a local sum / total_tasks completed by ``reduce`` (an all-reduce).
        if not 0 < hvp_subsample <= 1:
            raise ValueError(f"hvp_subsample must be in (0, 1], got {hvp_subsample!r}")
        self.total = pre.obs.shape[0] if total_tasks is None else total_tasks
        self.reduce = reduce if reduce is not None else (lambda x: x)
        self.params = [p.detach() for p in params]
        self.pre, self.post, self.lr = pre, post, lr
        self.hvp_subsample = hvp_subsample  # fraction of each task's samples kl_hvp uses
        self.activation, self.first_order = activation, first_order
        # the adapted policies the post-update rollouts came from (recomputed when not given)
        self.adapted = list(adapted) if adapted is not None else adapt(self.params, pre, lr, activation)
        tasks = pre.obs.shape[0]
        self._per_task = [p.expand(tasks, *p.shape).contiguous() for p in self.params]
        self._kl_hessian: KLHessian | None = None  # built by the first kl_hvp
        with torch.no_grad():
            self.old_mean = policy.mean(self.adapted, post.obs, activation)
            self.old_log_prob = policy.log_prob(self.adapted, post.obs, post.actions, activation)

    def gradient(self) -> tuple[float, list[Tensor]]:
        """The surrogate's value and exact meta-gradient at θ (one fused ``mlp_maml_grad`` call:
        the gradient of the advantage-weighted NLL of the post-update samples equals the
        surrogate's, since ∇ratio = ratio·∇log π and the ratio is 1 at θ)."""
        tasks = self.pre.obs.shape[0]
        _, grads, _ = ops.mlp_maml_grad(
            self.params, self.pre.obs, self.pre.actions, self.post.obs, self.post.actions, lr=self.lr,
            steps=1, activation=self.activation, loss=LOSS, first_order=self.first_order,
            w_support=self.pre.weight, w_query=self.post.weight,
            loss_weight=self.params[0].new_full((tasks,), 1.0 / self.total),
        )
        value = -self.post.weight.mean(-1).sum().reshape(1) / self.total
        both = self.reduce(torch.cat([value, flat(grads)]))
        return both[0].item(), unflatten(both[1:], self.params)

    @torch.no_grad()
    def evaluate(self, params: Sequence[Tensor]) -> tuple[float, float]:
        """(surrogate loss, mean KL to the pre-step adapted policies) at candidate parameters."""
        adapted = adapt(params, self.pre, self.lr, self.activation)
        log_prob = policy.log_prob(adapted, self.post.obs, self.post.actions, self.activation)
        ratio = torch.exp(log_prob - self.old_log_prob)
        loss = -(ratio * self.post.weight).mean(-1).sum()
        new_mean = policy.mean(adapted, self.post.obs, self.activation)
        kl = (policy.kl(self.old_mean, self.adapted[-1], new_mean, adapted[-1]) * self.post.valid).mean(-1).sum()
        both = self.reduce(torch.stack([loss, kl]) / self.total)
        return both[0].item(), both[1].item()

    @torch.no_grad()
    def kl_hvp(self, v: Sequence[Tensor]) -> list[Tensor]:
        """Exact Hessian of the mean KL w.r.t. θ at θ, times v: mean_t J_tᵀ F_t J_t v (see the
        module docstring; J_t = I for first-order MAML), from the forward and backward passes
        :class:`~maml_ext.rl.kl_hessian.KLHessian` keeps for the whole meta-step. With
        ``hvp_subsample < 1`` the Hessian is that of the subsampled samples' KL (the adapted
        policies stay those of all samples)."""
        if self._kl_hessian is None:
            pre, post = self.pre.subsample(self.hvp_subsample), self.post.subsample(self.hvp_subsample)
            self._kl_hessian = KLHessian(self.params, self.adapted, pre.obs, pre.actions, pre.weight, post.obs,
                                         post.valid, self.lr, self.activation, self.first_order)
        return unflatten(self.reduce(flat(self._kl_hessian(v)) / self.total), self.params)

    @torch.no_grad()
    def kl_hvp_fused(self, v: Sequence[Tensor]) -> list[Tensor]:
        """:meth:`kl_hvp` by three fused ``ops.mlp_hvp`` calls, each recomputing its forward and
        backward passes: an independent implementation of the same product (tests compare the two
        in float64; ``benchmarks/bench_rl.py`` times both)."""
        tasks, per_task = self.pre.obs.shape[0], self._per_task
        u = [x.expand(tasks, *x.shape) for x in v]
        if not self.first_order:
            u = [a - self.lr * b for a, b in zip(u, self._inner_hvp(per_task, u))]
        _, _, fu = ops.mlp_hvp(self.adapted, self.post.obs, self.old_mean, [x.contiguous() for x in u],
                               activation=self.activation, loss=LOSS, sample_weight=self.post.valid)
        fu = list(fu)
        fu[-1] = fu[-1] + 2.0 * u[-1]  # the log-std block of the Gaussian KL's Hessian
        if not self.first_order:
            fu = [a - self.lr * b for a, b in zip(fu, self._inner_hvp(per_task, fu))]
        return unflatten(self.reduce(flat([x.sum(0) for x in fu]) / self.total), self.params)

    def _inner_hvp(self, per_task: list[Tensor], direction: Sequence[Tensor]) -> list[Tensor]:
        _, _, hv = ops.mlp_hvp(per_task, self.pre.obs, self.pre.actions, [d.contiguous() for d in direction],
                               activation=self.activation, loss=LOSS, sample_weight=self.pre.weight)
        return list(hv)


class MetaRL:
    """MAML-RL (or FOMAML-RL) on a Gaussian MLP policy, meta-optimised by TRPO or Adam.

    Args:
        policy: the initialisation θ (its ``params()`` are updated in place).
        lr: the inner policy-gradient step size α.
        first_order: drop the second-order term (FOMAML-RL).
        optimizer: "trpo" (the paper's) or "adam" (``meta_lr``).
        max_kl, cg_iters, cg_damping, backtrack_ratio, max_backtracks: TRPO's constants.
        cg_subsample: fraction of each task's samples in the conjugate gradient's KL-Hessian
            products (rllab's ``subsample_factor``; 1 = all, exact). The meta-gradient, the adapted
            policies and the line search's loss and KL always use every sample.
        kl_products: "cached" (passes kept for the meta-step) or "fused" (three fused-op calls per
            product, each recomputing its passes): the same exact product; "fused" is the slower
            independent implementation, kept for checks and the benchmark.
        gamma, gae_lambda, center_advantages: how rollouts become advantages.
    """

    def __init__(
        self,
        policy_module: GaussianMLPPolicy,
        *,
        lr: float = 0.1,
        first_order: bool = False,
        optimizer: str = "trpo",
        meta_lr: float = 1e-3,
        max_kl: float = 0.01,
        cg_iters: int = 10,
        cg_damping: float = 1e-5,
        backtrack_ratio: float = 0.8,
        max_backtracks: int = 15,
        cg_subsample: float = 1.0,
        kl_products: str = "cached",
        gamma: float = 0.99,
        gae_lambda: float = 1.0,
        center_advantages: bool = True,
    ) -> None:
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr!r}")
        if kl_products not in KL_PRODUCTS:
            raise ValueError(f"kl_products must be one of {KL_PRODUCTS}, got {kl_products!r}")
        if not 0 < cg_subsample <= 1:
            raise ValueError(f"cg_subsample must be in (0, 1], got {cg_subsample!r}")
        if kl_products == "fused" and cg_subsample != 1:
            raise ValueError(f"cg_subsample < 1 needs kl_products='cached', got {cg_subsample!r} with 'fused'")
        if not 0 < gamma <= 1 or not 0 <= gae_lambda <= 1:
            raise ValueError(f"gamma must be in (0, 1] and gae_lambda in [0, 1], got {gamma!r}, {gae_lambda!r}")
        self.policy = policy_module
        self.lr, self.first_order = float(lr), bool(first_order)
        self.optimizer_name = optimizer
        self.trpo_options = dict(max_kl=max_kl, cg_iters=cg_iters, damping=cg_damping,
                                 backtrack_ratio=backtrack_ratio, max_backtracks=max_backtracks)
        self.cg_subsample, self.kl_products = float(cg_subsample), kl_products
        self.gamma, self.gae_lambda, self.center = gamma, gae_lambda, center_advantages
        self.adam = torch.optim.Adam(policy_module.params(), lr=meta_lr) if optimizer == "adam" else None

    @property
    def activation(self) -> str:
        return self.policy.activation

    def params(self) -> list[Tensor]:
        return self.policy.params()

    def process(self, rollouts: Rollouts) -> TaskData:
        return process(rollouts, self.gamma, self.gae_lambda, self.center)

    def adapt(self, params: Sequence[Tensor], rollouts: Rollouts, lr: float | None = None) -> list[Tensor]:
        return adapt(params, self.process(rollouts), self.lr if lr is None else lr, self.activation)

    def meta_step(self, pre: TaskData, post: TaskData, adapted: Sequence[Tensor] | None = None,
                  total_tasks: int | None = None, reduce: Callable[[Tensor], Tensor] | None = None) -> dict[str, Any]:
        """One meta-update of θ from the pre- and post-update samples of a meta-batch
        (``adapted``: the post-update policies, when the caller has them already; ``total_tasks``
        and ``reduce``: this process's share of a data-parallel meta-batch, see MetaObjective)."""
        params = self.params()
        # The meta-gradient (one fused call through every task's inner step) takes seconds at the
        # paper's size: it is named on the running bar (a no-op when none is open), like TRPO's CG.
        progress.detail("meta-RL: meta-gradient through the inner step", 0, 1)
        objective = MetaObjective(params, pre, post, self.lr, self.activation, self.first_order, adapted,
                                  total_tasks, reduce, self.cg_subsample)
        loss, grads = objective.gradient()
        progress.detail("meta-RL: meta-gradient through the inner step", 1, 1)
        if self.adam is not None:
            for p, g in zip(params, grads):
                p.grad = g.to(p.dtype)
            self.adam.step()
            return {"surrogate": loss}  # the TRPO/Adam meta-objective (post-update surrogate)
        shapes = [p.detach() for p in params]

        def unflat(x: Tensor) -> list[Tensor]:
            return unflatten(x, shapes)

        theta = flat([p.detach() for p in params])
        kl_hvp = objective.kl_hvp if self.kl_products == "cached" else objective.kl_hvp_fused
        new, result = trpo.step(
            theta, flat(grads),
            lambda x: flat(kl_hvp(unflat(x))),
            lambda x: objective.evaluate(unflat(x)),
            **self.trpo_options,
        )
        with torch.no_grad():
            vector_to_parameters(new, params)
        return {"surrogate": loss, "accepted": result.accepted, "kl": result.kl, "backtracks": result.backtracks,
                "surrogate_change": result.loss_after - result.loss_before}

    def iteration(self, env: TaskEnv, tasks: Tensor, rollouts: int, generator: torch.Generator,
                  shard: tuple[int, int] | None = None,
                  reduce: Callable[[Tensor], Tensor] | None = None) -> dict[str, Any]:
        """Sample pre-update rollouts, adapt, sample post-update rollouts, meta-update.

        Data parallel: every process passes the whole meta-batch ``tasks`` and the same
        ``generator`` state, runs only its ``shard=(start, stop)`` of the tasks, and ``reduce``
        sums a tensor over the processes (every process then takes the same step)."""
        params, total = self.params(), tasks.shape[0]
        pre_rollouts = sample(env, tasks, params, rollouts, generator, self.activation, shard)
        pre = self.process(pre_rollouts)
        progress.detail("meta-RL: inner policy-gradient step", 0, 1)
        adapted = adapt(params, pre, self.lr, self.activation)
        post_rollouts = sample(env, tasks, adapted, rollouts, generator, self.activation, shard)
        info = self.meta_step(pre, self.process(post_rollouts), adapted, total, reduce)
        returns = torch.stack([pre_rollouts.returns().mean(1).sum(), post_rollouts.returns().mean(1).sum()]) / total
        returns = returns if reduce is None else reduce(returns)
        info["return_pre"], info["return_post"] = returns[0].item(), returns[1].item()
        return info

    def state_dict(self) -> dict[str, Any]:
        return {"policy": self.policy.state_dict(), "adam": None if self.adam is None else self.adam.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        if self.adam is not None:
            self.adam.load_state_dict(state["adam"])
