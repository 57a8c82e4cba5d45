"""MR-MAML(W): reduces to MAML at β = 0 and zero variance, reparameterised meta-gradient, KL term."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

from maml_ext.algorithms import MAML, MRMAML, build_algorithm
from maml_ext.models.mlp import MLP
from maml_ext.tasks.sinusoid import Sinusoid

TINY_STD = F.softplus(torch.tensor(-50.0, dtype=torch.float64)).item()  # the paper's sinusoid init


def model64(seed=0, hidden=(8, 6)):
    torch.manual_seed(seed)
    return MLP(1, 1, hidden, activation="tanh").double()


def batch64(tasks=3, seed=1):
    b = Sinusoid().sample(tasks, 5, 7, torch.Generator().manual_seed(seed))
    b.x_support, b.y_support, b.x_query, b.y_query = (t.double() for t in (b.x_support, b.y_support, b.x_query, b.y_query))
    return b


def meta_grads(learner, batch):
    learner.zero_grad()
    loss = learner.meta_loss(batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in learner.model.named_parameters()}


@pytest.mark.parametrize("adapt", [["2", "4"], None], ids=["encoder-not-adapted", "all-adapted-fused-maml"])
def test_beta_zero_and_zero_variance_is_maml(adapt):
    model = model64()
    batch = batch64()
    maml = MAML(copy.deepcopy(model), lr=0.1, steps=2, adapt=adapt)  # adapt=None: the fused MLP op
    mr = MRMAML(model, lr=0.1, steps=2, beta=0.0, stochastic=["0"],
                adapt=adapt or [n for n, _ in model.named_parameters()], init_std=TINY_STD)
    assert (maml.fused_spec is None) == (adapt is not None)
    loss_a, grads_a = meta_grads(maml, batch)
    loss_b, grads_b = meta_grads(mr, batch)
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-12, atol=0)
    for n in grads_a:
        torch.testing.assert_close(grads_b[n], grads_a[n], rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("adapt", [None, ["0", "2", "4"]], ids=["encoder-not-adapted", "encoder-adapted-too"])
def test_meta_gradient_is_reparameterised_maml_plus_kl(adapt):
    """β > 0 and σ not small: ∇μ = g(θ̃) + β μ/σp², ∇ρ = g(θ̃)·ε·sigmoid(ρ) + β ∂KL/∂ρ, where g is
    MAML's meta-gradient at the drawn weights θ̃ = μ + softplus(ρ)·ε (the start of adaptation
    where θ̃ is adapted too)."""
    model = model64()
    batch = batch64()
    beta, prior_std = 0.3, 0.7
    mr = MRMAML(model, lr=0.1, steps=2, beta=beta, stochastic=["0"], adapt=adapt, prior_std=prior_std, init_std=0.05)
    with torch.no_grad():
        mr.rho[0].add_(torch.linspace(-1, 1, mr.rho[0].numel(), dtype=torch.float64).view_as(mr.rho[0]))
        mr.rho[1].add_(0.3)
    torch.manual_seed(7)
    loss, grads = meta_grads(mr, batch)
    rho_grads = [r.grad.clone() for r in mr.rho]

    torch.manual_seed(7)
    named = dict(model.named_parameters())
    eps = {n: torch.randn_like(named[n]) for n in mr.stochastic_names}
    drawn = copy.deepcopy(model)
    with torch.no_grad():
        for n, p in drawn.named_parameters():
            if n in eps:
                p.add_(F.softplus(mr.rho[mr.stochastic_names.index(n)]) * eps[n])
    maml = MAML(drawn, lr=0.1, steps=2, adapt=mr.adapt_names)
    loss_ref, g = meta_grads(maml, batch)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-12, atol=0)
    for n in named:
        want = g[n] + (beta * named[n].detach() / prior_std**2 if n in eps else 0)
        torch.testing.assert_close(grads[n], want, rtol=1e-10, atol=1e-14)
    for n, rho, got in zip(mr.stochastic_names, mr.rho, rho_grads):
        sigma = F.softplus(rho.detach())
        dkl_dsigma = -1 / sigma + sigma / prior_std**2
        want = (g[n] * eps[n] + beta * dkl_dsigma) * torch.sigmoid(rho.detach())
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-14)


def test_kl_matches_torch_distributions():
    model = model64()
    mr = MRMAML(model, stochastic=["0", "2"], adapt=["4"], prior_std=1.7, init_std=0.2)
    with torch.no_grad():
        for r in mr.rho:
            r.copy_(torch.randn_like(r))
    named = dict(model.named_parameters())
    want = sum(
        kl_divergence(Normal(named[n], F.softplus(r)), Normal(torch.zeros_like(r), torch.full_like(r, 1.7))).sum()
        for n, r in zip(mr.stochastic_names, mr.rho)
    )
    torch.testing.assert_close(mr.kl(), want, rtol=1e-12, atol=0)
    assert mr.stochastic_names == ["0.weight", "0.bias", "2.weight", "2.bias"]


def test_draws_in_training_mean_in_eval_and_model_untouched():
    model = model64()
    state = copy.deepcopy(model.state_dict())
    mr = MRMAML(model, init_std=0.5)
    a, b = mr.init_params(), mr.init_params()
    assert not torch.equal(a.frozen["0.weight"], b.frozen["0.weight"])  # a fresh draw per call
    assert torch.equal(a.adapted["2.weight"], model[2].weight)  # adapted weights are not stochastic
    mr.eval()
    c = mr.init_params()
    assert c.frozen["0.weight"] is model[0].weight
    mr.sample_eval = True  # the paper's evaluation: drawn weights at test time too
    d, e = mr.init_params(), mr.init_params()
    assert not torch.equal(d.frozen["0.weight"], e.frozen["0.weight"])
    assert not torch.equal(d.frozen["0.weight"], model[0].weight)
    mr.sample_eval = False
    mr.meta_loss(batch64()).backward()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_selectable_by_name_with_the_paper_split():
    for name in ("mr-maml", "mr_maml"):
        learner = build_algorithm(name, model64(), lr=0.05, beta=1e-3)
        assert isinstance(learner, MRMAML) and learner.beta == 1e-3
        assert learner.stochastic_names == ["0.weight", "0.bias"]  # the first layer: the encoder
        assert learner.adapt_names == ["2.weight", "2.bias", "4.weight", "4.bias"]
        assert learner.fused_spec is None and not learner.sample_eval
    assert build_algorithm("mr-maml", model64(), sample_eval=True).sample_eval
    default = build_algorithm("mr-maml", model64())
    assert math.isclose(F.softplus(default.rho[0]).max().item(), F.softplus(torch.tensor(-20.0)).item(), rel_tol=1e-6)
    # adapt given: the stochastic weights are the others
    assert build_algorithm("mr-maml", model64(), adapt=["4"]).stochastic_names == ["0.weight", "0.bias", "2.weight", "2.bias"]


@pytest.mark.parametrize("options, match", [
    ({"beta": -1.0}, "beta must be a number >= 0"),
    ({"init_std": 0.0}, "init_std must be a finite number > 0"),
    ({"prior_std": float("inf")}, "prior_std must be a finite number > 0"),
    ({"fused": True}, "fused=True is not possible"),
    ({"stochastic": ["nope"]}, "selects no parameter"),
    ({"stochastic": ["0", "2", "4"]}, "covers every parameter"),
])
def test_bad_options_are_named(options, match):
    with pytest.raises(ValueError, match=match):
        build_algorithm("mr-maml", model64(), **options)


def test_trains_from_the_cli(tmp_path):
    from maml_ext import cli

    out = tmp_path / "run"
    code = cli.main([
        "train", "sinusoid", "--out", str(out), "--quiet", "--set", "algorithm.name=mr-maml",
        "--set", "algorithm.beta=0.001", "--set", "model.hidden=[8, 8]", "--set", "train.iterations=3",
        "--set", "train.meta_batch=2", "--set", "eval.num_tasks=4", "--set", "eval.shots=[5]", "--set", "eval.steps=2",
    ])
    assert code == 0 and (out / "eval.json").exists()
