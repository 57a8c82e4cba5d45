"""iMAML: the implicit meta-gradient against the closed form on a quadratic problem and against
an unrolled float64 reference as the inner solve converges; batched CG; memory."""

import pytest
import torch
from torch.func import functional_call

from maml_ext.algorithms import IMAML, build_algorithm
from maml_ext.algorithms.imaml import conjugate_gradient
from maml_ext.models.mlp import MLP
from maml_ext.tasks import TaskBatch


def regression_batch(tasks, k, d, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tasks, 2 * k, d, generator=g, dtype=torch.float64)
    y = torch.randn(tasks, 2 * k, 1, generator=g, dtype=torch.float64)
    return TaskBatch(x[:, :k], y[:, :k], x[:, k:], y[:, k:])


def meta_grad(learner, batch):
    learner.zero_grad()
    loss = learner.meta_loss(batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in learner.model.named_parameters()}


@pytest.mark.parametrize("fused", [None, False], ids=["mlp_hvp", "autograd"])
def test_quadratic_model_matches_the_closed_form(fused):
    """Linear model, MSE: the regularised inner problem is a ridge regression with solution
    φ* = (H + λI)⁻¹(λθ + 2X̃ᵀy/K) and meta-gradient λ(H + λI)⁻¹ ∇L_query(φ*), H = 2X̃ᵀX̃/K."""
    torch.manual_seed(0)
    model = MLP(4, 1, hidden=()).double()  # one Linear: [W | b] acts on X̃ = [x, 1]
    lam = 2.0
    learner = IMAML(model, lr=0.05, steps=600, lam=lam, cg_steps=5, fused=fused)
    assert (learner.fused_spec is not None) == (fused is None)
    batch = regression_batch(3, 6, 4, seed=1)
    loss, grads = meta_grad(learner, batch)

    theta = torch.cat([model[0].weight.detach().flatten(), model[0].bias.detach()])
    want_grad, want_loss = torch.zeros_like(theta), []
    for t in range(3):
        xs = torch.cat([batch.x_support[t], torch.ones(6, 1, dtype=torch.float64)], 1)
        xq = torch.cat([batch.x_query[t], torch.ones(6, 1, dtype=torch.float64)], 1)
        h = 2 * xs.T @ xs / 6
        reg = h + lam * torch.eye(5, dtype=torch.float64)
        phi = torch.linalg.solve(reg, lam * theta + 2 * xs.T @ batch.y_support[t, :, 0] / 6)
        resid = xq @ phi - batch.y_query[t, :, 0]
        want_loss.append(resid.pow(2).mean())
        want_grad += lam * torch.linalg.solve(reg, 2 * xq.T @ resid / 6) / 3
    torch.testing.assert_close(loss, torch.stack(want_loss).mean(), rtol=1e-10, atol=0)
    torch.testing.assert_close(grads["0.weight"].flatten(), want_grad[:4], rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(grads["0.bias"], want_grad[4:], rtol=1e-10, atol=1e-13)


def unrolled_reference(model, batch, lam, lr, steps):
    """Per task, ``steps`` differentiable gradient steps on L_support + λ/2‖φ − θ‖², then the
    query loss; the exact gradient of that computation w.r.t. θ, in float64."""
    theta = dict(model.named_parameters())
    total = 0.0
    for t in range(batch.num_tasks):
        phi = dict(theta)
        for _ in range(steps):
            loss = (functional_call(model, phi, (batch.x_support[t],)) - batch.y_support[t]).pow(2).mean()
            grads = torch.autograd.grad(loss, list(phi.values()), create_graph=True)
            phi = {n: p - lr * (g + lam * (p - theta[n])) for (n, p), g in zip(phi.items(), grads)}
        total = total + (functional_call(model, phi, (batch.x_query[t],)) - batch.y_query[t]).pow(2).mean()
    total = total / batch.num_tasks
    return dict(zip(theta, torch.autograd.grad(total, list(theta.values()))))


@pytest.mark.parametrize("fused", [None, False], ids=["mlp_hvp", "autograd"])
def test_implicit_gradient_is_the_limit_of_the_unrolled_one(fused):
    torch.manual_seed(3)
    model = MLP(2, 1, hidden=(5,), activation="tanh").double()
    batch = regression_batch(2, 5, 2, seed=4)
    lam, lr = 4.0, 0.1
    learner = IMAML(model, lr=lr, steps=300, lam=lam, cg_steps=40, fused=fused)
    _, implicit = meta_grad(learner, batch)

    def error(steps):
        ref = unrolled_reference(model, batch, lam, lr, steps)
        return max(((ref[n] - implicit[n]).abs().max() / implicit[n].abs().max()).item() for n in ref)

    errors = [error(s) for s in (3, 10, 30, 300)]
    assert errors[0] > 1e-3  # a short unroll is a different gradient ...
    assert all(a > b for a, b in zip(errors, errors[1:]))  # ... that converges to the implicit one
    assert errors[-1] < 1e-10


def test_batched_cg_solves_every_task_system():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 6, 6, generator=g, dtype=torch.float64)
    spd = a @ a.transpose(1, 2) + 0.5 * torch.eye(6, dtype=torch.float64)
    b = torch.randn(4, 6, generator=g, dtype=torch.float64)
    b[2] = 0  # an already solved task must stay at 0, not NaN
    x = conjugate_gradient(lambda p: (spd @ p.unsqueeze(-1)).squeeze(-1), b, steps=6)
    torch.testing.assert_close(x, torch.linalg.solve(spd, b), rtol=1e-8, atol=1e-10)
    assert torch.equal(x[2], torch.zeros(6, dtype=torch.float64))
    few = conjugate_gradient(lambda p: (spd @ p.unsqueeze(-1)).squeeze(-1), b, steps=3)
    assert not torch.allclose(few, x, rtol=1e-4)  # not converged: each step counts


