"""maml_ext's one-call Adam update (ops.adam_step_, csrc/optim) against torch's fused Adam: bit for
bit on whole vectors (tensors of a multiple of 16 elements), to rounding on the tails, in float32
and float64; the same errors on bad input before any tensor is written; opcheck."""

from __future__ import annotations

import pytest
import torch

from _ops_helpers import requires_extension
from maml_ext import ops, reference

# Sizes around the vector widths (8 / 16 floats, 4 / 8 doubles) and above the op's parallel grain.
SIZES = [(40, 1), (40,), (40, 40), (1, 40), (1,), (3, 7), (17,), (300, 300)]
OPTIONS = [
    dict(lr=1e-3, beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1e-8, maximize=False),
    dict(lr=0.05, beta1=0.3, beta2=0.99, weight_decay=0.01, eps=1e-6, maximize=True),  # 1 - beta1 >= 0.5
]


def _state(dtype, sizes=SIZES):
    """params, exp_avgs, exp_avg_sqs, state_steps (per-tensor counts, not all equal)."""
    g = torch.Generator().manual_seed(0)
    return ([torch.randn(s, generator=g, dtype=dtype) for s in sizes],
            [0.1 * torch.randn(s, generator=g, dtype=dtype) for s in sizes],
            [0.01 * torch.rand(s, generator=g, dtype=dtype) for s in sizes],
            [torch.tensor(float(3 + i % 2)) for i in range(len(sizes))])


def _run(step_fn, state, grads, options):
    params, exp_avgs, exp_avg_sqs, steps = state
    for s in steps:
        s.add_(1)
    step_fn(params, grads, exp_avgs, exp_avg_sqs, steps, **options)


def _torch_step(params, grads, exp_avgs, exp_avg_sqs, steps, **options):
    torch._fused_adam_(params, grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False, grad_scale=None,
                       found_inf=None, **options)


@requires_extension
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("options", OPTIONS)
def test_equals_torch_fused_adam_bitwise(dtype, options):
    ours, theirs = _state(dtype), _state(dtype)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        grads = [torch.randn(p.shape, generator=g, dtype=dtype) for p in ours[0]]
        _run(ops.adam_step_, ours, grads, options)
        _run(_torch_step, theirs, grads, options)
    tol = dict(rtol=1e-12, atol=1e-15) if dtype == torch.float64 else dict(rtol=1e-6, atol=1e-9)
    for a, b in zip(sum(ours[:3], []), sum(theirs[:3], []), strict=True):
        if a.numel() % 16 == 0:  # whole vectors: torch's vector loop, operation for operation
            assert torch.equal(a, b), a.shape
        else:  # a tail: torch's compiled scalar loop fuses some products differently
            torch.testing.assert_close(a, b, **tol)


def _bad_inputs():
    """(what to break, expected exception, message pattern)."""
    def drop_grad(s):
        s[1].pop()

    def int_param(s):
        s[0][0] = s[0][0].long()

    def wrong_shape(s):
        s[2][1] = s[2][1][:-1]

    def wrong_dtype(s):
        s[3][0] = s[3][0].double()

    def strided(s):
        s[1][2] = s[1][2].t()

    def step_shape(s):
        s[4][0] = torch.zeros(2)

    return [
        (drop_grad, ValueError, r"^grads: expected one tensor per parameter \(3\), got 2"),
        (int_param, TypeError, r"^params\[0\]: expected float32 or float64, got torch.int64"),
        (wrong_shape, ValueError, r"^exp_avgs\[1\]: expected shape \[4\], got \[3\]"),
        (wrong_dtype, TypeError, r"^exp_avg_sqs\[0\]: expected dtype torch.float32, got torch.float64"),
        (strided, ValueError, r"^grads\[2\]: expected a contiguous tensor"),
        (step_shape, ValueError, r"^state_steps\[0\]: expected one element, got shape \[2\]"),
    ]


@pytest.mark.parametrize("fn", [pytest.param(ops.adam_step_, marks=requires_extension), reference.adam_step_],
                         ids=["op", "reference"])
@pytest.mark.parametrize("breakage, error, message", _bad_inputs())
def test_bad_input_is_named_before_any_write(fn, breakage, error, message):
    params, exp_avgs, exp_avg_sqs, steps = _state(torch.float32, sizes=[(2, 3), (4,), (5, 5)])
    state = [params, [torch.ones_like(p) for p in params], exp_avgs, exp_avg_sqs, steps]
    breakage(state)
    before = [t.clone() for t in params]
    with pytest.raises(error, match=message):
        fn(*state, lr=0.1, beta1=0.9, beta2=0.999)
    assert all(torch.equal(a, b) for a, b in zip(params, before))


@pytest.mark.parametrize("fn", [pytest.param(ops.adam_step_, marks=requires_extension), reference.adam_step_],
                         ids=["op", "reference"])
@pytest.mark.parametrize("name, value, message", [
    ("lr", -0.1, r"^lr: expected a finite value >= 0, got -0.1"),
    ("beta1", 1.0, r"^beta1: expected a value in \[0, 1\), got 1"),
    ("beta2", -0.5, r"^beta2: expected a value in \[0, 1\), got -0.5"),
    ("eps", float("nan"), r"^eps: expected a finite value >= 0, got nan"),
])
def test_bad_hyperparameters_are_named(fn, name, value, message):
    params, exp_avgs, exp_avg_sqs, steps = _state(torch.float64, sizes=[(3,)])
    options = {**dict(lr=0.1, beta1=0.9, beta2=0.999), name: value}
    with pytest.raises(ValueError, match=message):
        fn(params, [torch.ones(3, dtype=torch.float64)], exp_avgs, exp_avg_sqs, steps, **options)


@requires_extension
def test_opcheck():
    params, exp_avgs, exp_avg_sqs, steps = _state(torch.float64, sizes=[(3, 2), (3,)])
    grads = [torch.randn_like(p) for p in params]
    torch.library.opcheck(torch.ops.maml_ext.adam_step_,
                          (params, grads, exp_avgs, exp_avg_sqs, steps, 0.01, 0.9, 0.999, 0.0, 1e-8, False))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lean_adam_runs_one_op_call_per_step_and_equals_torch_adam(monkeypatch, dtype):
    from maml_ext.train import optim

    torch.manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(s, dtype=dtype)) for s in SIZES]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    opt, ref = optim.adam(ours, 1e-2), torch.optim.Adam(theirs, lr=1e-2, fused=True)
    calls = []
    fused_adam = torch._fused_adam_
    monkeypatch.setattr(torch, "_fused_adam_", lambda *a, **k: calls.append(1) or fused_adam(*a, **k))
    for _ in range(4):
        for a, b in zip(ours, theirs):
            a.grad = torch.randn_like(a)
            b.grad = a.grad.clone()
        opt.step()
        ref.step()
    tol = dict(rtol=1e-12, atol=1e-15) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-8)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, **tol)
    assert opt.state_dict()["param_groups"] == ref.state_dict()["param_groups"]
    for a, b in zip(opt.state_dict()["state"].values(), ref.state_dict()["state"].values(), strict=True):
        assert a.keys() == b.keys() and a["step"].dtype == b["step"].dtype
        for k in a:
            torch.testing.assert_close(a[k], b[k], **tol)
    # torch's kernel: the first step (Adam.step gathers the state), then only without the extension
    # (ref's 4 calls go through torch.optim.adam, which looks the kernel up on torch too).
    assert len(calls) - 4 == (1 if ops.extension_available() else 4)
