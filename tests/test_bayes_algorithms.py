"""BMAML and PLATIPUS: SVGD by hand, M = 1 BMAML == MAML, the KL term, fused == generic paths,
seeded sampling, option errors and checkpoint/resume through the train loop."""

import math

import pytest
import torch
from torch import nn

from maml_ext.algorithms import BMAML, MAML, PLATIPUS, build_algorithm
from maml_ext.algorithms.bayes import expand_rows
from maml_ext.algorithms.platipus import gaussian_kl
from maml_ext.reference.svgd import median_bandwidth, pairwise_sq_dists, svgd_direction
from maml_ext.models.mlp import MLP
from maml_ext.tasks.sinusoid import Sinusoid
from maml_ext.train import config, loop


def batch64(tasks=3, k=6, seed=0):
    b = Sinusoid().sample(tasks, k, k, torch.Generator().manual_seed(seed))
    return type(b)(b.x_support.double(), b.y_support.double(), b.x_query.double(), b.y_query.double(), b.info)


def mlp64(seed=0, hidden=(8, 8)):
    torch.manual_seed(seed)
    return MLP(1, 1, hidden=hidden).double()


def grads_of(learner):
    return {n: p.grad.clone() for n, p in learner.named_parameters() if p.grad is not None}


# ----- SVGD ---------------------------------------------------------------------------------
def test_svgd_direction_matches_hand_computed_two_particles():
    # θ1 = 0, θ2 = 1; ∇log p = (1, −2). d² = 1, med = 1, h = 1/log 2, k12 = exp(−log 2) = 1/2.
    # φ1 = ½[1·1 + ½·(−2) + (2/h)(θ1 − θ2)·½] = −½ log 2
    # φ2 = ½[½·1 + 1·(−2) + (2/h)(θ2 − θ1)·½] = −¾ + ½ log 2
    theta = torch.tensor([[[0.0], [1.0]]], dtype=torch.float64)
    grad = torch.tensor([[[1.0], [-2.0]]], dtype=torch.float64)
    (phi,) = svgd_direction([theta], [grad])
    expected = torch.tensor([[[-0.5 * math.log(2)], [-0.75 + 0.5 * math.log(2)]]], dtype=torch.float64)
    torch.testing.assert_close(phi, expected, rtol=0, atol=1e-14)
    assert median_bandwidth(pairwise_sq_dists([theta])).item() == pytest.approx(1 / math.log(2))


def test_svgd_splits_particles_over_tensors_and_one_particle_is_the_gradient():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 3, 4, 2, generator=gen, dtype=torch.float64), torch.randn(2, 3, 5, generator=gen, dtype=torch.float64)
    ga, gb = torch.randn_like(a), torch.randn_like(b)
    joint = svgd_direction([torch.cat([a.flatten(2), b], 2)], [torch.cat([ga.flatten(2), gb], 2)])[0]
    split = svgd_direction([a, b], [ga, gb])
    torch.testing.assert_close(torch.cat([split[0].flatten(2), split[1]], 2), joint)
    one = svgd_direction([a[:, :1]], [ga[:, :1]])[0]
    assert torch.equal(one, ga[:, :1])


def test_bmaml_inner_step_is_svgd_on_the_support_loss():
    model = mlp64()
    learner = BMAML(model, lr=0.05, steps=1, particles=3, fused=False)
    batch = batch64(tasks=2)
    rows = learner._task_rows(2)
    names = list(rows)
    xs, ys = expand_rows(batch.x_support, 3), expand_rows(batch.y_support, 3)
    (stepped,) = list(learner.svgd_steps(rows, xs, ys, 1, 0.05, first_order=True))
    # By hand: per-row autograd gradient, then θ + α φ with φ from log p = −L.
    grads = {n: torch.zeros_like(rows[n]) for n in names}
    for r in range(6):
        params = {n: rows[n][r].detach().requires_grad_() for n in names}
        out = torch.func.functional_call(model, params, (xs[r],))
        g = torch.autograd.grad((out - ys[r]).pow(2).mean(), list(params.values()))
        for n, gi in zip(names, g):
            grads[n][r] = gi
    phi = svgd_direction([rows[n].detach().view(2, 3, *rows[n].shape[1:]) for n in names],
                         [-grads[n].view(2, 3, *rows[n].shape[1:]) for n in names])
    for n, f in zip(names, phi):
        torch.testing.assert_close(stepped[n], rows[n] + 0.05 * f.reshape(rows[n].shape))


