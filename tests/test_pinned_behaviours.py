"""Behaviours that a wrong implementation could change without failing another test (issue 12,
"Behaviours the tests do not pin"). The crash mid-checkpoint-write is pinned in
test_checkpoint_trust.py (test_kill_mid_write_leaves_the_previous_checkpoint_loadable)."""

import copy
import math

import pytest
import torch
from torch import nn

from maml_ext import plugins
from maml_ext.algorithms import build_algorithm
from maml_ext.reference.svgd import median_bandwidth, pairwise_sq_dists, rbf_kernel
from maml_ext.models.mlp import MLP
from maml_ext.rl import trpo
from maml_ext.tasks import TaskBatch
from maml_ext.train import config, loop
from maml_ext.train.evaluate import _mean_ci

F64 = dict(rtol=1e-10, atol=1e-12)


def regression_batch(tasks=3, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = lambda: torch.randn(tasks, k, 1, generator=g, dtype=torch.float64)  # noqa: E731
    return TaskBatch(x(), x(), x(), x())


# ----- Reptile: meta-gradient θ − mean_t φ_t ----------------------------------------------------------
@pytest.mark.filterwarnings("ignore:Reptile with steps=1")  # the pretrain-baseline notice
@pytest.mark.parametrize("steps", [1, 3])
def test_reptile_meta_gradient_is_theta_minus_mean_adapted(steps):
    torch.manual_seed(0)
    model = MLP(1, 1, (6,), "tanh").double()
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}
    learner = build_algorithm("reptile", model, lr=0.3, steps=steps, loss="mse")
    batch = regression_batch()
    learner.meta_loss(batch).backward()
    # Per task, plain SGD on support and query together, written out with torch.func.
    adapted = []
    for t in range(batch.num_tasks):
        x = torch.cat([batch.x_support[t], batch.x_query[t]])
        y = torch.cat([batch.y_support[t], batch.y_query[t]])
        phi = dict(theta)
        for _ in range(steps):
            phi = {n: p.detach().requires_grad_() for n, p in phi.items()}
            loss = (torch.func.functional_call(model, phi, (x,)) - y).pow(2).mean()
            grads = torch.autograd.grad(loss, list(phi.values()))
            phi = {n: p - 0.3 * g for (n, p), g in zip(phi.items(), grads)}
        adapted.append(phi)
    for name, p in model.named_parameters():
        expected = theta[name] - torch.stack([phi[name] for phi in adapted]).mean(0)
        assert expected.abs().max() > 1e-3  # the adaptation moved this parameter: the sign is tested
        torch.testing.assert_close(p.grad, expected.detach(), **F64)


# ----- adapt= names match whole module names -----------------------------------------------------------
def test_adapt_prefix_matches_whole_module_names():
    model = nn.Sequential(*(nn.Linear(2, 2) for _ in range(11)))
    learner = build_algorithm("maml", model, adapt=["1"])
    assert learner.adapt_names == ["1.weight", "1.bias"]  # not 10.weight / 10.bias
    learner = build_algorithm("maml", model, adapt=["10", "2.bias"])
    assert learner.adapt_names == ["2.bias", "10.weight", "10.bias"]


def test_adapt_prefix_does_not_match_a_longer_sibling_name():
    model = nn.Module()
    model.enc, model.enc2 = nn.Linear(1, 1), nn.Linear(1, 1)
    model.forward = lambda x: model.enc2(model.enc(x))
    assert build_algorithm("maml", model, adapt=["enc"]).adapt_names == ["enc.weight", "enc.bias"]


# ----- SVGD bandwidth h = med² / log M ---------------------------------------------------------------
@pytest.mark.parametrize(("points", "median"), [
    ([0.0, 2.0, 5.0], 3.0),  # distances 2, 5, 3
    ([0.0, 1.0, 3.0, 7.0], 3.5),  # distances 1, 3, 7, 2, 6, 4: the mean of the middle two
    ([0.0, 0.1, 0.3], 0.2),  # distances below 1: med² < med
])
def test_svgd_bandwidth_is_squared_median_over_log_m(points, median):
    m = len(points)
    particles = [torch.tensor(points, dtype=torch.float64).view(1, m, 1)]
    sq = pairwise_sq_dists(particles)
    h = median_bandwidth(sq)
    torch.testing.assert_close(h, torch.tensor([median**2 / math.log(m)], dtype=torch.float64), **F64)
    d01 = (points[1] - points[0]) ** 2
    torch.testing.assert_close(rbf_kernel(sq, h)[0, 0, 1], torch.tensor(math.exp(-d01 / h.item()), dtype=torch.float64),
                               **F64)


