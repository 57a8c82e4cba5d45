"""Returns, GAE and the linear feature baseline against hand computations and numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maml_ext.rl import baseline


def test_discounted_returns_stop_at_episode_end():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]], dtype=torch.float64)
    g = baseline.discounted_returns(rewards, mask, 0.5)
    assert g.tolist() == [[1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3.0, 0.0]]


def test_gae_lambda_one_is_return_minus_baseline():
    gen = torch.Generator().manual_seed(0)
    rewards = torch.randn(3, 4, 7, generator=gen, dtype=torch.float64)
    mask = torch.ones_like(rewards)
    mask[0, 1, 5:] = 0
    rewards = rewards * mask
    values = torch.randn(3, 4, 7, generator=gen, dtype=torch.float64) * mask
    adv = baseline.gae(rewards, values, mask, 0.99, 1.0)
    torch.testing.assert_close(adv, (baseline.discounted_returns(rewards, mask, 0.99) - values) * mask)
    # λ = 0: the one-step TD error
    td = baseline.gae(rewards, values, mask, 0.9, 0.0)
    nxt = torch.cat([values[..., 1:], torch.zeros_like(values[..., :1])], -1)
    torch.testing.assert_close(td, (rewards + 0.9 * nxt - values) * mask)


def test_linear_baseline_matches_numpy_ridge_per_task():
    gen = torch.Generator().manual_seed(0)
    obs = torch.randn(2, 3, 6, 2, generator=gen, dtype=torch.float64) * 4
    returns = torch.randn(2, 3, 6, generator=gen, dtype=torch.float64)
    mask = torch.ones(2, 3, 6, dtype=torch.float64)
    mask[1, 2, 4:] = 0
    values = baseline.fit_linear_baseline(obs, returns, mask)
    for t in range(2):
        rows, targets = [], []
        for r in range(3):
            n = int(mask[t, r].sum())
            o = np.clip(obs[t, r, :n].numpy(), -10, 10)
            al = np.arange(n).reshape(-1, 1) / 100.0
            rows.append(np.concatenate([o, o ** 2, al, al ** 2, al ** 3, np.ones((n, 1))], axis=1))
            targets.append(returns[t, r, :n].numpy())
        f, y = np.concatenate(rows), np.concatenate(targets)
        coeffs = np.linalg.lstsq(f.T @ f + 1e-5 * np.eye(f.shape[1]), f.T @ y, rcond=None)[0]
        expected = f @ coeffs  # the valid rows, in order
        got = values[t][mask[t] > 0].numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-8)
    assert (values[1, 2, 4:] == 0).all()


def test_linear_baseline_recovers_a_linear_target():
    gen = torch.Generator().manual_seed(1)
    obs = torch.rand(1, 5, 10, 2, generator=gen, dtype=torch.float64)
    mask = torch.ones(1, 5, 10, dtype=torch.float64)
    target = 2 * obs[..., 0] - obs[..., 1] ** 2 + 0.5
    torch.testing.assert_close(baseline.fit_linear_baseline(obs, target, mask), target, rtol=1e-4, atol=1e-4)


def test_center_per_task_over_valid_steps():
    adv = torch.tensor([[1.0, 3.0, 100.0], [2.0, 2.0, 5.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    out = baseline.center(adv, mask)
    assert out[0].tolist() == pytest.approx([-1.0, 1.0, 0.0], abs=1e-6)
    valid = out[1]
    assert valid.mean().item() == pytest.approx(0.0, abs=1e-12)
    assert valid.pow(2).mean().item() == pytest.approx(1.0, rel=1e-6)


def test_linear_baseline_is_bit_repeatable_whatever_the_memory_layout():
    # LAPACK's lstsq gave last-bit differences with the alignment of its buffers, so identical
    # meta-RL runs (and a run and its --resume) drifted apart; every call here lands elsewhere.
    def fit():
        gen = torch.Generator().manual_seed(0)
        obs = torch.randn(20, 20, 100, 17, generator=gen, dtype=torch.float64)
        returns = torch.randn(20, 20, 100, generator=gen, dtype=torch.float64)
        return baseline.fit_linear_baseline(obs, returns, torch.ones(20, 20, 100, dtype=torch.float64))

    first, keep = fit(), []
    for pad in range(1, 12):
        keep.append(torch.empty(8 * pad + 1, dtype=torch.uint8))  # shifts where the next buffers go
        assert torch.equal(fit(), first), pad
