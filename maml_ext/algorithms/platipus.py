"""PLATIPUS (Finn, Xu & Levine 2018): probabilistic MAML with a learned Gaussian prior over
initialisations, trained by an ELBO-style objective."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from maml_ext import ops
from maml_ext.tasks import TaskBatch

from .bayes import RowLearner, Rows, expand_rows, soft_min_loss

Q_DATA = ("query", "both")


def gaussian_kl(mu_q: Tensor, logvar_q: Tensor, mu_p: Tensor, logvar_p: Tensor) -> Tensor:
    """Elementwise KL(N(μ_q, e^{logvar_q}) ‖ N(μ_p, e^{logvar_p})) of diagonal Gaussians:
    ½ [logvar_p − logvar_q + (e^{logvar_q} + (μ_q − μ_p)²) / e^{logvar_p} − 1]."""
    return 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p).pow(2)) / logvar_p.exp() - 1.0)


class PLATIPUS(RowLearner):
    """PLATIPUS (Algorithm 1 of the paper; Algorithm 2 at test time).

    Meta-parameters: the prior mean μ_θ (the model's parameters), the prior log-variance
    log σ²_θ, the log-variance log v_q of the inference network q, and learned step sizes
    γ_p, γ_q (one scalar per parameter tensor). Per task, in meta-training:

        μ_p = μ_θ − γ_p ∇L(μ_θ, support)      p(θ | support) = N(μ_p, σ²_θ)
        μ_q = μ_θ − γ_q ∇L(μ_θ, query)        q(θ | support, query) = N(μ_q, v_q)
              (``q_data="both"``: ∇L(μ_θ, support ∪ query))
        θ ~ q (``samples`` draws, reparameterised), φ = ``steps`` SGD steps (α = lr) from θ on
        the support set, loss = mean query loss of φ over tasks and draws + kl_weight · KL(q ‖ p)

    (q is the paper's gradient step on the mean with the query-set likelihood; the support set
    enters through φ's adaptation.) At test time θ ~ p(θ | support), ``test_samples`` draws from a
    seeded generator, each adapted on the support set. L is the per-task mean loss, so
    kl_weight also absorbs the ELBO's 1/K scale.

    Args (beyond lr, steps, loss):
        samples: θ draws per task in meta-training (rows of the task dimension).
        temperature: None (the paper's Monte Carlo estimate: the query loss averaged over the
            draws) or τ > 0: the multi-sample objective −τ log 1/S Σ_s exp(−L_query(φ_s)/τ) per
            task, a likelihood mixture over the S draws (as BMAML's ``temperature``): only the
            draws that fit a task's query set need to, so the sampling variance is not pushed
            down by every draw's error. Equal to the paper's loss for ``samples=1``.
        test_samples: draws per task at test time.
        kl_weight: weight of the KL term (summed over all parameters, mean over tasks).
        init_std: initial σ_θ and √v_q.
        min_std: a floor s_0 under both standard deviations: the variances used (sampling and
            KL) are e^{log σ²} + s_0², so the learned ones can fall (the query loss pushes them
            down, and the KL is flat along q = p) without the samples collapsing. 0: no floor.
            On the ambiguous sinusoids a floor of 0.1 costs more fit than it adds spread
            (docs/bayesian-uncertainty.md, fourth pass).
        q_data: the data of q's gradient step: "query" (Algorithm 1 of the paper, and
            cnguyen10/few_shot_meta_learning) or "both" (support ∪ query, one mean loss over all
            K + N points: the paper's text, where q conditions on the training and test data).
        gamma: initial γ_p and γ_q (None: lr).
        first_order: no second-order terms through the inner steps and the γ steps.
        fused, task_batched: see :class:`~maml_ext.algorithms.bayes.RowLearner`.

    ``meta_loss`` returns a scalar whose value is the mean query loss and whose gradient is the
    objective's (query loss or its mixture + kl_weight · KL).

    Uncertainty: with the paper's mean the learned σ_θ drifts down and the samples are
    under-dispersed; ``temperature=0.1`` with ``samples=10`` holds σ_θ at ``init_std`` and
    widens the sampled functions (docs/bayesian-uncertainty.md, fifth pass).
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float = 0.01,
        steps: int = 1,
        *,
        samples: int = 1,
        test_samples: int = 5,
        kl_weight: float = 1e-3,
        init_std: float = 0.01,
        min_std: float = 0.0,
        temperature: float | None = None,
        q_data: str = "query",
        gamma: float | None = None,
        first_order: bool = False,
        loss: str = "mse",
        fused: bool | None = None,
        task_batched: bool | None = None,
    ) -> None:
        for key, value in (("samples", samples), ("test_samples", test_samples)):
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"{key} must be an integer >= 1, got {value!r}")
        if not (isinstance(kl_weight, (int, float)) and not isinstance(kl_weight, bool) and kl_weight >= 0):
            raise ValueError(f"kl_weight must be a number >= 0, got {kl_weight!r}")
        for key, value in (("init_std", init_std), ("gamma", 1.0 if gamma is None else gamma)):
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0):
                raise ValueError(f"{key} must be a number > 0, got {value!r}")
        if not (isinstance(min_std, (int, float)) and not isinstance(min_std, bool) and min_std >= 0):
            raise ValueError(f"min_std must be a number >= 0, got {min_std!r}")
        if temperature is not None and not (
            isinstance(temperature, (int, float)) and not isinstance(temperature, bool) and temperature > 0
        ):
            raise ValueError(f"temperature must be None or a number > 0, got {temperature!r}")
        if q_data not in Q_DATA:
            raise ValueError(f"q_data must be one of {Q_DATA}, got {q_data!r}")
        super().__init__(model, lr=lr, steps=steps, loss=loss, fused=fused, task_batched=task_batched)
        self.samples = samples
        self.test_samples = test_samples
        self.kl_weight = float(kl_weight)
        self.first_order = bool(first_order)
        self.min_std = float(min_std)
        self.q_data = q_data
        self.temperature = None if temperature is None else float(temperature)
        named = dict(model.named_parameters())
        logvar = 2.0 * math.log(init_std)

        def like(name: str, value: float) -> nn.Parameter:
            return nn.Parameter(torch.full_like(named[name], value).detach())

        def scalar(name: str, value: float) -> nn.Parameter:
            return nn.Parameter(named[name].new_full((), value).detach())

        g0 = float(lr if gamma is None else gamma)
        self.prior_logvar = nn.ParameterList(like(n, logvar) for n in self.adapt_names)
        self.q_logvar = nn.ParameterList(like(n, logvar) for n in self.adapt_names)
        self.log_gamma_p = nn.ParameterList(scalar(n, math.log(g0)) for n in self.adapt_names)
        self.log_gamma_q = nn.ParameterList(scalar(n, math.log(g0)) for n in self.adapt_names)

    def _mean(self) -> Rows:
        named = dict(self.model.named_parameters())
        return {n: named[n] for n in self.adapt_names}

    def _stepped_mean(self, x: Tensor, y: Tensor, log_gammas: nn.ParameterList, create_graph: bool) -> Rows:
        """μ_θ − γ ∇L(μ_θ, (x, y)) per task ``[T, ...]``."""
        mu = self._mean()
        tasks = x.shape[0]
        _, grads = self.row_grads({n: p.expand(tasks, *p.shape) for n, p in mu.items()}, x, y, create_graph)
        names = list(mu)
        return dict(zip(names, ops.inner_update([mu[n] for n in names], [grads[n] for n in names], [g.exp() for g in log_gammas])))

    def floored(self, logvar: Tensor) -> Tensor:
        """The log-variance used: log(e^{logvar} + min_std²) (``logvar`` itself without a floor)."""
        return torch.logaddexp(logvar, logvar.new_tensor(2.0 * math.log(self.min_std))) if self.min_std > 0 else logvar

    def _sample(self, mean: Rows, logvars: nn.ParameterList, sets: int, generator: torch.Generator | None) -> Rows:
        """``sets`` reparameterised draws per task from N(mean [T, ...], e^{logvar} + min_std²), as rows."""
        rows = {}
        for (n, mu), logvar in zip(mean.items(), map(self.floored, logvars)):
            noise = torch.randn((mu.shape[0], sets, *mu.shape[1:]), generator=generator, dtype=mu.dtype, device=mu.device)
            rows[n] = (mu.unsqueeze(1) + (0.5 * logvar).exp() * noise).flatten(0, 1)
        return rows

    def kl(self, mu_q: Rows, mu_p: Rows) -> Tensor:
        """KL(q ‖ p) per task ``[T]``, summed over every parameter entry."""
        total = 0.0
        for (n, mq), lq, lp in zip(mu_q.items(), self.q_logvar, self.prior_logvar):
            total = total + gaussian_kl(mq, self.floored(lq), mu_p[n], self.floored(lp)).flatten(1).sum(1)
        return total

    def q_mean(self, batch: TaskBatch, create_graph: bool) -> Rows:
        """μ_q per task: μ_θ − γ_q ∇L(μ_θ, ·) on the query set, or on support ∪ query (``q_data``)."""
        x, y = batch.x_query, batch.y_query
        if self.q_data == "both":
            x, y = torch.cat([batch.x_support, x], 1), torch.cat([batch.y_support, y], 1)
        return self._stepped_mean(x, y, self.log_gamma_q, create_graph)

    def meta_loss(self, batch: TaskBatch, iteration: int = 0) -> Tensor:
        second = not self.first_order
        mu_p = self._stepped_mean(batch.x_support, batch.y_support, self.log_gamma_p, second)
        mu_q = self.q_mean(batch, second)
        theta = self._sample(mu_q, self.q_logvar, self.samples, None)  # global RNG: checkpointed by the loop
        s = self.samples
        for theta in self.sgd_rows(theta, expand_rows(batch.x_support, s), expand_rows(batch.y_support, s),
                                   self.steps, self.lr, self.first_order):
            pass
        query = self.row_losses(theta, expand_rows(batch.x_query, s), expand_rows(batch.y_query, s)).view(-1, s)
        fit = query.mean() if self.temperature is None else soft_min_loss(query, self.temperature)
        objective = fit + self.kl_weight * self.kl(mu_q, mu_p).mean()
        return objective + (query.mean() - objective).detach()

    def adapted_sets(
        self, x_support: Tensor, y_support: Tensor, steps: int, lr: float | None, generator: torch.Generator | None
    ) -> Iterator[tuple[Rows, int]]:
        """θ ~ N(μ_θ − γ_p ∇L(μ_θ, support), σ²_θ), ``test_samples`` per task, then SGD on the
        support set with ``lr`` (eval.lr; None: α). The first yield (0 steps) already includes the
        γ_p step on the support set."""
        s = self.test_samples
        mu_p = {n: p.detach() for n, p in self._stepped_mean(x_support, y_support, self.log_gamma_p, False).items()}
        rows = {n: p.detach() for n, p in self._sample(mu_p, self.prior_logvar, s, generator).items()}
        yield rows, s
        x, y = expand_rows(x_support, s), expand_rows(y_support, s)
        for rows in self.sgd_rows(rows, x, y, steps, self.lr if lr is None else lr, first_order=True):
            yield rows, s
