"""A user's-eye audit of the public ops (docs/ops.md, "Validation rules"): arguments of the wrong
Python type are named before any work, with the same message on both paths (the dispatcher's own
message and the reference's Python errors used to differ: "'float' object cannot be interpreted
as an integer", "'str' object has no attribute 'requires_grad'"); and svgd_step on a scalar
parameter per particle ([T, M]) is computed, not an IndexError of the reference."""

import pytest
import torch

from _ops_helpers import requires_extension
from maml_ext import ops, reference

DT = torch.float64
T, K, D, H = 2, 3, 2, 4


def data():
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(*s, generator=g, dtype=DT) for s in ((H, D), (H,), (1, H), (1,))]
    xy = [torch.randn(T, K, n, generator=g, dtype=DT) for n in (D, 1, D, 1)]
    return params, xy


def maml_op(name, **over):
    params, xy = data()
    kw = {"lr": 0.1, **over}
    params = kw.pop("params", params)
    return getattr(ops, name)(params, *xy, **kw)


MAML_OPS = ["mlp_maml", "mlp_maml_grad", "mlp_maml_eval", "mlp_maml_loss"]
BAD = {
    "lr string": (dict(lr="0.1"), TypeError, "lr: expected a float or a list with one tensor per parameter, got str"),
    "lr bool": (dict(lr=True), TypeError, "lr: expected a float or a list with one tensor per parameter, got bool"),
    "lr list of floats": (dict(lr=[0.1] * 4), TypeError, r"lrs\[0\]: expected a Tensor, got float"),
    "steps float": (dict(steps=1.5), TypeError, r"steps: expected an int, got 1.5 \(float\)"),
    "params not tensors": (dict(params=[1.0, 2.0]), TypeError, r"params\[0\]: expected a Tensor, got float"),
    "params int dtype": (dict(params=[p.long() for p in data()[0]]), TypeError,
                         r"params\[0\]: expected float32 or float64, got torch.int64"),
}


@pytest.mark.parametrize("case", sorted(BAD))
@pytest.mark.parametrize("name", MAML_OPS)
def test_maml_ops_name_a_bad_argument_type(name, case):
    over, kind, message = BAD[case]
    with pytest.raises(kind, match=message):
        maml_op(name, **over)


@pytest.mark.parametrize("op", [ops.inner_update, ops.inner_update_])
def test_inner_update_names_a_bad_argument_type(op):
    params, _ = data()
    grads = [torch.ones_like(p) for p in params]
    with pytest.raises(TypeError, match=r"grads\[1\]: expected a Tensor, got NoneType"):
        op(params, [grads[0], None, *grads[2:]], 0.1)
    with pytest.raises(TypeError, match="lr: expected a float or a list with one tensor per parameter, got str"):
        op(params, grads, "0.1")
    with pytest.raises(TypeError, match=r"step: expected an int, got 0.0 \(float\)"):
        op(params, grads, [torch.ones(3, dtype=DT)] * 4, 0.0)


def test_chaser_and_svgd_name_a_bad_argument_type():
    params, xy = data()
    particles = [p.expand(2, *p.shape).clone() for p in params]
    with pytest.raises(TypeError, match=r"leader_steps: expected an int, got 1.0 \(float\)"):
        ops.mlp_bmaml_chaser(particles, *xy, steps=1, leader_steps=1.0, lr=0.1)
    sets = [p.expand(T, 2, *p.shape).clone() for p in params]
    with pytest.raises(TypeError, match=r"scores: expected a list of tensors, got Tensor"):
        ops.svgd_step(sets, sets[0], -1.0, 0.1)


def scalar_particles():
    g = torch.Generator().manual_seed(1)
    sets = [torch.randn(T, 3, generator=g, dtype=DT), torch.randn(T, 3, 4, generator=g, dtype=DT)]
    return sets, [torch.randn(s.shape, generator=g, dtype=DT) for s in sets]


def test_svgd_step_takes_a_scalar_parameter_per_particle():
    """[T, M] is [T, M, 1]: one entry per particle."""
    sets, scores = scalar_particles()
    got = ops.svgd_step(sets, scores, -1.0, 0.1)
    as_vectors = ops.svgd_step([sets[0].unsqueeze(-1), sets[1]], [scores[0].unsqueeze(-1), scores[1]], -1.0, 0.1)
    torch.testing.assert_close(got[0], as_vectors[0].squeeze(-1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got[1], as_vectors[1], rtol=1e-12, atol=1e-12)


@requires_extension
def test_svgd_step_scalar_parameter_equals_the_reference():
    sets, scores = scalar_particles()
    for a, b in zip(ops.svgd_step(sets, scores, -1.0, 0.1), reference.svgd_step(sets, scores, -1.0, 0.1)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
