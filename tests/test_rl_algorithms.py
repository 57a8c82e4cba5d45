"""MAML-RL's fused, batched path against the plain per-task autograd reference (float64)."""

from __future__ import annotations

import io
import math

import pytest
import torch

from maml_ext import ops
from maml_ext.rl import algorithms as A
from maml_ext.rl import policy, trpo
from maml_ext.rl import train as rl_train
from maml_ext.rl.kl_hessian import KLHessian
from maml_ext.rl.envs.point_nav import PointNav
from maml_ext.rl.policy import GaussianMLPPolicy
from maml_ext.rl.rollouts import sample
from maml_ext.train import config
from maml_ext.train.progress import Progress

import rl_looped as looped  # the per-task autograd reference (tests/rl_looped.py)

LR = 0.1


def _batch(activation="relu"):
    """A tiny float64 meta-batch: 3 tasks × 4 rollouts × 12 steps, pre- and post-update data."""
    torch.manual_seed(0)
    env = PointNav(horizon=12, action_scale=0.1, dtype=torch.float64)
    pol = GaussianMLPPolicy(2, 2, hidden=(8, 8), init_std=0.7, activation=activation).double()
    with torch.no_grad():
        pol.log_std.copy_(torch.tensor([-0.3, 0.2]))
        for layer in pol.layers:  # away from the ReLU kink (zero biases, rollouts from the origin)
            layer.bias.uniform_(-0.3, 0.3)
    gen = torch.Generator().manual_seed(3)
    tasks = env.sample_tasks(3, gen)
    params = [p.detach() for p in pol.params()]
    pre = A.process(sample(env, tasks, params, 4, gen, activation))
    adapted = A.adapt(params, pre, LR, activation)
    post = A.process(sample(env, tasks, adapted, 4, gen, activation))
    return params, pre, post, adapted


@pytest.fixture(scope="module")
def batch():
    return _batch()


def _close(a, b, rtol=1e-8, atol=1e-10):
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol)


def test_surrogate_gradient_matches_autograd(batch):
    params, pre, _, _ = batch
    per_task = [p.expand(3, *p.shape).contiguous() for p in params]
    _, grads, _ = ops.mlp_hvp(per_task, pre.obs, pre.actions, [torch.zeros_like(p) for p in per_task],
                              loss="gaussian_nll", sample_weight=pre.weight)
    for t in range(3):
        leaves = [p.clone().requires_grad_() for p in params]
        expected = torch.autograd.grad(looped.inner_loss(leaves, looped._task(pre, t)), leaves)
        _close([g[t] for g in grads], expected)


def test_adapt_matches_autograd_shared_and_per_task(batch):
    params, pre, post, adapted = batch
    for t in range(3):
        leaves = [p.clone().requires_grad_() for p in params]
        _close([a[t] for a in adapted], looped.adapt(leaves, looped._task(pre, t), LR))
    # a second step from per-task parameters (the test-time path through mlp_hvp)
    again = A.adapt(adapted, post, 0.05)
    for t in range(3):
        leaves = [a[t].clone().requires_grad_() for a in adapted]
        _close([a[t] for a in again], looped.adapt(leaves, looped._task(post, t), 0.05))


def test_inner_loss_is_mean_over_valid_steps(batch):
    params, pre, _, _ = batch
    loss, _, _ = ops.mlp_hvp([p.expand(3, *p.shape).contiguous() for p in params], pre.obs, pre.actions,
                             [torch.zeros(3, *p.shape, dtype=p.dtype) for p in params],
                             loss="gaussian_nll", sample_weight=pre.weight)
    mask = pre.valid > 0
    logp = policy.log_prob(params, pre.obs, pre.actions)
    for t in range(3):
        expected = -(pre.advantages[t] * logp[t])[mask[t]].mean()
        torch.testing.assert_close(loss[t], expected, rtol=1e-10, atol=1e-12)


def test_meta_gradient_matches_second_order_autograd(batch):
    params, pre, post, adapted = batch
    objective = A.MetaObjective(params, pre, post, LR, adapted=adapted)
    loss, grads = objective.gradient()
    objs = looped.objectives(params, pre, post, LR)
    _close(grads, looped.meta_gradient(params, objs))
    with torch.enable_grad():
        leaves = [p.clone().requires_grad_() for p in params]
        torch.testing.assert_close(loss, sum(o.surrogate(leaves).item() for o in objs) / 3)
    # the second-order term matters here: the first-order gradient differs
    fo = A.MetaObjective(params, pre, post, LR, first_order=True).gradient()[1]
    assert max((a - b).abs().max().item() for a, b in zip(fo, grads)) > 1e-6


