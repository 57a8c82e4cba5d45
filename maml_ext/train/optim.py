"""The meta-optimizer of the training loops."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks

from maml_ext import _extension
from maml_ext.algorithms.fused_call import AdamState

# Devices with torch's fused Adam kernel (a subset of what it supports; others use the default).
_FUSED_DEVICES = ("cpu", "cuda")


def meta_optimizer(name: str, params: Iterable[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """The ``train.optimizer`` of a supervised run: ``"adam"`` (one Adam for the whole run) or
    ``"fresh-adam"`` (:class:`FreshAdam`)."""
    if name == "adam":
        return adam(params, lr)
    if name == "fresh-adam":
        return FreshAdam(params, lr)
    raise ValueError(f"optimizer must be 'adam' or 'fresh-adam', got {name!r}")


class FreshAdam(torch.optim.Optimizer):
    """The first step of a new Adam at every step, p ← p − lr·g/(|g| + ε'): Yin et al.'s MR-MAML
    sinusoid notebook builds a new ``keras.optimizers.Adam`` in every meta-iteration. Keras adds
    its ε = 1e-7 to the uncorrected √v, so on the bias-corrected scale ε' = ε/√(1 − β₂) ≈ 3.16e-6
    (β₂ = 0.999). Stateless. Each entry moves by up to lr whatever the size of its gradient: an
    entry whose loss gradient is absent in most steps then follows its regulariser's gradient at
    that rate, which is what lets MR-MAML(W)'s small KL term remove memorised weights
    (docs/memorization.md)."""

    EPS = 1e-7 / math.sqrt(1.0 - 0.999)

    def __init__(self, params: Iterable[nn.Parameter], lr: float) -> None:
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.addcdiv_(p.grad, p.grad.abs() + self.EPS, value=-group["lr"])
        return loss


def adam(params: Iterable[nn.Parameter], lr: float) -> torch.optim.Adam:
    """torch's Adam, fused (one kernel over every tensor) where torch has it: the default
    for-loop Adam costs ~3x the fused one per step, as much as a whole paper-config meta-gradient
    (see benchmarks/RESULTS.md, front-end overhead)."""
    params = list(params)
    fused = bool(params) and all(p.is_floating_point() and p.device.type in _FUSED_DEVICES for p in params)
    return LeanFusedAdam(params, lr=lr) if fused else torch.optim.Adam(params, lr=lr)


class _Lists(NamedTuple):
    """A plain step's tensors as torch's fused kernel takes them (see ``LeanFusedAdam._gather``)."""

    params: list[Tensor]
    exp_avgs: list[Tensor]
    exp_avg_sqs: list[Tensor]
    steps: list[Tensor]  # views of step_counts
    step_counts: Tensor
    compiled: object | None  # _C.FusedAdamLists over the same tensors; None without the extension
    # The optimizer's state dict when gathered, and its size: after a reset (``opt.state.clear()``,
    # a new dict) Adam starts afresh, as torch's does, instead of stepping the moments held here.
    state: dict
    entries: int


class LeanFusedAdam(torch.optim.Adam):
    """``torch.optim.Adam(fused=True)`` (same update, state and ``state_dict``) whose ``step`` calls
    torch's fused kernel directly on lists of tensors gathered once. ``Adam.step()``'s Python
    (hooks, grad-mode switch, state initialisation, grouping by device and dtype) costs half a
    paper-config meta-gradient per call; here it runs only on the first step, after
    ``load_state_dict``, and whenever the plain lists do not apply (several devices or dtypes,
    amsgrad, a tensor lr, a missing gradient, a closure). Step hooks run as for any optimizer.
    With the compiled extension the plain step is one call (``_C.FusedAdamLists``: the same kernel
    on the same lists, dispatched from C++).

    ``fused_state`` hands the same state to an update applied inside the meta-gradient op
    (``MAML.meta_step_adam_``), which the training loop takes whenever it applies."""

    def __init__(self, params: Iterable[nn.Parameter], lr: float) -> None:
        self._lists: _Lists | None = None
        super().__init__(params, lr=lr, fused=True)

    def __setstate__(self, state: dict) -> None:
        # A copy or an unpickled optimizer holds torch's state only (Optimizer.__getstate__):
        # its lists are gathered anew, over its own tensors.
        super().__setstate__(state)
        self._lists = self._gather()

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        self._lists = None

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        # The state tensors were replaced: gathered now, so that a resumed run's next step takes
        # the same route (and arithmetic) as the uninterrupted run's.
        self._lists = self._gather()

    def zero_grad(self, set_to_none: bool = True) -> None:
        if not set_to_none or self._lists is None:
            return super().zero_grad(set_to_none)
        for p in self._lists.params:
            p.grad = None

    def fused_state(self, params: Sequence[Tensor]) -> AdamState | None:
        """The state and settings of a plain step over exactly ``params``, in their order (the
        gathered lists are reordered once to follow it), for an update applied elsewhere; None
        where ``step()`` would run torch's Adam (see the class docstring) or step hooks or the
        profiler must see a step."""
        lists = self._current()
        if lists is None or self._hooked() or isinstance(self.param_groups[0]["lr"], Tensor):
            return None
        if len(params) != len(lists.params) or not all(p is q for p, q in zip(params, lists.params)):
            if {id(p) for p in params} != {id(p) for p in lists.params} or len(params) != len(lists.params):
                return None
            lists = self._lists = self._gather(params)
        group = self.param_groups[0]
        return AdamState(lists.exp_avgs, lists.exp_avg_sqs, lists.step_counts, group["lr"], group["betas"],
                         group["weight_decay"], group["eps"], group["maximize"])

    def _hooked(self) -> bool:
        return bool(self._optimizer_step_pre_hooks or self._optimizer_step_post_hooks or _global_optimizer_pre_hooks
                    or _global_optimizer_post_hooks or torch.autograd.profiler._is_profiler_enabled)

    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        # Optimizer.__init__ wraps a class's step in a profiler range and hook loops (~10 µs a
        # call, marked ``hooked`` below so it does not): here they run only when needed.
        if self._hooked():
            return self.profile_hook_step(LeanFusedAdam._step)(self, closure)
        return self._step(closure)

    step.hooked = True

    def _step(self, closure: Callable[[], float] | None) -> float | None:
        lists, group = self._current(), self.param_groups[0]
        if closure is None and lists is not None and not isinstance(group["lr"], Tensor):
            beta1, beta2 = group["betas"]
            settings = (group["lr"], beta1, beta2, group["weight_decay"], group["eps"], group["maximize"])
            if lists.compiled is not None:
                if lists.compiled.step(*settings):
                    return None
            else:
                grads = [p.grad for p in lists.params]
                if all(g is not None for g in grads):
                    _fused_step(lists, grads, *settings)
                    return None
        _check_amsgrad_state(self)
        loss = _adam_step(self, closure)
        self._lists = self._gather()
        return loss

    def _current(self) -> _Lists | None:
        """The gathered lists, or None when the state was reset since (they hold the old state) or
        a setting was changed by hand since (``param_groups[0]["amsgrad"] = True``, say)."""
        lists = self._lists
        if lists is None or lists.state is not self.state or lists.entries != len(self.state):
            return None
        return lists if _plain(self.param_groups[0]) else None

    def _gather(self, order: Sequence[Tensor] | None = None) -> _Lists | None:
        """The parameters (the group's, in ``order`` if given) and their state as the fused
        kernel takes them, or None where ``Adam.step()`` must run (see the class docstring)."""
        if len(self.param_groups) != 1:
            return None
        group = self.param_groups[0]
        params = list(group["params"] if order is None else order)
        if not (_plain(group) and params and all(p in self.state for p in params)):
            return None
        if len({(p.device, p.dtype) for p in params}) != 1:
            return None
        states = [self.state[p] for p in params]
        step_counts = torch.stack([s["step"] for s in states])
        for i, s in enumerate(states):
            s["step"] = step_counts[i]  # the same value, now a view (see _step)
        exp_avgs, exp_avg_sqs, steps = [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states], [
            s["step"] for s in states]
        compiled = _extension.C.FusedAdamLists(params, exp_avgs, exp_avg_sqs, steps, step_counts) \
            if _extension.available() else None
        return _Lists(params, exp_avgs, exp_avg_sqs, steps, step_counts, compiled, self.state, len(self.state))


def _plain(group: dict) -> bool:
    """Whether ``group``'s step is the plain update the gathered lists take (read at every step:
    a setting may be changed by hand between steps)."""
    return (not group["amsgrad"] and not group["capturable"] and not group["differentiable"]
            and not group.get("decoupled_weight_decay", False) and not isinstance(group["lr"], Tensor)
            and not isinstance(group["betas"][0], Tensor) and not isinstance(group["betas"][1], Tensor))


def _check_amsgrad_state(optimizer: torch.optim.Adam) -> None:
    """AMSGrad switched on after steps taken without it has no running maximum of the second
    moments to continue from (torch's Adam fails on the missing key): a clear error instead,
    before any parameter moves."""
    for i, group in enumerate(optimizer.param_groups):
        if group["amsgrad"] and any("step" in optimizer.state.get(p, {}) and "max_exp_avg_sq" not in optimizer.state[p]
                                    for p in group["params"]):
            raise ValueError(
                f"param_groups[{i}]['amsgrad']: switched on after steps taken without it; Adam holds no running maximum "
                "of the second moments for them (torch.optim.Adam fails with KeyError: 'max_exp_avg_sq'). Set it before "
                "the first step, or restart Adam with optimizer.state.clear()")


@torch.no_grad()
def _fused_step(lists: _Lists, grads: list[Tensor], lr: float, beta1: float, beta2: float, weight_decay: float,
                eps: float, maximize: bool) -> None:
    """What ``_C.FusedAdamLists.step`` does, from Python (no extension): as
    torch.optim.adam._fused_adam does for one device and dtype; the per-parameter step counts are
    views of one tensor, so one add increments them all."""
    lists.step_counts.add_(1)
    torch._fused_adam_(lists.params, grads, lists.exp_avgs, lists.exp_avg_sqs, [], lists.steps, amsgrad=False,
                       lr=lr, beta1=beta1, beta2=beta2, weight_decay=weight_decay, eps=eps, maximize=maximize,
                       grad_scale=None, found_inf=None)


def _adam_step(optimizer: torch.optim.Adam, closure: Callable[[], float] | None) -> float | None:
    """``torch.optim.Adam.step`` without the hook-running wrapper that ``Optimizer.__init__`` puts
    on a class's ``step`` (the subclass's own wrapper runs the hooks, once)."""
    step = torch.optim.Adam.step
    if getattr(step, "hooked", False):
        step = step.__wrapped__
    return step(optimizer, closure)