# ----- M = 1 BMAML is MAML ------------------------------------------------------------------
@pytest.mark.parametrize("fused", [False, True], ids=["generic", "fused"])
@pytest.mark.parametrize("first_order", [False, True], ids=["second", "first"])
def test_one_particle_bmaml_equals_maml(fused, first_order):
    batch = batch64()
    maml = MAML(mlp64(), lr=0.05, steps=2, first_order=first_order)
    bmaml = BMAML(mlp64(), lr=0.05, steps=2, particles=1, objective="likelihood", first_order=first_order, fused=fused)
    assert (bmaml.fused_spec is not None) == fused
    a, b = maml.meta_loss(batch), bmaml.meta_loss(batch)
    a.backward(), b.backward()
    torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
    ga, gb = grads_of(maml), grads_of(bmaml)
    assert ga.keys() == gb.keys()
    for n in ga:
        torch.testing.assert_close(gb[n], ga[n], rtol=1e-10, atol=1e-12)


# ----- BMAML's tempered likelihood -----------------------------------------------------------
@pytest.mark.parametrize("fused", [False, True], ids=["generic", "fused"])
@pytest.mark.parametrize("tau", [0.2, 1.0, 5.0])
def test_bmaml_likelihood_temperature_is_the_tempered_mixture(fused, tau):
    # The gradient is that of −τ log 1/M Σ_m exp(−L_m/τ) over the adapted particles' query losses
    # L_m, written out by hand (float64); the value stays the particles' mean query loss.
    batch, m = batch64(), 3
    learner = BMAML(mlp64(), lr=0.05, steps=2, particles=m, objective="likelihood", init_noise=0.3,
                    temperature=tau, fused=fused)
    loss = learner.meta_loss(batch)
    loss.backward()
    got = grads_of(learner)
    learner.zero_grad()
    rows = learner._adapt(batch.x_support, batch.y_support, 2, 0.05, False)
    query = learner.row_losses(rows, expand_rows(batch.x_query, m), expand_rows(batch.y_query, m)).view(-1, m)
    torch.testing.assert_close(loss, query.mean(), rtol=1e-12, atol=1e-12)
    (-tau * torch.log(torch.exp(-query / tau).mean(1))).mean().backward()
    expected = grads_of(learner)
    assert got.keys() == expected.keys() and len(got) == len(dict(learner.named_parameters()))
    for n in got:
        torch.testing.assert_close(got[n], expected[n], rtol=1e-10, atol=1e-13)


# ----- fused == generic ---------------------------------------------------------------------
def twin(cls, **options):
    a = cls(mlp64(), lr=0.05, steps=2, fused=True, **options)
    b = cls(mlp64(), lr=0.05, steps=2, fused=False, **options)
    b.load_state_dict(a.state_dict())
    return a, b


@pytest.mark.parametrize(
    ("cls", "options"),
    [(BMAML, {"particles": 3}), (BMAML, {"particles": 3, "objective": "likelihood"}), (PLATIPUS, {"samples": 2})],
    ids=["bmaml-chaser", "bmaml-likelihood", "platipus"],
)
def test_fused_path_equals_generic_path(cls, options):
    batch = batch64()
    fused, generic = twin(cls, **options)
    assert fused.fused_spec is not None and generic.fused_spec is None
    losses = []
    for learner in (fused, generic):
        torch.manual_seed(5)  # PLATIPUS draws θ from the global generator in training
        loss = learner.meta_loss(batch)
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-10, atol=1e-12)
    gf, gg = grads_of(fused), grads_of(generic)
    assert gf.keys() == gg.keys() and len(gf) == len(dict(fused.named_parameters()))
    for n in gf:
        torch.testing.assert_close(gf[n], gg[n], rtol=1e-9, atol=1e-12)
    gen = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    torch.testing.assert_close(
        fused.sample_predictions(batch.x_support, batch.y_support, batch.x_query, 2, generator=gen()),
        generic.sample_predictions(batch.x_support, batch.y_support, batch.x_query, 2, generator=gen()),
    )


