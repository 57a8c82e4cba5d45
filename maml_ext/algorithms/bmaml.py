"""Bayesian MAML (Kim et al. 2018): M particles per task adapted jointly by SVGD."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from maml_ext import ops
from maml_ext.tasks import TaskBatch

from .bayes import RowLearner, Rows, compiled_on_cpu, expand_rows, soft_min_loss

OBJECTIVES = ("chaser", "likelihood")


def step_node_available(t: Tensor) -> bool:
    """Whether a fused-MLP BMAML runs its SVGD steps as :class:`_MLPSVGDStep` nodes (compiled
    kernels on CPU, where ``svgd_step`` has one); else the composed ops (their reference twins
    without the extension)."""
    return compiled_on_cpu(t)


class _MLPSVGDStep(torch.autograd.Function):
    """One SVGD step of rows ``[T·M, ...]`` of a fused MLP whose scores are the support-loss
    gradients (log p = −L), as one autograd node over the compiled ops:

        forward:  g = ∇L(θ) (``mlp_hvp``, no R-pass), θ' = ``svgd_step``(θ, g)
        backward: (θ̄, ḡ) = ``svgd_step_backward``(θ̄'),  dθ = θ̄ + H ḡ (one ``mlp_hvp``)

    which is the composed path's gradient (``svgd_step`` ∘ ``mlp_hvp`` through autograd) without
    its per-op nodes, graph-carrying gradient outputs and copies. ``first_order``: the backward
    is the identity (the path is followed, its Jacobian taken as identity, as FOMAML does).
    """

    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor, m: int, lr: float, first_order: bool, activation: str, loss: str,
                *rows: Tensor) -> tuple[Tensor, ...]:
        rows = tuple(r.contiguous() for r in rows)  # viewed as [T, M, ...] below
        _, grads, _ = torch.ops.maml_ext.mlp_hvp(list(rows), x, y, [], None, activation, loss)
        tasks = rows[0].shape[0] // m
        sets = [r.view(tasks, m, *r.shape[1:]) for r in rows]
        scores = [g.view(s.shape) for g, s in zip(grads, sets)]
        moved, kernel, bandwidth = torch.ops.maml_ext.svgd_step(sets, scores, -1.0, lr)
        ctx.first_order = first_order
        if not first_order:
            ctx.args = (m, lr, activation, loss)
            ctx.save_for_backward(x, y, kernel, bandwidth, *rows, *grads)
        return tuple(o.view(r.shape) for o, r in zip(moved, rows))

    @staticmethod
    @once_differentiable
    def backward(ctx, *grad_out: Tensor | None) -> tuple[Tensor | None, ...]:
        if ctx.first_order:
            return (None,) * 7 + grad_out
        m, lr, activation, loss = ctx.args
        x, y, kernel, bandwidth, *saved = ctx.saved_tensors
        n = len(saved) // 2
        rows, grads = saved[:n], saved[n:]
        tasks = rows[0].shape[0] // m
        sets = [r.view(tasks, m, *r.shape[1:]) for r in rows]
        d_out = [torch.zeros_like(s) if d is None else d.view(s.shape) for d, s in zip(grad_out, sets)]
        d_sets, d_scores = torch.ops.maml_ext.svgd_step_backward(
            d_out, sets, [g.view(s.shape) for g, s in zip(grads, sets)], -1.0, lr, kernel, bandwidth
        )
        direction = [d.view(r.shape) for d, r in zip(d_scores, rows)]
        _, _, hv = torch.ops.maml_ext.mlp_hvp(list(rows), x, y, direction, None, activation, loss)
        return (None,) * 7 + tuple(d.view(r.shape).add_(h) for d, r, h in zip(d_sets, rows, hv))


class _MLPChaser(torch.autograd.Function):
    """The Chaser loss of a fused MLP on CPU as one autograd node over one
    ``mlp_bmaml_chaser`` call, from the initial particles ``[M, ...]`` (one tensor per parameter)
    to

        chase = Σ_t Σ_m ‖θ^n_{t,m} − stopgrad(θ^{n+s}_{t,m})‖² / T

    and the particles' mean query loss (not differentiable; the reported value). The op runs the
    n SVGD steps from every task's copy of the particles, the query loss, the s leader steps on
    support + query and the exact gradient d chase / d θ^0 (per step in reverse the SVGD step's
    vector-Jacobian product and one HVP per particle, on the forward state it kept) in one engine
    pass per task; the backward only scales that gradient. ``first_order``: every step's Jacobian
    is the identity (as :class:`_MLPSVGDStep`'s). Differentiable once.
    """

    @staticmethod
    def forward(ctx, xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor, steps: int, leader_steps: int, lr: float,
                first_order: bool, activation: str, loss: str, *init: Tensor) -> tuple[Tensor, Tensor]:
        chase, query, grads = torch.ops.maml_ext.mlp_bmaml_chaser(
            [p.detach() for p in init], xs, ys, xq, yq, steps, leader_steps, lr, activation, loss, first_order
        )
        ctx.save_for_backward(*grads)
        query = query.mean()
        ctx.mark_non_differentiable(query)
        return chase, query

    @staticmethod
    def backward(ctx, d_chase: Tensor, _: Tensor | None) -> tuple[Tensor | None, ...]:
        if torch.is_grad_enabled():  # create_graph: the op's gradient carries no graph of its own
            raise RuntimeError(
                "BMAML's Chaser loss on the compiled MLP op is differentiable once; for a second "
                "derivative (create_graph=True) use the generic path (fused=False)"
            )
        return (None,) * 10 + tuple(g * d_chase for g in ctx.saved_tensors)


class BMAML(RowLearner):
    """BMAML: the initialisation is a set of M learned particles; the inner loop moves each
    task's copy of them by SVGD on the support set, with log p(θ | support) = −L_support(θ)
    (the mean support loss as negative log-likelihood, no prior term), so one inner step is

        θ_m ← θ_m + α φ(θ_m),   φ = the SVGD direction,

    one fused :func:`maml_ext.ops.svgd_step` (for a fused MLP on CPU, gradient and step together as
    one autograd node, :class:`_MLPSVGDStep`; the whole Chaser loss and its gradient as one
    ``ops.mlp_bmaml_chaser`` call in one node, :class:`_MLPChaser`).
    With M = 1 this is exactly MAML's SGD step.

    Particles: particle 0 is the model's own parameters; particles 1..M−1 are separate learned
    tensors, initialised as the model's initial parameters plus N(0, init_noise²) noise (drawn
    from torch's global generator, which the train loop seeds), so they start distinct.

    Args (beyond :class:`MetaLearner`'s lr, steps, loss):
        particles: M >= 1.
        objective: "chaser" (the BMAML Chaser loss: Σ_m ‖θ^n_m − stopgrad(θ^{n+s}_m)‖², mean over
            tasks, where the leader θ^{n+s} takes ``leader_steps`` more SVGD steps from the
            chaser θ^n on support + query) or "likelihood" (−log 1/M Σ_m exp(−L_query(θ^n_m)),
            the BMAML likelihood loss with the mean query loss as negative log-likelihood; equal
            to MAML's query loss for M = 1).
        temperature: τ > 0 of the likelihood objective, −τ log 1/M Σ_m exp(−L_query(θ^n_m)/τ):
            the paper's Gaussian likelihood summed over N query points with noise σ_y is
            τ = 2σ_y²/N (τ = 1 ≙ σ_y = √(N/2)). Smaller τ weights the best particle per task more
            (τ → 0: the minimum over particles), larger τ weights them equally (τ → ∞: the mean).
        leader_steps: s, the leader's extra SVGD steps (chaser only).
        first_order: no gradient through the SVGD directions (the particles' path is followed,
            its Jacobian taken as identity, as FOMAML does).
        init_noise: standard deviation of the extra particles' initial offsets.
        fused, task_batched: see :class:`~maml_ext.algorithms.bayes.RowLearner`.

    ``meta_loss`` returns a scalar whose value is the particles' mean query loss and whose
    gradient is the chosen objective's.

    Uncertainty: with the defaults the particles stay within a narrow band of functions. For
    particles that represent an ambiguous task (several functions through the same support
    points) use ``objective="likelihood"`` (it rewards the best particle per task, so particles
    specialise) with ``init_noise=0.3``; the Chaser loss pulls distinct initial particles together.
    With longer training (10000 sinusoid iterations) ``temperature=0.5`` keeps the particles
    calibrated as the fit improves. Measured in docs/bayesian-uncertainty.md.
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float = 0.01,
        steps: int = 1,
        *,
        particles: int = 5,
        objective: str = "chaser",
        leader_steps: int = 1,
        first_order: bool = False,
        init_noise: float = 0.01,
        temperature: float = 1.0,
        loss: str = "mse",
        fused: bool | None = None,
        task_batched: bool | None = None,
    ) -> None:
        if not (isinstance(particles, int) and not isinstance(particles, bool) and particles >= 1):
            raise ValueError(f"particles must be an integer >= 1, got {particles!r}")
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        if not (isinstance(leader_steps, int) and not isinstance(leader_steps, bool) and leader_steps >= 1):
            raise ValueError(f"leader_steps must be an integer >= 1, got {leader_steps!r}")
        if not (isinstance(init_noise, (int, float)) and init_noise >= 0):
            raise ValueError(f"init_noise must be a number >= 0, got {init_noise!r}")
        if not (isinstance(temperature, (int, float)) and not isinstance(temperature, bool) and temperature > 0):
            raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
        if objective != "likelihood" and temperature != 1.0:
            raise ValueError(f"temperature applies to objective='likelihood' only, got objective={objective!r}")
        super().__init__(model, lr=lr, steps=steps, loss=loss, fused=fused, task_batched=task_batched)
        self.num_particles = particles
        self.objective = objective
        self.leader_steps = leader_steps
        self.temperature = float(temperature)
        self.first_order = bool(first_order)
        named = dict(model.named_parameters())
        # Particles 1..M-1 (particle 0 is the model itself), one tensor [M-1, ...] per parameter.
        self.extra = nn.ParameterList()
        for name in self.adapt_names if particles > 1 else ():
            p = named[name].detach()
            noise = torch.randn(particles - 1, *p.shape, dtype=p.dtype, device=p.device)
            self.extra.append(nn.Parameter(p.unsqueeze(0) + init_noise * noise))

    # ----- particles ----------------------------------------------------------------------
    def initial_particles(self) -> Rows:
        """The learned initial particles ``[M, ...]`` per parameter name."""
        named = dict(self.model.named_parameters())
        if self.num_particles == 1:
            return {n: named[n].unsqueeze(0) for n in self.adapt_names}
        return {n: torch.cat([named[n].unsqueeze(0), e]) for n, e in zip(self.adapt_names, self.extra)}

    def _task_rows(self, tasks: int) -> Rows:
        """Every task's copy of the initial particles, as rows ``[T·M, ...]``."""
        return {n: p.unsqueeze(0).expand(tasks, *p.shape).reshape(tasks * p.shape[0], *p.shape[1:])
                for n, p in self.initial_particles().items()}

    def svgd_steps(
        self, rows: Rows, x: Tensor, y: Tensor, steps: int, lr: float, first_order: bool
    ) -> Iterator[Rows]:
        """SVGD steps on rows ``[T·M, ...]`` with data ``x [T·M, K, ...]``; yields the rows after each."""
        m = self.num_particles
        names = list(rows)
        spec = self.fused_spec
        if spec is not None and step_node_available(next(iter(rows.values()))):
            for _ in range(steps):
                moved = _MLPSVGDStep.apply(x, y, m, lr, first_order, spec.activation, self.loss,
                                           *(rows[n] for n in spec.param_names))
                rows = dict(zip(spec.param_names, moved))
                yield rows
            return
        for _ in range(steps):
            _, grads = self.row_grads(rows, x, y, create_graph=not first_order)
            tasks = next(iter(rows.values())).shape[0] // m
            sets = [rows[n].view(tasks, m, *rows[n].shape[1:]) for n in names]
            # log p = −L: the scores are the loss gradients with scale −1.
            scores = [grads[n].view(tasks, m, *grads[n].shape[1:]) for n in names]
            if first_order:  # the particles' path is followed, its Jacobian taken as identity
                with torch.no_grad():
                    fixed = [s.detach() for s in sets]
                    deltas = [t - s for t, s in zip(ops.svgd_step(fixed, scores, -1.0, lr), fixed)]
                new = [rows[n] + d.view(rows[n].shape) for d, n in zip(deltas, names)]
            else:
                new = [t.view(rows[n].shape) for t, n in zip(ops.svgd_step(sets, scores, -1.0, lr), names)]
            rows = dict(zip(names, new))
            yield rows

    def _adapt(self, batch_x: Tensor, batch_y: Tensor, steps: int, lr: float, first_order: bool) -> Rows:
        rows = self._task_rows(batch_x.shape[0])
        x, y = expand_rows(batch_x, self.num_particles), expand_rows(batch_y, self.num_particles)
        for rows in self.svgd_steps(rows, x, y, steps, lr, first_order):
            pass
        return rows

    # ----- meta-training ------------------------------------------------------------------
    def _chaser_node_available(self, t: Tensor) -> bool:
        """Whether the Chaser loss runs as one :class:`_MLPChaser` node (where the SVGD steps
        would be :class:`_MLPSVGDStep` nodes); else the steps' nodes and the loss in autograd."""
        return self.objective == "chaser" and self.fused_spec is not None and step_node_available(t)

    def _leader_data(self, batch: TaskBatch) -> tuple[Tensor, Tensor]:
        """The leader's data, support + query, as rows ``[T·M, K_s + K_q, ...]``."""
        m = self.num_particles
        return (expand_rows(torch.cat([batch.x_support, batch.x_query], 1), m),
                expand_rows(torch.cat([batch.y_support, batch.y_query], 1), m))

    def meta_loss(self, batch: TaskBatch, iteration: int = 0) -> Tensor:
        m, tasks = self.num_particles, batch.num_tasks
        if self._chaser_node_available(batch.x_support):
            spec, init = self.fused_spec, self.initial_particles()
            chase, query = _MLPChaser.apply(batch.x_support, batch.y_support, batch.x_query, batch.y_query,
                                            self.steps, self.leader_steps, self.lr, self.first_order,
                                            spec.activation, self.loss, *(init[n] for n in spec.param_names))
            return query + chase - chase.detach()
        xq, yq = expand_rows(batch.x_query, m), expand_rows(batch.y_query, m)
        chaser = self._adapt(batch.x_support, batch.y_support, self.steps, self.lr, self.first_order)
        if self.objective == "likelihood":
            query = self.row_losses(chaser, xq, yq).view(tasks, m)
            objective = soft_min_loss(query, self.temperature)
            return objective + (query.mean() - objective).detach()
        with torch.no_grad():
            query = self.row_losses(chaser, xq, yq).mean()
            x_all, y_all = self._leader_data(batch)
            leader = {n: p.detach() for n, p in chaser.items()}
            for leader in self.svgd_steps(leader, x_all, y_all, self.leader_steps, self.lr, first_order=True):
                pass
        # Σ_m ‖θ_m − leader_m‖² summed over particles, mean over tasks: one sum of squares per
        # tensor over all rows (fewer, larger ops than per-row distances).
        diffs = [(chaser[n] - leader[n]).view(-1) for n in chaser]
        chase = sum(torch.dot(d, d) for d in diffs) / tasks
        return query + chase - chase.detach()

    # ----- test time ----------------------------------------------------------------------
    def adapted_sets(
        self, x_support: Tensor, y_support: Tensor, steps: int, lr: float | None, generator: torch.Generator | None
    ) -> Iterator[tuple[Rows, int]]:
        """The particles before and after each SVGD step (deterministic: ``generator`` unused)."""
        m = self.num_particles
        rows = {n: p.detach() for n, p in self._task_rows(x_support.shape[0]).items()}
        yield rows, m
        x, y = expand_rows(x_support, m), expand_rows(y_support, m)
        for rows in self.svgd_steps(rows, x, y, steps, self.lr if lr is None else lr, first_order=True):
            yield rows, m

