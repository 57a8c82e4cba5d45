"""Every algorithm end to end on CPU; fused vs generic path; first vs second order; memory."""

import gc
import re
import weakref

import pytest
import torch
from torch import nn

from maml_ext.algorithms import ALGORITHMS, MAML, build_algorithm, msl_weights
from maml_ext.models.bottleneck import build as build_bottleneck
from maml_ext.models.mlp import build as build_mlp
from maml_ext.tasks.episodes import Episodes
from maml_ext.tasks.sinusoid import Sinusoid


def sinusoid_batch(tasks=4, k=5, seed=0):
    return Sinusoid().sample(tasks, k, k, torch.Generator().manual_seed(seed))


def small_mlp(seed=0):
    torch.manual_seed(seed)
    return build_mlp(1, 1, hidden=(16, 16))


def small_model(name, seed=0):
    """The learner's kind of model: an encoder and a head for MR-MAML(A), else the MLP."""
    if name not in ("mr-maml-a", "mr_maml_a"):
        return small_mlp(seed)
    torch.manual_seed(seed)
    return build_bottleneck(1, 1, hidden=(16, 16), encoder_hidden=(16,), latent=4)


def grads_of(learner, batch, iteration=0):
    learner.zero_grad(set_to_none=True)
    learner.meta_loss(batch, iteration).backward()
    return {n: p.grad.clone() for n, p in learner.named_parameters()}


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_every_algorithm_runs_a_meta_iteration(name):
    learner = build_algorithm(name, small_model(name), lr=0.05, steps=2)
    before = {n: p.detach().clone() for n, p in learner.named_parameters()}
    opt = torch.optim.Adam(learner.parameters(), lr=1e-2)
    loss = learner.meta_loss(sinusoid_batch())
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    opt.step()
    for n, p in learner.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
        assert not torch.equal(p.detach(), before[n]), f"{name}: {n} did not move"
    evaluation = learner.evaluate(sinusoid_batch(seed=1), steps=3)
    assert evaluation.shape == (4, 4) and torch.isfinite(evaluation).all()