# ----- TRPO: the first candidate's predicted KL ½ sᵀHs equals max_kl ------------------------------------
def test_trpo_first_candidate_has_predicted_kl_max_kl():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 4, generator=g, dtype=torch.float64)
    hessian = a @ a.T + 4 * torch.eye(4, dtype=torch.float64)
    grad = torch.randn(4, generator=g, dtype=torch.float64) * 30
    theta = torch.randn(4, generator=g, dtype=torch.float64)
    seen = []

    def evaluate(candidate):
        seen.append(candidate.clone())
        return 0.0, 0.0  # "no improvement": every candidate is tried

    trpo.step(theta, grad, lambda v: hessian @ v, evaluate, max_kl=0.02, cg_iters=4, damping=0.0,
              backtrack_ratio=0.5, max_backtracks=3)
    first = theta - seen[1]  # seen[0] is theta itself (the loss before)
    torch.testing.assert_close(0.5 * first @ hessian @ first, torch.tensor(0.02, dtype=torch.float64), rtol=1e-7,
                               atol=0)
    # Along the natural gradient H⁻¹g (a descent step: theta minus it), halved per backtrack.
    natural = torch.linalg.solve(hessian, grad)
    torch.testing.assert_close(first / first.norm(), natural / natural.norm(), rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(theta - seen[2], 0.5 * first, **F64)


# ----- the sinusoid family as configs build it --------------------------------------------------------
def test_sinusoid_from_the_registry_has_the_papers_ranges():
    family = loop.build(config.load("sinusoid", ["model.hidden=[2]"])).family
    assert family is not None and plugins.tasks.factory("sinusoid") is not None
    batch = family.sample(20000, 5, 5, torch.Generator().manual_seed(0))
    amp, phase = batch.info["amplitude"], batch.info["phase"]
    assert 0.1 <= amp.min() < 0.11 and 4.99 < amp.max() <= 5.0
    assert 0.0 <= phase.min() < 0.01 and math.pi - 0.01 < phase.max() <= math.pi
    x = torch.cat([batch.x_support, batch.x_query], 1)
    assert -5.0 <= x.min() < -4.99 and 4.99 < x.max() <= 5.0
    expected = amp[:, None, None] * torch.sin(batch.x_support - phase[:, None, None])
    torch.testing.assert_close(batch.y_support, expected)


# ----- class labels --------------------------------------------------------------------------------------
@pytest.mark.parametrize("fused", [True, False])
def test_class_label_equal_to_the_number_of_classes_is_rejected(fused):
    torch.manual_seed(0)
    learner = build_algorithm("maml", MLP(3, 5, (4,)), loss="cross_entropy", fused=fused)
    x = torch.randn(2, 5, 3)
    ok = torch.tensor([[0, 1, 2, 3, 4]] * 2)
    learner.meta_loss(TaskBatch(x, ok, x, ok))  # labels 0..4 of 5 classes: fine
    bad = ok.clone()
    bad[1, 2] = 5
    with pytest.raises((ValueError, IndexError), match=r"\[0, 5\)|out of bounds"):
        learner.meta_loss(TaskBatch(x, ok, x, bad))
    with pytest.raises((ValueError, IndexError), match=r"\[0, 5\)|out of bounds"):
        learner.meta_loss(TaskBatch(x, bad, x, ok))


# ----- the 95% confidence interval --------------------------------------------------------------------
def test_ci95_on_known_values():
    values = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0], [2.0, 2.0, 2.0, 2.0, 2.0]], dtype=torch.float64)
    found = _mean_ci(values)
    assert found["mean"] == pytest.approx([3.0, 2.0], rel=1e-12)
    # Sample standard deviation (n − 1): sqrt(2.5); half-width 1.96·s/√n.
    assert found["ci95"] == pytest.approx([1.96 * math.sqrt(2.5) / math.sqrt(5), 0.0], rel=1e-12, abs=1e-15)
    assert found["median"] == pytest.approx([3.0, 2.0])
    assert _mean_ci(torch.tensor([[7.0]]))["ci95"] == [0.0]  # one task: no spread to estimate


