"""Supervised meta-training: build the run from its config; one meta-iteration is a meta-batch's
meta-gradient and an Adam step (the loop itself, checkpoints and resume are ``driver``'s)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from maml_ext import plugins
from maml_ext.algorithms import ALGORITHMS, MetaLearner, build_algorithm
from maml_ext.tasks import TaskFamily

from . import checkpoint, distributed, driver, optim
from .config import Config, ConfigError, check_options, validate
from .driver import CHECKPOINT, METRICS, NonFinite

__all__ = ["CHECKPOINT", "METRICS", "Run", "build", "build_plugin", "restore", "train"]


@dataclass
class Run:
    config: Config
    family: TaskFamily
    learner: MetaLearner


def _options(section: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in section.items() if k != "name"}


def build_plugin(section: str, cfg: Config, registry: plugins.Registry, **given: Any) -> Any:
    """The ``[section]`` plugin of ``cfg`` built by ``registry``: options of the wrong type are
    named before the factory runs, and a value it refuses (``ValueError``: a bad activation, a
    missing dataset) becomes a ConfigError."""
    name, options = cfg[section]["name"], _options(cfg[section])
    check_options(section, name, registry.factory(name), options)
    try:
        return registry.build(name, **given, **options)
    except ValueError as exc:
        raise ConfigError(f"{section} {name!r}: {exc}") from exc


def build(cfg: Config, family: Any = None) -> Run:
    """Task family, model and learner of a validated config (model init seeded by ``seed``).
    ``family``: the config's task family when the caller built it already (the families draw
    from their own generators, never the global one, so the model's init is the same)."""
    driver.seed(cfg["seed"])
    family = build_plugin("task", cfg, plugins.tasks) if family is None else family
    model = build_plugin("model", cfg, plugins.models, in_features=family.in_features, out_features=family.out_features)
    name, options = cfg["algorithm"]["name"], _options(cfg["algorithm"])
    if name in ALGORITHMS:
        check_options("algorithm", name, ALGORITHMS[name][0].__init__, options)
    options.setdefault("loss", family.loss)
    try:
        learner = build_algorithm(name, model, **options)
    except ValueError as exc:
        raise ConfigError(f"[algorithm] {exc}") from exc
    return Run(cfg, family, learner)


class SupervisedStep:
    """Sample a meta-batch, all-reduce its meta-gradient over the ranks, stop on a non-finite
    loss or gradient before it reaches the weights, clip, Adam step; logs the mean loss since the
    last record (the running window is checkpointed, so a resumed run logs the same numbers)."""

    kind = None
    metric = "loss"  # the meta-batch's mean query loss after adaptation

    def __init__(self, run: Run, shard: distributed.Shard) -> None:
        self.run, self.shard, self.tcfg = run, shard, run.config["train"]
        self.module = run.learner
        # The parameters the optimizer holds, listed once: walking the modules per iteration costs
        # several µs, a few % of a paper-config meta-iteration.
        self.params = list(run.learner.parameters())
        self.optimizer = optim.meta_optimizer(self.tcfg["optimizer"], self.params, self.tcfg["meta_lr"])
        self.generators = {"tasks": torch.Generator().manual_seed(run.config["seed"])}
        self.window = [0.0, 0]

    def __call__(self, iteration: int) -> float:
        t, learner = self.tcfg, self.run.learner
        batch = self.run.family.sample(t["meta_batch"], t["k_support"], t["k_query"], self.generators["tasks"])
        self.optimizer.zero_grad(set_to_none=True)
        loss = self._fused_step(batch, iteration)
        if loss is None:
            loss = self.shard.backward(learner, batch, iteration, t.get("task_chunk"))
            check_finite(loss, self.params)
            if t.get("clip_grad"):
                # Element-wise value clipping of the (all-reduced) meta-gradient, as the official
                # MiniImagenet code does (tf.clip_by_value to [-10, 10]).
                torch.nn.utils.clip_grad_value_(self.params, t["clip_grad"])
            self.optimizer.step()
        self.window = [self.window[0] + loss, self.window[1] + 1]
        return loss

    def _fused_step(self, batch: Any, iteration: int) -> float | None:
        """The same iteration (meta-gradient, finiteness stop, clipping, Adam) in one op call
        where the learner offers it (``MAML.meta_step_adam_``: the fused MLP path with a plain
        Adam state) on one process and one pass over the meta-batch; None where it does not
        (nothing done)."""
        t = self.tcfg
        step = getattr(self.run.learner, "meta_step_adam_", None)
        if step is None or self.shard.world != 1 or (t.get("task_chunk") or t["meta_batch"]) < t["meta_batch"]:
            return None
        done = step(batch, self.optimizer, iteration, t.get("clip_grad"))
        if done is None:
            return None
        loss, applied = done
        if not applied:
            raise non_finite(loss)
        return loss

    def record(self) -> dict[str, float]:
        mean, self.window = self.window[0] / self.window[1], [0.0, 0]
        return {"loss": mean}

    def summary(self) -> None:
        return None  # the bar's meta-loss says it all

    def state(self) -> dict[str, Any]:
        return {"learner": self.run.learner.state_dict(), "optimizer": self.optimizer.state_dict(),
                "window": self.window}

    def load(self, path: Path, state: dict[str, Any]) -> None:
        checkpoint.load_into(path, self.run.learner, state["learner"])
        checkpoint.load_optimizer(path, self.optimizer, state["optimizer"])
        window = state.get("window")
        if not (isinstance(window, list) and len(window) == 2 and isinstance(window[0], float)
                and isinstance(window[1], int)):
            raise checkpoint.CheckpointError(f"checkpoint {path}: window must be [loss sum, count], got {window!r}")
        self.window = list(window)


