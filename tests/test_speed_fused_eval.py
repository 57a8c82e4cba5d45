"""Multi-step evaluation with the fused kernels equals the generic evaluation (float64)."""

from __future__ import annotations

import pytest
import torch

from _ops_helpers import gen, mlp_batch, mlp_params, randn, requires_extension
from maml_ext import ops, reference
from maml_ext.algorithms import MAML
from maml_ext.models import mlp
from maml_ext.tasks import TaskBatch
from maml_ext.train import evaluate
from maml_ext.train.evaluate import predictive_samples
from maml_ext.train.fused_eval import fused_query_outputs

STEPS = 4


def _batch(loss: str, tasks: int = 5, k: int = 6, classes: int = 3) -> TaskBatch:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(tasks, 2 * k, 2, generator=g, dtype=torch.float64)
    if loss == "mse":
        y = torch.randn(tasks, 2 * k, 1, generator=g, dtype=torch.float64)
    else:
        y = torch.randint(0, classes, (tasks, 2 * k), generator=g)
    return TaskBatch(x[:, :k], y[:, :k], x[:, k:], y[:, k:])


def _learners(activation: str, loss: str, **kw) -> tuple[MAML, MAML]:
    torch.manual_seed(0)
    out = 1 if loss == "mse" else 3
    model = mlp.build(2, out, hidden=(7, 5), activation=activation).double()
    twin = mlp.build(2, out, hidden=(7, 5), activation=activation).double()
    twin.load_state_dict(model.state_dict())
    fused = MAML(model, lr=0.3, steps=2, loss=loss, **kw)
    generic = MAML(twin, lr=0.3, steps=2, loss=loss, fused=False, **kw)
    assert fused.fused_spec is not None and generic.fused_spec is None
    if kw.get("learn_lr", "none") != "none":  # distinct learned rates, the same in both
        with torch.no_grad():
            for a, b in zip(fused.lrs, generic.lrs):
                a.uniform_(0.05, 0.4, generator=torch.Generator().manual_seed(a.numel()))
                b.copy_(a)
    return fused, generic


def _assert_equal_to_generic(fused: MAML, generic: MAML, batch: TaskBatch, lr: float | None) -> None:
    gen = torch.Generator()
    got = fused_query_outputs(fused, batch, STEPS, lr)
    want = predictive_samples(generic, batch, STEPS, lr, gen).squeeze(2)
    assert got is not None and got.shape == want.shape == (STEPS + 1, *batch.x_query.shape[:2], want.shape[-1])
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_equals_generic_evaluation(activation, loss):
    fused, generic = _learners(activation, loss)
    _assert_equal_to_generic(fused, generic, _batch(loss), None)


@pytest.mark.parametrize("learn_lr", ["elementwise", "per_step"])
def test_learned_rates_and_lr_override(learn_lr):
    # per_step: evaluation runs more steps than training, the later steps reuse the last row.
    fused, generic = _learners("tanh", "mse", learn_lr=learn_lr)
    _assert_equal_to_generic(fused, generic, _batch("mse"), None)
    _assert_equal_to_generic(fused, generic, _batch("mse"), 0.05)


def test_evaluator_takes_the_fused_path(monkeypatch):
    fused, _ = _learners("relu", "mse")

    def generic_inner_loop(*args, **kwargs):
        raise AssertionError("the evaluator ran the generic inner loop")

    monkeypatch.setattr(fused, "inner_loop", generic_inner_loop)
    samples = predictive_samples(fused, _batch("mse"), STEPS, None, torch.Generator())
    assert samples.shape[:3] == (STEPS + 1, 5, 1)


def test_other_learners_are_left_to_the_generic_path():
    _, generic = _learners("relu", "mse")
    assert fused_query_outputs(generic, _batch("mse"), STEPS, None) is None


@pytest.mark.parametrize("scale", [0.01, 0.3, 2.0])
def test_point_learner_noise_fit_equals_the_mixture_formula(scale):
    # One component: the closed form must pick the σ the grid search over the mixture picks.
    g = torch.Generator().manual_seed(1)
    samples = torch.randn(STEPS + 1, 6, 1, 9, 1, generator=g, dtype=torch.float64)
    y = samples[0, :, 0] + scale * torch.randn(6, 9, 1, generator=g, dtype=torch.float64)
    samples[1:] += scale * torch.randn(STEPS, 6, 1, 9, 1, generator=g, dtype=torch.float64)
    grid = evaluate.NOISE_GRID
    scores = torch.stack([evaluate.mixture_log_likelihood(samples, y, s).flatten(1).mean(1) for s in grid], 1)
    torch.testing.assert_close(evaluate.fit_noise(samples, y), grid[scores.argmax(1)], rtol=0, atol=0)


