"""MR-MAML(A): ANIL on the head at β = 0 and zero variance, the reparameterised draw and the KL on
the query encodings against a per-task autograd loop, KL against torch.distributions, bad models."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Normal, kl_divergence

from _mr_maml_a_reference import assert_matches_reference, meta_grads, per_task_reference
from maml_ext.algorithms import MAML, MRMAMLA, build_algorithm
from maml_ext.models.bottleneck import BottleneckMLP
from maml_ext.models.mlp import MLP
from maml_ext.tasks.sinusoid import Sinusoid

LATENT = 3


def model64(seed=0):
    torch.manual_seed(seed)
    return BottleneckMLP(1, 1, hidden=(6, 5), encoder_hidden=(7,), latent=LATENT, activation="tanh").double()


def batch64(tasks=3, seed=1):
    b = Sinusoid().sample(tasks, 5, 7, torch.Generator().manual_seed(seed))
    b.x_support, b.y_support, b.x_query, b.y_query = (t.double() for t in (b.x_support, b.y_support, b.x_query, b.y_query))
    return b


def zero_variance(model):
    """σ = softplus(−1000) = 0 exactly in float64: the scale rows of the encoder's last layer."""
    last = model.encoder[-1]
    with torch.no_grad():
        last.weight[LATENT:] = 0.0
        last.bias[LATENT:] = -1000.0
    return model