def check_finite(loss: float, params: Any) -> None:
    """Raise NonFinite for a non-finite meta-loss or meta-gradient entry."""
    if math.isfinite(loss) and _all_finite([p.grad for p in params if p.grad is not None]):
        return
    raise non_finite(loss)


def non_finite(loss: float) -> NonFinite:
    """The stop for a non-finite meta-loss, or (``loss`` finite) a non-finite meta-gradient."""
    what = f"the meta-loss is {loss}" if not math.isfinite(loss) else "the meta-gradient has non-finite entries"
    return NonFinite(what, "try a smaller train.meta_lr or algorithm.lr, or train.clip_grad")


@torch.no_grad()
def _all_finite(grads: list[Tensor]) -> bool:
    """Whether every entry of ``grads`` is finite: torch's AMP check, one pass over each device's
    tensors with the "unscale" by exactly 1 (x · 1 = x for every float, NaN and ±inf included;
    only with ``torch.set_flush_denormal(True)`` would a denormal become 0, as Adam reads it then).
    A third of concatenating them and testing the result (~7 against ~23 µs per meta-iteration on
    the paper's MLP, benchmarks/RESULTS.md, front end 14.2)."""
    by_device: dict[torch.device, list[Tensor]] = {}
    for g in grads:
        by_device.setdefault(g.device, []).append(g)
    for device, group in by_device.items():
        found = torch.zeros(1, device=device)
        torch._amp_foreach_non_finite_check_and_unscale_(group, found, torch.ones(1, device=device))
        if found.item():
            return False
    return True


def train(cfg: Config, out_dir: Path, *, resume: bool = False, progress: bool = True, family: Any = None) -> Path:
    """Meta-train into ``out_dir`` (checkpoint.pt, metrics.jsonl, config.json); returns the checkpoint path.

    Inside a torch.distributed process group every rank calls this: the ranks split each
    meta-batch (see ``distributed``) and only rank 0 touches ``out_dir``."""
    driver.set_threads(cfg)
    run = build(cfg, family)
    if cfg["train"].get("task_chunk") and run.learner.bn_names:
        raise ConfigError("train.task_chunk cannot be used with per-step BatchNorm statistics (MAML++): "
                          "their running averages are taken over one pass's tasks")
    return driver.train(SupervisedStep(run, distributed.current()), cfg, out_dir, resume=resume, progress=progress)


def restore(ckpt_path: Path, family: Any = None) -> tuple[Run, int]:
    """The trained run stored in a checkpoint, and its iteration (``family``: see :func:`build`)."""
    state = checkpoint.load(ckpt_path)
    try:
        cfg = validate(state["config"])
    except ConfigError as exc:
        raise checkpoint.CheckpointError(f"checkpoint {ckpt_path} holds an invalid config: {exc}") from exc
    run = build(cfg, family)
    checkpoint.load_into(ckpt_path, run.learner, state["learner"])
    run.learner.eval()  # for evaluation: MAML++ per-step BatchNorm then uses its running statistics
    return run, state["iteration"]