# ----- the op: ops.mlp_maml_eval (one call: every step's query losses and outputs) ------------
def _eval_args(loss: str, lr_kind: str, steps: int = 3, weighted: bool = True):
    g = gen(5)
    widths = (2, 6, 3)
    params = mlp_params(g, widths, loss)
    xs, ys = mlp_batch(g, widths, loss, 4, 5)
    xq, yq = mlp_batch(g, widths, loss, 4, 7)
    lead = (steps,) if lr_kind == "per_step" else ()
    lr = 0.1 if lr_kind == "float" else [0.05 + 0.1 * torch.rand((*lead, *p.shape), generator=g,
                                                                  dtype=torch.float64) for p in params]
    weights = dict(w_support=0.5 + torch.rand(4, 5, generator=g, dtype=torch.float64),
                   w_query=randn(g, 4, 7).abs()) if weighted else {}
    return (params, xs, ys, xq, yq), dict(lr=lr, steps=steps, per_step_lr=lr_kind == "per_step",
                                          activation="tanh", loss=loss, **weights)


@requires_extension
@pytest.mark.parametrize("loss", ["mse", "cross_entropy", "gaussian_nll"])
@pytest.mark.parametrize("lr_kind", ["float", "elementwise", "per_step"])
def test_op_equals_reference(loss, lr_kind):
    args, kw = _eval_args(loss, lr_kind)
    got_loss, got_out = ops.mlp_maml_eval(*args, **kw, outputs=True)
    want_loss, want_out = reference.mlp_maml_eval(*args, **kw, outputs=True)
    assert got_loss.shape == (4, 4) and got_out.shape == (4, 4, 7, 3)
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got_out, want_out, rtol=1e-10, atol=1e-12)
    assert ops.mlp_maml_eval(*args, **kw)[1] is None  # outputs=False: losses only, the same
    assert torch.equal(ops.mlp_maml_eval(*args, **kw)[0], got_loss)


@requires_extension
def test_op_rows_are_the_losses_after_each_step():
    # Row s is mlp_maml's query loss after s steps (row 0: the initialisation's, unweighted here).
    args, kw = _eval_args("mse", "float", weighted=False)
    losses, _ = ops.mlp_maml_eval(*args, **kw)
    for s in (1, 3):
        torch.testing.assert_close(losses[s], ops.mlp_maml(*args, **{**kw, "steps": s})[0], rtol=1e-12, atol=0)
    params, _, _, xq, yq = args
    torch.testing.assert_close(losses[0], reference.mlp_task_losses(params, reference.mlp_forward(params, xq, "tanh"),
                                                                     yq, "mse"), rtol=1e-12, atol=0)


@pytest.mark.parametrize("fn", [pytest.param(ops.mlp_maml_eval, marks=requires_extension), reference.mlp_maml_eval],
                         ids=["op", "reference"])
def test_bad_input_is_named(fn):
    (params, xs, ys, xq, yq), kw = _eval_args("mse", "float")
    with pytest.raises(ValueError, match=r"^query y: expected \[T=4, K=7, 3\], got shape \[4, 3, 3\]"):
        fn(params, xs, ys, xq, yq[:, :3], **kw)
    with pytest.raises(ValueError, match=r"^steps: expected >= 1, got 0"):
        fn(params, xs, ys, xq, yq, **{**kw, "steps": 0})


@requires_extension
@pytest.mark.parametrize("outputs", [True, False])
def test_opcheck(outputs):
    (params, xs, ys, xq, yq), kw = _eval_args("gaussian_nll", "per_step")
    torch.library.opcheck(torch.ops.maml_ext.mlp_maml_eval,
                          (params, kw["lr"], 0.0, True, xs, ys, kw["w_support"], xq, yq, kw["w_query"], 3, "tanh",
                           "gaussian_nll", outputs))


def test_evaluator_makes_one_op_call(monkeypatch):
    fused, _ = _learners("relu", "mse")
    calls = []
    op = ops.mlp_maml_eval
    monkeypatch.setattr(ops, "mlp_maml_eval", lambda *a, **k: calls.append(1) or op(*a, **k))
    for name in ("mlp_hvp", "inner_update"):
        monkeypatch.setattr(ops, name, lambda *a, **k: pytest.fail("the fused evaluation stepped in Python"))
    assert fused_query_outputs(fused, _batch("mse"), STEPS, None).shape == (STEPS + 1, 5, 6, 1)
    assert len(calls) == 1