def test_kl_hvp_matches_autograd_third_derivatives(batch):
    params, pre, post, adapted = batch
    objective = A.MetaObjective(params, pre, post, LR, adapted=adapted)
    gen = torch.Generator().manual_seed(5)
    v = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
    objs = looped.objectives(params, pre, post, LR)
    exact = looped.kl_hvp_exact(params, objs, v)
    _close(objective.kl_hvp(v), exact, rtol=1e-7, atol=1e-9)
    # the paper's finite differences agree to their truncation error
    _close(looped.kl_hvp_fd(params, objs, v), exact, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("first_order", [False, True])
def test_cached_kl_hvp_equals_the_fused_ops_product(activation, first_order):
    """The KL-HVP from passes kept for the meta-step (kl_hessian.py) equals the one from three
    fused mlp_hvp calls that recompute everything (float64, 1e-10), for ReLU and tanh (whose
    second derivative enters the inner Hessian), MAML and FOMAML, and again on a second direction
    (the cached passes are reused, not consumed)."""
    params, pre, post, adapted = _batch(activation)
    objective = A.MetaObjective(params, pre, post, LR, activation, first_order, adapted=adapted)
    gen = torch.Generator().manual_seed(5)
    for _ in range(2):
        v = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
        _close(objective.kl_hvp(v), objective.kl_hvp_fused(v), rtol=1e-10, atol=1e-12)
    if not first_order:
        objs = looped.objectives(params, pre, post, LR, activation)
        _close(objective.kl_hvp(v), looped.kl_hvp_exact(params, objs, v), rtol=1e-10, atol=1e-12)


def test_evaluate_matches_autograd_surrogate_and_kl(batch):
    params, pre, post, adapted = batch
    objective = A.MetaObjective(params, pre, post, LR, adapted=adapted)
    moved = [p + 0.01 * torch.ones_like(p) for p in params]
    loss, kl = objective.evaluate(moved)
    objs = looped.objectives(params, pre, post, LR)
    with torch.enable_grad():
        moved = [p.requires_grad_() for p in moved]
        torch.testing.assert_close(loss, sum(o.surrogate(moved).item() for o in objs) / 3)
        torch.testing.assert_close(kl, sum(o.kl(moved).item() for o in objs) / 3)
    assert kl > 0
    assert objective.evaluate(params)[1] == pytest.approx(0.0, abs=1e-14)


def test_conjugate_gradient_solves_spd_system():
    gen = torch.Generator().manual_seed(0)
    m = torch.randn(6, 6, generator=gen, dtype=torch.float64)
    h = m @ m.T + 0.5 * torch.eye(6, dtype=torch.float64)
    b = torch.randn(6, generator=gen, dtype=torch.float64)
    x, hx = trpo.conjugate_gradient(lambda v: h @ v, b, iterations=6)
    torch.testing.assert_close(h @ x, b, rtol=1e-8, atol=1e-8)
    # H x accumulated from CG's own products, at any iteration count (TRPO's sᵀHs needs it)
    for iterations in (2, 6):
        x, hx = trpo.conjugate_gradient(lambda v: h @ v, b, iterations=iterations)
        torch.testing.assert_close(hx, h @ x, rtol=1e-12, atol=1e-12)


def test_trpo_step_respects_kl_bound_and_improves(batch):
    params, pre, post, adapted = batch
    objective = A.MetaObjective(params, pre, post, LR, adapted=adapted)
    loss, grads = objective.gradient()
    sizes = [p.numel() for p in params]

    def unflat(x):
        return [c.view_as(p) for c, p in zip(torch.split(x, sizes), params)]

    theta = torch.cat([p.reshape(-1) for p in params])
    for max_kl in (0.01, 1e-4):
        new, result = trpo.step(theta, torch.cat([g.reshape(-1) for g in grads]),
                                lambda x: torch.cat([h.reshape(-1) for h in objective.kl_hvp(unflat(x))]),
                                lambda x: objective.evaluate(unflat(x)), max_kl=max_kl)
        assert result.accepted
        assert result.kl <= max_kl
        assert result.loss_after < result.loss_before == pytest.approx(loss)
        assert objective.evaluate(unflat(new)) == (result.loss_after, result.kl)
    # a loss that never decreases is rejected and leaves θ unchanged
    new, result = trpo.step(theta, torch.cat([g.reshape(-1) for g in grads]),
                            lambda x: torch.cat([h.reshape(-1) for h in objective.kl_hvp(unflat(x))]),
                            lambda x: (float((x - theta).norm()), 0.0), max_kl=0.01, max_backtracks=3)
    assert not result.accepted and result.backtracks == 3
    assert torch.equal(new, theta)


def _iteration(**options):
    env = PointNav(horizon=10, action_scale=0.1, dtype=torch.float64)
    torch.manual_seed(0)
    learner = A.MetaRL(GaussianMLPPolicy(2, 2, hidden=(8, 8)).double(), **options)
    info = learner.iteration(env, env.sample_tasks(3, torch.Generator().manual_seed(0)), 5,
                             torch.Generator().manual_seed(1))
    return info, [p.detach().clone() for p in learner.params()]


def test_trpo_step_is_the_same_with_cached_and_fused_kl_products():
    """A whole MAML-TRPO iteration (10 CG iterations, sᵀHs from CG's own products, line search)
    takes the same step with either implementation of the KL-HVP (float64; the products agree to
    ~1e-15, ten CG iterations with damping 1e-5 amplify that rounding to ~1e-9 in the step)."""
    cached_info, cached = _iteration(kl_products="cached")
    fused_info, fused = _iteration(kl_products="fused")
    assert cached_info["accepted"] and cached_info == pytest.approx(fused_info, rel=1e-7, abs=1e-13)
    _close(cached, fused, rtol=1e-7, atol=1e-8)


def test_cg_subsample_uses_every_tasks_evenly_spaced_samples(batch):
    """hvp_subsample: the product equals the full-sample formula on the kept rows (the adapted
    policies unchanged), 1 keeps everything, and a subsampled TRPO step still holds the KL bound
    (the line search measures the KL on all samples)."""
    params, pre, post, adapted = batch
    k = pre.obs.shape[1]  # 4 rollouts × 12 steps
    assert pre.subsample(1.0) is pre
    half = pre.subsample(0.5)
    assert half.obs.shape[1] == k // 2 and torch.equal(half.obs, pre.obs[:, ::2])
    assert pre.subsample(1e-9).obs.shape[1] == 1
    with pytest.raises(ValueError, match="fraction must be in"):
        pre.subsample(0.0)
    with pytest.raises(ValueError, match="hvp_subsample must be in"):
        A.MetaObjective(params, pre, post, LR, adapted=adapted, hvp_subsample=1.5)
    gen = torch.Generator().manual_seed(5)
    v = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
    sub = A.MetaObjective(params, pre, post, LR, adapted=adapted, hvp_subsample=0.25)
    kept = A.MetaObjective(params, pre.subsample(0.25), post.subsample(0.25), LR, adapted=adapted)
    _close(sub.kl_hvp(v), kept.kl_hvp_fused(v), rtol=1e-10, atol=1e-12)
    full = A.MetaObjective(params, pre, post, LR, adapted=adapted).kl_hvp(v)
    assert max(float((a - b).abs().max()) for a, b in zip(sub.kl_hvp(v), full)) > 1e-3  # an approximation
    info, _ = _iteration(cg_subsample=0.2)
    assert info["accepted"] and info["kl"] <= 0.01
    cfg = rl_train.load_config(config.apply_overrides(config.read("point-nav"), ["train.cg_subsample=0.25"]))
    assert rl_train.build(cfg).learner.cg_subsample == 0.25  # the config key reaches the learner


def test_trpo_rejects_bad_constants():
    with pytest.raises(ValueError, match="max_kl"):
        trpo.step(torch.zeros(2), torch.ones(2), lambda v: v, lambda x: (0.0, 0.0), max_kl=0.0)
    with pytest.raises(ValueError, match="backtrack_ratio"):
        trpo.step(torch.zeros(2), torch.ones(2), lambda v: v, lambda x: (0.0, 0.0), backtrack_ratio=1.5)


def test_looped_and_batched_iterations_agree():
    """One TRPO meta-iteration of the per-task loop (finite-difference HVPs) and of the batched
    fused path, from the same state and noise: the same rollouts and nearly the same update."""
    env = PointNav(horizon=10, action_scale=0.1, dtype=torch.float64)
    results = []
    for cls in (A.MetaRL, looped.LoopedMetaRL):
        torch.manual_seed(0)
        learner = cls(GaussianMLPPolicy(2, 2, hidden=(8, 8)).double())
        tasks = env.sample_tasks(1, torch.Generator().manual_seed(0))  # T = 1: same noise order
        info = learner.iteration(env, tasks, 5, torch.Generator().manual_seed(1))
        results.append((info, [p.detach().clone() for p in learner.params()]))
    (a, pa), (b, pb) = results
    assert a["return_pre"] == pytest.approx(b["return_pre"], rel=1e-12)
    assert a["return_post"] == pytest.approx(b["return_post"], rel=1e-12)
    assert a["accepted"] and b["accepted"]
    _close(pa, pb, rtol=1e-6, atol=1e-8)


def _one_iteration(max_backtracks: int = 15) -> tuple[dict, list[torch.Tensor]]:
    torch.manual_seed(0)
    env = PointNav(horizon=10, action_scale=0.1, dtype=torch.float64)
    learner = A.MetaRL(GaussianMLPPolicy(2, 2, hidden=(8, 8)).double(), cg_iters=4, max_backtracks=max_backtracks)
    info = learner.iteration(env, env.sample_tasks(2, torch.Generator().manual_seed(0)), 5,
                             torch.Generator().manual_seed(1))
    return info, [p.detach().clone() for p in learner.params()]


def test_trpo_step_reports_its_progress_on_the_running_bar(capsys):
    """The conjugate gradient and the line search (tens of seconds at the paper's size) show how far
    they are on the open bar; with no bar (progress off) nothing is written, and the step is the same."""
    quiet_info, quiet_params = _one_iteration()
    assert not capsys.readouterr().err  # progress off: silent
    log = io.StringIO()
    bar = Progress(1, stream=log, log_seconds=0.0, what="training")
    try:
        info, params = _one_iteration()
    finally:
        bar.close(1)
    lines = log.getvalue().splitlines()
    assert [f"TRPO: conjugate gradient iteration {i}/4" in "".join(lines) for i in (1, 2)] == [True, True]
    assert any(line.endswith("| TRPO: line search candidate 0/15") for line in lines)  # the loss at θ
    assert any(line.endswith(f"| TRPO: line search candidate {info['backtracks'] + 1}/15") for line in lines)
    # after the rollouts of the same iteration: each step names what it is doing
    assert lines.index(next(x for x in lines if "rollouts: time step" in x)) < lines.index(
        next(x for x in lines if "conjugate gradient" in x))
    # The same step, to rounding: two quiet iterations differ too (the baseline's lstsq varies by
    # ~1e-16, which CG amplifies to ~1e-9 in the step, as in the cached-vs-fused test above); a
    # changed computation (another CG iteration, another line-search step) differs far more.
    assert info == pytest.approx(quiet_info, rel=1e-7, abs=1e-13)
    _close(params, quiet_params, rtol=1e-7, atol=1e-8)


def test_kl_hessian_rejects_bad_input(batch):
    params, pre, post, adapted = batch
    args = (pre.obs, pre.actions, pre.weight, post.obs, post.valid, LR)
    with pytest.raises(ValueError, match="activation must be"):
        KLHessian(params, adapted, *args, "gelu")
    with pytest.raises(ValueError, match="adapted must hold one"):
        KLHessian(params, params, *args, "relu")


@pytest.mark.parametrize("optimizer", ["trpo", "adam"])
def test_meta_gradient_reports_its_progress_on_the_running_bar(batch, optimizer):
    """The inner step of an iteration and the meta-gradient through it (seconds at the paper's size,
    one fused call) are named on the open bar while they run, before TRPO's conjugate gradient."""
    params, pre, post, _ = batch
    pol = GaussianMLPPolicy(2, 2, hidden=(8, 8), init_std=0.7).double()
    with torch.no_grad():
        for p, q in zip(pol.params(), params):
            p.copy_(q)
    learner = A.MetaRL(pol, cg_iters=2, optimizer=optimizer)
    log = io.StringIO()
    bar = Progress(1, stream=log, log_seconds=0.0, what="training")
    try:
        learner.meta_step(pre, post)
    finally:
        bar.close(1)
    lines = log.getvalue().splitlines()
    running = lines.index(next(x for x in lines if x.endswith("| meta-RL: meta-gradient through the inner step 0/1")))
    assert lines[running + 1].endswith("| meta-RL: meta-gradient through the inner step 1/1")
    if optimizer == "trpo":
        assert lines[running + 2].endswith("| TRPO: conjugate gradient iteration 1/2")


def test_iteration_names_its_inner_step_on_the_running_bar():
    log = io.StringIO()
    bar = Progress(1, stream=log, log_seconds=0.0, what="training")
    try:
        _one_iteration()
    finally:
        bar.close(1)
    lines = log.getvalue().splitlines()
    inner = lines.index(next(x for x in lines if x.endswith("| meta-RL: inner policy-gradient step 0/1")))
    assert "rollouts: time step" in lines[inner - 1] and "rollouts: time step" in lines[inner + 1]


def test_bad_learner_options():
    pol = GaussianMLPPolicy(2, 2, hidden=(4,))
    with pytest.raises(ValueError, match="optimizer"):
        A.MetaRL(pol, optimizer="sgd")
    with pytest.raises(ValueError, match="lr"):
        A.MetaRL(pol, lr=0.0)
    with pytest.raises(ValueError, match="gamma"):
        A.MetaRL(pol, gamma=1.5)
    with pytest.raises(ValueError, match="kl_products"):
        A.MetaRL(pol, kl_products="exact")
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="cg_subsample"):
            A.MetaRL(pol, cg_subsample=bad)
    with pytest.raises(ValueError, match="cg_subsample < 1 needs kl_products='cached'"):
        A.MetaRL(pol, cg_subsample=0.5, kl_products="fused")
    assert math.isfinite(A.MetaRL(pol, optimizer="adam").lr)