def test_beta_zero_and_zero_variance_is_anil_on_the_head():
    model = zero_variance(model64())
    batch = batch64()
    assert F.softplus(model.encoder[-1].bias[LATENT:]).max().item() == 0.0
    mr = MRMAMLA(model, lr=0.1, steps=2, beta=0.0)
    assert mr.training  # the draw happens: z = μ + 0 · ε
    anil = build_algorithm("anil", copy.deepcopy(model), lr=0.1, steps=2, adapt=["head"])  # the model's forward: head(μ)
    loss, grads = meta_grads(mr, model, batch)
    loss_anil, grads_anil = meta_grads(anil, anil.model, batch)
    ref = copy.deepcopy(model)
    loss_ref, grads_ref = per_task_reference(ref, batch, lr=0.1, steps=2, beta=0.0)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(loss, loss_anil, rtol=1e-12, atol=0)
    for n in grads_ref:
        torch.testing.assert_close(grads[n], grads_ref[n], rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(grads[n], grads_anil[n], rtol=1e-10, atol=1e-14)
    assert grads_ref["encoder.0.weight"].abs().max() > 0  # the encoder is meta-learned through the head's adaptation


@pytest.mark.parametrize("scale", ["softplus", "logvar"])
def test_reparameterised_draw_and_query_kl_match_per_task_autograd(scale):
    """Training mode, β > 0: ε drawn for the support then the query inputs (global RNG), the
    head adapted on the support draws, β · KL of the query encodings (not the support's)."""
    model = model64()
    batch = batch64()
    beta = 0.7
    mr = MRMAMLA(model, lr=0.1, steps=2, beta=beta, scale=scale)
    assert_matches_reference(mr, model, batch, 0.1, 2, beta, LATENT, scale=scale)


@pytest.mark.parametrize("scale", ["softplus", "logvar"])
def test_kl_matches_torch_distributions(scale):
    model = model64()
    mr = MRMAMLA(model, scale=scale)
    x = batch64().x_query
    mean, r = model.encoder(x).chunk(2, dim=-1)
    std = F.softplus(r) if scale == "softplus" else (0.5 * r).exp()
    want = kl_divergence(Normal(mean, std), Normal(torch.zeros_like(mean), torch.ones_like(std))).mean()
    torch.testing.assert_close(mr.kl(x), want, rtol=1e-12, atol=0)


class BNEncoderModel(nn.Module):
    """An encoder with BatchNorm (its running statistics must stay untouched) and a head."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(1, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 2 * LATENT))
        self.out = MLP(LATENT, 1, (5,), "tanh")


def test_draws_in_training_mean_in_eval_and_model_untouched():
    torch.manual_seed(0)
    model = BNEncoderModel().double()
    state = copy.deepcopy(model.state_dict())
    mr = build_algorithm("mr-maml-a", model, encoder="enc.", head="out", lr=0.1, beta=0.5)
    assert mr.model is model.out and mr.encoder is model.enc
    batch = batch64()
    x = batch.x_query
    assert not torch.equal(mr.encode(x), mr.encode(x))  # a fresh draw per call
    mr.meta_loss(batch).backward()
    mr.eval()
    mean = mr.latent_stats(x)[0]
    assert torch.equal(mr.encode(x), mean)
    params = mr.adapt(batch.x_support, batch.y_support, steps=2)
    assert torch.equal(mr.predict(params, x), mr.predict(params, x))
    assert torch.isfinite(mr.evaluate(batch, steps=2)).all()
    mr.sample_eval = True  # the paper's code draws at test time too
    assert not torch.equal(mr.encode(x), mean)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert list(model.state_dict()) == list(state)


def test_selectable_by_name_with_the_paper_values():
    for name in ("mr-maml-a", "mr_maml_a"):
        learner = build_algorithm(name, model64(), lr=0.05)
        assert isinstance(learner, MRMAMLA) and isinstance(learner, MAML)
        assert learner.beta == 5.0 and learner.scale == "softplus" and not learner.sample_eval
        assert learner.fused_spec is None
        assert learner.adapt_names == ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]  # the head's


def test_listed_by_the_cli(capsys):
    from maml_ext import cli

    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    algorithms = out.split("algorithms: ")[1].split("\n")[0]
    assert "mr-maml-a" in algorithms and "bottleneck_mlp" in out
    # One name per algorithm; the underscore spelling is accepted (named as such) and builds the same.
    assert algorithms.split(" (")[0].split(", ").count("mr-maml-a") == 1
    assert "mr_maml_a" not in algorithms.split(" (")[0] and "mr_maml_a also accepted" in algorithms


class Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(1, 2 * LATENT)
        self.head = nn.Sequential(nn.Linear(LATENT, 1))
        self.head.append(self.encoder)  # the encoder reused inside the head


class Extra(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(1, 2 * LATENT)
        self.head = nn.Linear(LATENT, 1)
        self.scale = nn.Parameter(torch.ones(()))


@pytest.mark.parametrize("make, options, match", [
    (lambda: MLP(1, 1, (8,)), {}, r"encoder='encoder' is not a submodule of MLP \(its children: \['0', '1', '2'\]\)"),
    (model64, {"encoder": "decoder"}, "encoder='decoder' is not a submodule"),
    (model64, {"head": ""}, "head: expected the name of a submodule"),
    (model64, {"head": "encoder"}, "share parameters"),
    (lambda: nn.Sequential(nn.Linear(1, 6), nn.ReLU()), {"encoder": "0", "head": "1"}, "head='1' has no parameters"),
    (Shared, {}, "share parameters"),
    (Extra, {}, r"parameters \['scale'\] are in neither"),
    (model64, {"beta": -1.0}, "beta must be a number >= 0"),
    (model64, {"scale": "exp"}, "scale must be one of"),
    (model64, {"fused": True}, "fused=True is not possible for mr-maml-a"),
])
def test_models_and_options_that_do_not_fit_are_named(make, options, match):
    with pytest.raises(ValueError, match=match):
        build_algorithm("mr-maml-a", make(), **options)


@pytest.mark.parametrize("latent", [0, 2.5, True])
def test_bottleneck_model_names_a_bad_latent(latent):
    with pytest.raises(ValueError, match="latent must be an integer >= 1"):
        BottleneckMLP(1, 1, latent=latent)


def test_odd_encoder_width_and_clone_are_clear_errors():
    torch.manual_seed(0)
    model = nn.Module()
    model.encoder = nn.Linear(1, 5)
    model.head = nn.Linear(2, 1)
    mr = MRMAMLA(model.double())
    with pytest.raises(ValueError, match=r"encoder: expected outputs \[T, N, 2 \* latent\].*got shape \(3, 5, 5\)"):
        mr.meta_loss(batch64())
    with pytest.raises(NotImplementedError, match="mr-maml-a has no clone"):
        mr.clone()


def test_trains_memo_sinusoid_from_the_cli(tmp_path):
    from maml_ext import cli

    out = tmp_path / "run"
    code = cli.main([
        "train", "sinusoid", "--out", str(out), "--quiet", "--set", "task.name=memo_sinusoid",
        "--set", "model.name=bottleneck_mlp", "--set", "model.hidden=[8, 8]", "--set", "model.encoder_hidden=[8]",
        "--set", "algorithm.name=mr-maml-a", "--set", "train.iterations=3", "--set", "train.meta_batch=2",
        "--set", "eval.num_tasks=4", "--set", "eval.shots=[5]", "--set", "eval.steps=2",
    ])
    assert code == 0 and (out / "eval.json").exists()