# ----- the open/closed boundary of every ranged config key ---------------------------------------------
# (key, accepted values at the boundary, rejected values just outside it)
SUPERVISED = [
    ("seed", [0], [-1]), ("train.iterations", [1], [0]), ("train.meta_batch", [1], [0]),
    ("train.k_support", [1], [0]), ("train.k_query", [1], [0]), ("train.meta_lr", [1e-300], [0.0, -1e-300]),
    ("train.checkpoint_every", [1], [0]), ("train.log_every", [1], [0]), ("train.threads", [0], [-1]),
    ("train.clip_grad", [1e-300], [0.0]), ("train.task_chunk", [1], [0]), ("eval.num_tasks", [1], [0]),
    ("eval.shots", [[1]], [[0], []]), ("eval.k_query", [1], [0]), ("eval.steps", [0, 1000], [-1, 1001]),
    ("eval.seed", [0], [-1]), ("eval.chunk", [1], [0]), ("eval.lr", [1e-300], [0.0]),
]
RL = [
    ("seed", [0], [-1]), ("train.iterations", [1], [0]), ("train.meta_batch", [1], [0]), ("train.rollouts", [1], [0]),
    ("train.meta_lr", [1e-300], [0.0]), ("train.max_kl", [1e-300], [0.0]), ("train.cg_iters", [1], [0]),
    ("train.cg_damping", [0.0, 1e6], [-1e-300, 1.000001e6]), ("train.backtrack_ratio", [1e-300, 0.999999], [0.0, 1.0]),
    ("train.max_backtracks", [1], [0]), ("train.cg_subsample", [1e-300, 1.0], [0.0, 1.000001]),
    ("train.gamma", [1e-300, 1.0], [0.0, 1.000001]),
    ("train.gae_lambda", [0.0, 1.0], [-1e-300, 1.000001]), ("train.checkpoint_every", [1], [0]),
    ("train.log_every", [1], [0]), ("train.threads", [0], [-1]), ("eval.num_tasks", [1], [0]),
    ("eval.rollouts", [1], [0]), ("eval.steps", [0, 100], [-1, 101]), ("eval.lr", [1e-300], [0.0]),
    ("eval.later_lr", [1e-300], [0.0]), ("eval.seed", [0], [-1]), ("eval.trajectories", [0], [-1]),
]


def with_key(key, value, base):
    cfg = {"model": {"name": "m"}, "task": {"name": "t"}, "algorithm": {"name": "a"}, **copy.deepcopy(base)}
    *sections, leaf = key.split(".")
    node = cfg
    for part in sections:
        node = node.setdefault(part, {})
    node[leaf] = value
    return cfg


@pytest.mark.parametrize(("schema", "table"), [(config.SCHEMA, SUPERVISED), (config.RL_SCHEMA, RL)],
                         ids=["supervised", "rl"])
def test_every_ranged_key_boundary(schema, table):
    assert sorted(k for k, _, _ in table) == sorted(
        k for k, ((_, expected), _) in schema.items() if "true or false" not in expected and "one of" not in expected)
    base = {"eval": {"num_tasks": 5, "trajectories": 0}} if schema is config.RL_SCHEMA else {}
    for key, accepted, rejected in table:
        for value in accepted:
            config.validate(with_key(key, value, base), schema)
        for value in rejected:
            with pytest.raises(config.ConfigError, match=f"^{key} must be"):
                config.validate(with_key(key, value, base), schema)


def test_rl_trajectories_are_at_most_the_test_tasks():
    config.validate(with_key("eval.trajectories", 5, {"eval": {"num_tasks": 5}}), config.RL_SCHEMA)
    with pytest.raises(config.ConfigError, match=r"eval.trajectories must be <= eval.num_tasks \(5\), got 6"):
        config.validate(with_key("eval.trajectories", 6, {"eval": {"num_tasks": 5}}), config.RL_SCHEMA)
