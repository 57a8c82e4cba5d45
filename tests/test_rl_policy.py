"""The Gaussian MLP policy plugin: layout for the fused ops, log-likelihood and KL."""

from __future__ import annotations

import math

import pytest
import torch

from maml_ext import plugins
from maml_ext.models import fused_spec
from maml_ext.rl import policy
from maml_ext.rl.policy import GaussianMLPPolicy


def test_plugin_layout_and_init():
    pol = plugins.build_model("gaussian_mlp", in_features=3, out_features=2)
    assert isinstance(pol, GaussianMLPPolicy)
    shapes = [tuple(p.shape) for p in pol.params()]
    assert shapes == [(100, 3), (100,), (100, 100), (100,), (2, 100), (2,), (2,)]
    spec = fused_spec(pol)
    assert spec.activation == "relu" and spec.param_names[-1] == "log_std"
    named = dict(pol.named_parameters())
    assert [named[n] for n in spec.param_names] == pol.params()
    assert torch.equal(pol.log_std, torch.zeros(2)) and all((layer.bias == 0).all() for layer in pol.layers)
    assert plugins.build_model("gaussian_mlp", in_features=2, out_features=2, dtype="float64").log_std.dtype == torch.float64


def test_log_prob_and_kl_match_torch_distributions():
    gen = torch.Generator().manual_seed(0)
    pol = GaussianMLPPolicy(2, 3, hidden=(5,)).double()
    with torch.no_grad():
        pol.log_std.copy_(torch.tensor([-0.5, 0.1, 0.7]))
    obs = torch.randn(2, 4, 2, generator=gen, dtype=torch.float64)
    actions = torch.randn(2, 4, 3, generator=gen, dtype=torch.float64)
    mean = pol(obs)
    dist = torch.distributions.Normal(mean, pol.log_std.exp())
    torch.testing.assert_close(policy.log_prob(pol.params(), obs, actions), dist.log_prob(actions).sum(-1))
    other_mean, other_ls = mean + 0.3, torch.tensor([[0.2, -0.1, 0.0], [0.0, 0.0, 0.5]], dtype=torch.float64)
    other = torch.distributions.Normal(other_mean, other_ls.exp().unsqueeze(1))
    expected = torch.distributions.kl_divergence(dist, other).sum(-1)
    torch.testing.assert_close(policy.kl(mean, pol.log_std, other_mean, other_ls), expected)
    # per-task parameters [T, ...] give the same as the shared ones expanded
    per_task = [p.expand(2, *p.shape) for p in pol.params()]
    torch.testing.assert_close(policy.log_prob(per_task, obs, actions), policy.log_prob(pol.params(), obs, actions))


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="activation"):
        GaussianMLPPolicy(2, 2, activation="gelu")
    with pytest.raises(ValueError, match="init_std"):
        GaussianMLPPolicy(2, 2, init_std=0.0)
    with pytest.raises(ValueError, match="dtype"):
        policy.build(2, 2, dtype="float16")
    assert math.isclose(GaussianMLPPolicy(2, 2, init_std=0.5).log_std[0].item(), math.log(0.5), rel_tol=1e-6)