# ----- PLATIPUS's KL ------------------------------------------------------------------------
def test_gaussian_kl_is_the_closed_form_and_torch_distributions():
    gen = torch.Generator().manual_seed(0)
    mq, mp, lq, lp = (torch.randn(4, 7, generator=gen, dtype=torch.float64) for _ in range(4))
    by_hand = torch.log(lp.exp().sqrt() / lq.exp().sqrt()) + (lq.exp() + (mq - mp) ** 2) / (2 * lp.exp()) - 0.5
    torch.testing.assert_close(gaussian_kl(mq, lq, mp, lp), by_hand)
    dist = torch.distributions
    reference = dist.kl_divergence(dist.Normal(mq, (0.5 * lq).exp()), dist.Normal(mp, (0.5 * lp).exp()))
    torch.testing.assert_close(gaussian_kl(mq, lq, mp, lp), reference)


def test_platipus_kl_term_sums_every_parameter_per_task():
    learner = PLATIPUS(mlp64(), lr=0.05, init_std=0.1)
    with torch.no_grad():
        for lq, lp in zip(learner.q_logvar, learner.prior_logvar):
            lq.normal_(), lp.normal_()
    gen = torch.Generator().manual_seed(2)
    names = learner.adapt_names
    shapes = {n: p.shape for n, p in learner.model.named_parameters()}
    mu_q = {n: torch.randn(3, *shapes[n], generator=gen, dtype=torch.float64) for n in names}
    mu_p = {n: torch.randn(3, *shapes[n], generator=gen, dtype=torch.float64) for n in names}
    dist = torch.distributions
    expected = sum(
        dist.kl_divergence(dist.Normal(mu_q[n], (0.5 * lq).exp()), dist.Normal(mu_p[n], (0.5 * lp).exp())).flatten(1).sum(1)
        for n, lq, lp in zip(names, learner.q_logvar, learner.prior_logvar)
    )
    torch.testing.assert_close(learner.kl(mu_q, mu_p), expected)


def test_platipus_meta_gradient_reaches_every_meta_parameter():
    learner = PLATIPUS(mlp64(), lr=0.05, steps=1, samples=2, kl_weight=0.1)
    learner.meta_loss(batch64()).backward()
    for name, p in learner.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


# ----- PLATIPUS's multi-sample objective -------------------------------------------------------
def platipus_objective_by_hand(learner, batch, tau, seed):
    """The meta-objective rebuilt from the learner's pieces with the draws of ``seed``: per task t
    and draw s (row t·S + s) the query loss L_ts, then −τ log 1/S Σ_s exp(−L_ts/τ) written out
    task by task (τ None: the mean), + kl_weight · mean KL. Returns (objective, mean query loss)."""
    s = learner.samples
    mu_p = learner._stepped_mean(batch.x_support, batch.y_support, learner.log_gamma_p, True)
    mu_q = learner.q_mean(batch, True)
    torch.manual_seed(seed)
    theta = learner._sample(mu_q, learner.q_logvar, s, None)
    for theta in learner.sgd_rows(theta, expand_rows(batch.x_support, s), expand_rows(batch.y_support, s),
                                  learner.steps, learner.lr, False):
        pass
    rows = learner.row_losses(theta, expand_rows(batch.x_query, s), expand_rows(batch.y_query, s))
    tasks = batch.x_support.shape[0]
    per_task = []
    for t in range(tasks):
        draws = [rows[t * s + k] for k in range(s)]
        per_task.append(sum(draws) / s if tau is None else -tau * torch.log(sum(torch.exp(-d / tau) for d in draws) / s))
    return sum(per_task) / tasks + learner.kl_weight * learner.kl(mu_q, mu_p).mean(), rows.mean()