def bn_classification(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    labels = torch.arange(60) % 6
    family = Episodes(torch.randn(60, 4) + labels[:, None].float(), labels, n_way=3)
    return model, family.sample(5, 2, 3, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ["maml", "fomaml", "anil"])
def test_classification_with_batchnorm_uses_batch_statistics(name):
    model, batch = bn_classification()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    learner = build_algorithm(name, model, lr=0.1, steps=2, loss="cross_entropy")
    learner.meta_loss(batch).backward()
    bn = model[1]
    # Original MAML: batch statistics in train and eval mode alike, applied functionally: the
    # user's BatchNorm keeps its running statistics, untouched.
    assert bn.track_running_stats and list(model.state_dict()) == list(state)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert bn.weight.grad is not None
    learner.eval()
    assert torch.isfinite(learner.evaluate(batch, steps=2)).all()
    # Transductive, as in the original: a query's output depends on the rest of its batch.
    params = learner.adapt(batch.x_support, batch.y_support)
    alone = learner.predict(params, batch.x_query[:, :2])
    assert not torch.allclose(alone, learner.predict(params, batch.x_query)[:, :2])


def test_per_step_batchnorm_statistics():
    model, batch = bn_classification()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    learner = build_algorithm("maml++", model, lr=0.1, steps=2, loss="cross_entropy")
    assert learner.bn_mean_0.shape == (3, 8) and learner.fused_spec is None
    learner.meta_loss(batch).backward()
    # The statistics live in the learner; the user's BatchNorm buffers are not touched.
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    # Every row (before step 1, before step 2, query after step 2) moved away from its init.
    assert (learner.bn_mean_0 != 0).all(dim=1).all() and (learner.bn_var_0 != 1).all(dim=1).all()
    assert not torch.equal(learner.bn_mean_0[0], learner.bn_mean_0[2])
    learner.eval()
    stats = learner.bn_mean_0.clone()
    losses = learner.evaluate(batch, steps=4)  # more steps than trained: last row reused
    assert torch.isfinite(losses).all() and torch.equal(stats, learner.bn_mean_0)
    # Eval mode normalises with the stored statistics: two queries' outputs ignore the others.
    params = learner.adapt(batch.x_support, batch.y_support)
    full = learner.predict(params, batch.x_query)
    torch.testing.assert_close(learner.predict(params, batch.x_query[:, :2]), full[:, :2])


@pytest.mark.parametrize(
    "options",
    [{}, {"first_order": True}, {"learn_lr": "elementwise"}, {"learn_lr": "per_step"}],
    ids=["maml", "fomaml", "metasgd", "lslr"],
)
def test_fused_path_is_taken_and_matches_generic_path(options):
    batch = sinusoid_batch()
    fused = MAML(small_mlp(), lr=0.05, steps=3, **options)
    generic = MAML(small_mlp(), lr=0.05, steps=3, fused=False, **options)
    assert fused.fused_spec is not None and generic.fused_spec is None
    g_fused, g_generic = grads_of(fused, batch), grads_of(generic, batch)
    for n in g_fused:
        torch.testing.assert_close(g_fused[n], g_generic[n], rtol=1e-4, atol=1e-6)


def test_fused_refused_when_it_cannot_compute_the_objective():
    with pytest.raises(ValueError, match="multi_step_loss"):
        MAML(small_mlp(), steps=2, multi_step_loss=10, fused=True)
    with pytest.raises(ValueError, match="ANIL"):
        MAML(small_mlp(), adapt=["4"], fused=True)


def test_first_and_second_order_differ_through_curvature_only():
    batch = sinusoid_batch()
    second = grads_of(MAML(small_mlp(), lr=0.1), batch)
    first = grads_of(MAML(small_mlp(), lr=0.1, first_order=True), batch)
    # The output bias enters linearly with an identity Hessian block w.r.t. itself, but the
    # second-order term mixes in every other parameter's curvature: all gradients differ.
    for n in second:
        assert not torch.allclose(second[n], first[n], rtol=1e-3, atol=1e-7), n
    # With lr → 0 the second-order term vanishes: both coincide with the plain gradient.
    tiny_second = grads_of(MAML(small_mlp(), lr=1e-12), batch)
    tiny_first = grads_of(MAML(small_mlp(), lr=1e-12, first_order=True), batch)
    for n in tiny_second:
        torch.testing.assert_close(tiny_second[n], tiny_first[n])


def test_derivative_order_annealing_switches_from_first_to_second_order():
    batch = sinusoid_batch()
    annealed = MAML(small_mlp(), lr=0.1, second_order_after=5)
    early, late = grads_of(annealed, batch, iteration=4), grads_of(annealed, batch, iteration=5)
    first = grads_of(MAML(small_mlp(), lr=0.1, first_order=True), batch)
    second = grads_of(MAML(small_mlp(), lr=0.1), batch)
    for n in first:
        torch.testing.assert_close(early[n], first[n])
        torch.testing.assert_close(late[n], second[n])


def test_multi_step_loss_weights_anneal_to_the_last_step():
    torch.testing.assert_close(msl_weights(4, 0, 100), torch.full((4,), 0.25))
    mid = msl_weights(4, 50, 100)
    assert mid[:-1].tolist() == pytest.approx([0.125] * 3) and mid.sum().item() == pytest.approx(1.0)
    end = msl_weights(4, 10_000, 100)
    assert end[:-1].tolist() == pytest.approx([0.0075] * 3) and end[-1].item() == pytest.approx(1 - 3 * 0.0075)


def test_anil_adapts_only_the_head():
    learner = build_algorithm("anil", small_mlp())
    adapted = learner.adapt(sinusoid_batch().x_support, sinusoid_batch().y_support)
    assert sorted(adapted.adapted) == ["4.bias", "4.weight"]
    assert adapted.adapted["4.weight"].shape == (4, 1, 16) and adapted.frozen["0.weight"].shape == (16, 1)


def test_unknown_algorithm_lists_the_available_ones():
    with pytest.raises(ValueError, match="available: " + re.escape(", ".join(sorted(ALGORITHMS)))):
        build_algorithm("mmal", small_mlp())


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@pytest.mark.parametrize("fused", [None, False], ids=["fused", "generic"])
def test_no_memory_growth_over_many_adapt_calls(fused):
    torch.manual_seed(0)
    # Wide enough that one leaked graph per iteration (~0.5 MB) would show in RSS.
    learner = MAML(build_mlp(1, 1, hidden=(64, 64)), lr=0.05, steps=2, fused=fused)
    opt = torch.optim.Adam(learner.parameters(), lr=1e-3)
    batch = sinusoid_batch(tasks=8, k=10)

    def iterate(n):
        for _ in range(n):
            opt.zero_grad(set_to_none=True)
            learner.meta_loss(batch).backward()
            opt.step()
            learner.adapt(batch.x_support, batch.y_support)

    iterate(10)  # warm-up: allocator pools, lazy inits
    gc.collect()
    start = _rss_bytes()
    iterate(40)
    gc.collect()
    assert _rss_bytes() - start < 8 * 2**20
    # The adapted parameters' graph dies with them (no hidden references kept by the learner).
    ref = weakref.ref(learner.adapt(batch.x_support, batch.y_support).adapted["0.weight"])
    gc.collect()
    assert ref() is None
