"""MAML-RL as a plain per-task loop in torch autograd: the reference the batched, fused path is
tested against (tests/test_rl_algorithms.py) and benchmarked against (benchmarks/bench_rl.py).

Everything here works on one task at a time (its R rollouts together), with the inner step
unrolled by ``torch.autograd.grad(create_graph=True)``; TRPO's KL Hessian-vector products are
either the paper's finite differences of the KL gradient or autograd's exact double backward
(third derivatives through the inner step).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.nn.utils import vector_to_parameters

from maml_ext.rl import policy, trpo
from maml_ext.rl.algorithms import MetaRL, TaskData, flat
from maml_ext.rl.envs.base import TaskEnv
from maml_ext.rl.rollouts import sample


def _task(data: TaskData, t: int) -> TaskData:
    return TaskData(data.obs[t:t + 1], data.actions[t:t + 1], data.advantages[t:t + 1], data.valid[t:t + 1])


def inner_loss(params: Sequence[Tensor], data: TaskData, activation: str = "relu") -> Tensor:
    """−mean_valid(A · log π) of one task (``data`` with T = 1), as a scalar."""
    return -(data.weight * policy.log_prob(params, data.obs, data.actions, activation)).mean()


def adapt(params: Sequence[Tensor], data: TaskData, lr: float, activation: str = "relu",
          create_graph: bool = True) -> list[Tensor]:
    grads = torch.autograd.grad(inner_loss(params, data, activation), list(params), create_graph=create_graph)
    return [p - lr * g for p, g in zip(params, grads)]


class TaskObjective:
    """One task's post-update surrogate and KL as differentiable functions of θ."""

    def __init__(self, params: Sequence[Tensor], pre: TaskData, post: TaskData, lr: float,
                 activation: str = "relu") -> None:
        self.pre, self.post, self.lr, self.activation = pre, post, lr, activation
        with torch.enable_grad():
            leaves = [p.detach().requires_grad_() for p in params]
            old = [a.detach() for a in adapt(leaves, pre, lr, activation, create_graph=False)]
        self.old_mean = policy.mean(old, post.obs, activation)
        self.old_log_std = old[-1]
        self.old_log_prob = policy.log_prob(old, post.obs, post.actions, activation)

    def surrogate(self, params: Sequence[Tensor]) -> Tensor:
        adapted = adapt(params, self.pre, self.lr, self.activation)
        ratio = torch.exp(policy.log_prob(adapted, self.post.obs, self.post.actions, self.activation)
                          - self.old_log_prob)
        return -(ratio * self.post.weight).mean()

    def kl(self, params: Sequence[Tensor]) -> Tensor:
        adapted = adapt(params, self.pre, self.lr, self.activation)
        new_mean = policy.mean(adapted, self.post.obs, self.activation)
        return (policy.kl(self.old_mean, self.old_log_std, new_mean, adapted[-1]) * self.post.valid).mean()


def objectives(params: Sequence[Tensor], pre: TaskData, post: TaskData, lr: float,
               activation: str = "relu") -> list[TaskObjective]:
    return [TaskObjective(params, _task(pre, t), _task(post, t), lr, activation) for t in range(pre.obs.shape[0])]


def meta_gradient(params: Sequence[Tensor], objs: Sequence[TaskObjective]) -> list[Tensor]:
    """Mean over tasks of each task's second-order meta-gradient, one autograd call per task."""
    leaves = [p.detach().requires_grad_() for p in params]
    total = [torch.zeros_like(p) for p in leaves]
    with torch.enable_grad():
        for obj in objs:
            for acc, g in zip(total, torch.autograd.grad(obj.surrogate(leaves), leaves)):
                acc += g / len(objs)
    return total


def kl_gradient(params: Sequence[Tensor], objs: Sequence[TaskObjective], create_graph: bool = False) -> list[Tensor]:
    leaves = list(params)
    total = [torch.zeros_like(p) for p in leaves]
    for obj in objs:
        for i, g in enumerate(torch.autograd.grad(obj.kl(leaves), leaves, create_graph=create_graph)):
            total[i] = total[i] + g / len(objs)
    return total


def kl_hvp_exact(params: Sequence[Tensor], objs: Sequence[TaskObjective], v: Sequence[Tensor]) -> list[Tensor]:
    """Hessian of the mean KL times v by autograd's double backward (third derivatives)."""
    with torch.enable_grad():
        leaves = [p.detach().requires_grad_() for p in params]
        grads = kl_gradient(leaves, objs, create_graph=True)
        dot = sum((g * d).sum() for g, d in zip(grads, v))
        return list(torch.autograd.grad(dot, leaves))