@pytest.mark.parametrize("fused", [False, True], ids=["generic", "fused"])
@pytest.mark.parametrize(("samples", "tau", "q_data"), [(1, 0.3, "query"), (3, None, "both"), (3, 0.05, "query"), (3, 2.0, "both")])
def test_platipus_temperature_is_the_tempered_mixture_over_draws(fused, samples, tau, q_data):
    # float64: the gradient of meta_loss is that of the objective written out task by task
    # (a wrong grouping of rows into tasks, or the mean for τ, changes it); the value stays the
    # mean query loss.
    batch = batch64(tasks=3)
    learner = PLATIPUS(mlp64(), lr=0.05, steps=2, samples=samples, kl_weight=0.1, init_std=0.3,
                       temperature=tau, q_data=q_data, fused=fused)
    torch.manual_seed(11)
    loss = learner.meta_loss(batch)
    loss.backward()
    got = grads_of(learner)
    learner.zero_grad()
    objective, query = platipus_objective_by_hand(learner, batch, tau, 11)
    torch.testing.assert_close(loss, query, rtol=1e-12, atol=1e-12)
    objective.backward()
    expected = grads_of(learner)
    assert got.keys() == expected.keys() and len(got) == len(dict(learner.named_parameters()))
    for n in got:
        torch.testing.assert_close(got[n], expected[n], rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("tau", [0.01, 1.0, 100.0])
def test_platipus_one_sample_temperature_equals_the_paper_loss(tau):
    # S = 1: −τ log exp(−L/τ) = L, so every τ gives the paper's loss and meta-gradient (float64).
    batch, results = batch64(), []
    for temperature in (None, tau):
        learner = PLATIPUS(mlp64(), lr=0.05, steps=2, samples=1, kl_weight=0.1, init_std=0.3, temperature=temperature)
        torch.manual_seed(3)
        loss = learner.meta_loss(batch)
        loss.backward()
        results.append((loss, grads_of(learner)))
    (l0, g0), (l1, g1) = results
    torch.testing.assert_close(l1, l0, rtol=1e-12, atol=1e-12)
    assert g0.keys() == g1.keys()
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("fused", [False, True], ids=["generic", "fused"])
@pytest.mark.parametrize("q_data", ["query", "both"])
def test_platipus_q_mean_is_a_gradient_step_on_its_data(fused, q_data):
    # Per task, by autograd on the model itself (float64): μ_θ − γ_q ∇ mean-MSE(μ_θ; D), D the
    # query set or support ∪ query (meta_loss uses q_mean: the tempered-mixture test, q_data "both").
    batch = batch64(tasks=2, k=4)
    learner = PLATIPUS(mlp64(), lr=0.05, q_data=q_data, gamma=0.3, fused=fused)
    with torch.no_grad():
        for i, g in enumerate(learner.log_gamma_q):
            g.fill_(math.log(0.1 + 0.05 * i))
    got = learner.q_mean(batch, False)
    names = learner.adapt_names
    params = [dict(learner.model.named_parameters())[n] for n in names]
    for t in range(2):
        x, y = batch.x_query[t], batch.y_query[t]
        if q_data == "both":
            x, y = torch.cat([batch.x_support[t], x]), torch.cat([batch.y_support[t], y])
        grads = torch.autograd.grad((learner.model(x) - y).pow(2).mean(), params)
        for n, p, g, lg in zip(names, params, grads, learner.log_gamma_q):
            torch.testing.assert_close(got[n][t], p - lg.exp() * g, rtol=1e-10, atol=1e-13)


# ----- seeded sampling ----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["bmaml", "platipus"])
def test_sampling_is_seeded_and_reproducible(name):
    batch = batch64()
    learner = build_algorithm(name, mlp64())
    draw = lambda seed: learner.sample_predictions(  # noqa: E731
        batch.x_support, batch.y_support, batch.x_query, 2, generator=torch.Generator().manual_seed(seed))
    first, again, other = draw(0), draw(0), draw(1)
    assert first.shape == (3, 3, 5, 6, 1)
    assert torch.equal(first, again)
    # BMAML's particles are deterministic; PLATIPUS's draws follow the seed.
    assert torch.equal(first, other) == (name == "bmaml")
    assert not torch.equal(first[:, :, 0], first[:, :, 1])  # the sets differ from each other
    torch.manual_seed(0)
    a = build_algorithm(name, mlp64()).meta_loss(batch)
    torch.manual_seed(0)
    b = build_algorithm(name, mlp64()).meta_loss(batch)
    assert torch.equal(a, b)


# ----- options ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("bmaml", {"particles": 0}, "particles must be an integer >= 1"),
        ("bmaml", {"particles": 2.5}, "particles must be an integer >= 1"),
        ("bmaml", {"objective": "elbo"}, "objective must be one of"),
        ("bmaml", {"leader_steps": 0}, "leader_steps must be an integer >= 1"),
        ("bmaml", {"init_noise": -1.0}, "init_noise must be a number >= 0"),
        ("bmaml", {"objective": "likelihood", "temperature": 0.0}, "temperature must be a number > 0"),
        ("bmaml", {"temperature": 0.5}, "temperature applies to objective='likelihood' only"),
        ("bmaml", {"adapt": ["0"]}, "rejected its options"),
        ("platipus", {"samples": 0}, "samples must be an integer >= 1"),
        ("platipus", {"test_samples": -2}, "test_samples must be an integer >= 1"),
        ("platipus", {"kl_weight": -0.1}, "kl_weight must be a number >= 0"),
        ("platipus", {"init_std": 0.0}, "init_std must be a number > 0"),
        ("platipus", {"min_std": -0.1}, "min_std must be a number >= 0"),
        ("platipus", {"gamma": -1.0}, "gamma must be a number > 0"),
        ("platipus", {"temperature": 0.0}, "temperature must be None or a number > 0"),
        ("platipus", {"temperature": "hot"}, "temperature must be None or a number > 0"),
        ("platipus", {"q_data": "support"}, "q_data must be one of"),
        ("platipus", {"lr": 0.0}, "lr must be > 0"),
    ],
)
def test_bad_options_raise_clear_errors(name, options, message):
    with pytest.raises(ValueError, match=message):
        build_algorithm(name, mlp64(), **options)