def graph_size(t):
    seen, todo = set(), [t.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        todo.extend(n for n, _ in node.next_functions)
    return len(seen)


@pytest.mark.parametrize("fused", [None, False], ids=["mlp_hvp", "autograd"])
def test_memory_does_not_grow_with_inner_steps(fused):
    """The meta-loss keeps no graph of the inner loop: the same autograd graph for 2 and 30 steps."""
    batch = regression_batch(3, 5, 1, seed=0)
    sizes = [graph_size(IMAML(MLP(1, 1, (8,)).double(), steps=s, fused=fused).meta_loss(batch)) for s in (2, 30)]
    assert sizes[0] == sizes[1] <= 5 * 4 + 4  # per parameter: leaf, product, sum, add


def test_evaluation_solves_the_same_regularised_problem():
    torch.manual_seed(0)
    model = MLP(4, 1, hidden=()).double()
    learner = IMAML(model, lr=0.05, steps=600, lam=2.0)
    batch = regression_batch(2, 6, 4, seed=1)
    losses = learner.evaluate(batch, steps=600)
    assert losses.shape == (601, 2)
    meta = learner.meta_loss(batch)
    torch.testing.assert_close(losses[-1].mean(), meta.detach(), rtol=1e-12, atol=0)


def test_selectable_by_name_and_bad_options():
    learner = build_algorithm("imaml", MLP(1, 1), lam=1.0, cg_steps=3, steps=4)
    assert isinstance(learner, IMAML) and learner.fused_spec is not None
    assert (learner.lam, learner.cg_steps, learner.steps) == (1.0, 3, 4)
    for options, match in (({"lam": 0.0}, "lam must be a number > 0"), ({"cg_steps": 0}, "cg_steps must be an integer >= 1")):
        with pytest.raises(ValueError, match=match):
            build_algorithm("imaml", MLP(1, 1), **options)
    with pytest.raises(ValueError, match=r"fused=True is not possible: the model is not a plain MLP"):
        IMAML(torch.nn.Sequential(torch.nn.Linear(1, 1)), fused=True)
    with pytest.raises(NotImplementedError, match="use meta_loss"):
        learner.clone()


def test_trains_from_the_cli(tmp_path):
    from maml_ext import cli

    out = tmp_path / "run"
    code = cli.main([
        "train", "sinusoid", "--out", str(out), "--quiet", "--set", "algorithm.name=imaml",
        "--set", "algorithm.steps=3", "--set", "algorithm.lam=1.0", "--set", "model.hidden=[8]",
        "--set", "train.iterations=3", "--set", "train.meta_batch=2", "--set", "eval.num_tasks=4",
        "--set", "eval.shots=[5]", "--set", "eval.steps=2",
    ])
    assert code == 0 and (out / "eval.json").exists()