def kl_hvp_fd(params: Sequence[Tensor], objs: Sequence[TaskObjective], v: Sequence[Tensor]) -> list[Tensor]:
    """The paper's finite differences of the KL gradient, (g(θ + εv) − g(θ − εv)) / 2ε, with ε
    scaled to the dtype's precision."""
    norm = math.sqrt(sum(float((d * d).sum()) for d in v)) + 1e-12
    scale = math.sqrt(sum(float((p * p).sum()) for p in params)) + 1.0
    eps = math.sqrt(torch.finfo(params[0].dtype).eps) * scale / norm
    with torch.enable_grad():
        plus = kl_gradient([(p + eps * d).detach().requires_grad_() for p, d in zip(params, v)], objs)
        minus = kl_gradient([(p - eps * d).detach().requires_grad_() for p, d in zip(params, v)], objs)
    return [(a - b) / (2 * eps) for a, b in zip(plus, minus)]


class LoopedMetaRL(MetaRL):
    """:class:`MetaRL` with every per-task computation in a Python loop of plain autograd calls:
    sampling one task at a time, per-task inner steps, per-task meta-gradients and TRPO with
    autograd's KL Hessian-vector products (``hvp="exact"``, double backward) or the paper's
    finite differences (``hvp="finite_difference"``). Same options, same results up to rounding.

    Finite differences assume the KL gradient is smooth around θ; with ReLUs at their kink (zero
    biases at initialisation and rollouts starting at the origin make pre-activations exactly 0)
    it is not, and the differences are meaningless, which is one more reason the fused path
    computes the product exactly.
    """

    def __init__(self, *args: Any, hvp: str = "exact", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if hvp not in ("exact", "finite_difference"):
            raise ValueError(f"hvp must be 'exact' or 'finite_difference', got {hvp!r}")
        self.hvp = kl_hvp_exact if hvp == "exact" else kl_hvp_fd

    def iteration(self, env: TaskEnv, tasks: Tensor, rollouts: int, generator: torch.Generator) -> dict[str, Any]:
        params = [p.detach() for p in self.params()]
        pre_list, post_list, returns_pre, returns_post = [], [], [], []
        for t in range(tasks.shape[0]):
            pre_r = sample(env, tasks[t:t + 1], params, rollouts, generator, self.activation)
            pre = self.process(pre_r)
            with torch.enable_grad():
                leaves = [p.clone().requires_grad_() for p in params]
                adapted = [a.detach() for a in adapt(leaves, pre, self.lr, self.activation, create_graph=False)]
            post_r = sample(env, tasks[t:t + 1], [a.unsqueeze(0) for a in adapted], rollouts, generator,
                            self.activation)
            pre_list.append(pre)
            post_list.append(self.process(post_r))
            returns_pre.append(pre_r.returns().mean())
            returns_post.append(post_r.returns().mean())
        info = self.meta_step_looped(pre_list, post_list)
        info["return_pre"] = torch.stack(returns_pre).mean().item()
        info["return_post"] = torch.stack(returns_post).mean().item()
        return info

    def meta_step_looped(self, pre: Sequence[TaskData], post: Sequence[TaskData]) -> dict[str, Any]:
        params = self.params()
        detached = [p.detach() for p in params]
        objs = [TaskObjective(detached, a, b, self.lr, self.activation) for a, b in zip(pre, post)]
        grads = meta_gradient(detached, objs)
        if self.adam is not None:
            for p, g in zip(params, grads):
                p.grad = g
            self.adam.step()
            return {}
        shapes = [p.shape for p in detached]
        sizes = [p.numel() for p in detached]

        def unflat(x: Tensor) -> list[Tensor]:
            return [c.view(s) for c, s in zip(torch.split(x, sizes), shapes)]

        def evaluate(x: Tensor) -> tuple[float, float]:
            with torch.enable_grad():  # the inner step inside needs autograd
                candidate = [c.detach().requires_grad_() for c in unflat(x)]
                loss = sum(o.surrogate(candidate).item() for o in objs) / len(objs)
                kl = sum(o.kl(candidate).item() for o in objs) / len(objs)
            return loss, kl

        theta = flat(detached)
        new, result = trpo.step(theta, flat(grads),
                                lambda x: flat(self.hvp(detached, objs, unflat(x))),
                                evaluate, **self.trpo_options)
        with torch.no_grad():
            vector_to_parameters(new, params)
        return {"accepted": result.accepted, "kl": result.kl}