@pytest.mark.parametrize("name", ["bmaml", "platipus"])
def test_fused_true_without_a_fused_model_is_an_error(name):
    with pytest.raises(ValueError, match=r"fused=True is not possible: the model is not a plain MLP \(no fused MLP spec declared or detected\)"):
        build_algorithm(name, nn.Linear(1, 1), fused=True)


# ----- train loop: checkpoint and resume -----------------------------------------------------
TINY = [
    "model.hidden=[8]", "train.iterations=4", "train.meta_batch=3", "train.log_every=1",
    "train.checkpoint_every=2", "eval.num_tasks=10", "eval.shots=[5]", "eval.k_query=10", "eval.steps=2",
]


@pytest.mark.parametrize("name", ["bmaml", "platipus"])
def test_resume_equals_uninterrupted(tmp_path, name):
    cfg = lambda *extra: config.load("sinusoid", [*TINY, f"algorithm.name={name}", *extra])  # noqa: E731
    straight, split = tmp_path / "straight", tmp_path / "split"
    loop.train(cfg(), straight, progress=False)
    loop.train(cfg("train.iterations=2"), split, progress=False)
    loop.train(cfg(), split, resume=True, progress=False)
    a = torch.load(straight / loop.CHECKPOINT, weights_only=True)["learner"]
    b = torch.load(split / loop.CHECKPOINT, weights_only=True)["learner"]
    assert a.keys() == b.keys() and any("logvar" in k or "extra" in k for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    run, iteration = loop.restore(split / loop.CHECKPOINT)
    assert iteration == 4 and type(run.learner).__name__ == name.upper()


@pytest.mark.parametrize("name", ["bmaml", "platipus"])
def test_single_set_adaptation_is_refused(name):
    learner = build_algorithm(name, mlp64())
    batch = batch64()
    with pytest.raises(NotImplementedError, match="adapts several parameter sets per task"):
        learner.adapt(batch.x_support, batch.y_support)
