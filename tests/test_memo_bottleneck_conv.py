"""bottleneck_conv4 (conv4 encoder to a Gaussian latent, head on it) under MR-MAML(A), float64:
ANIL on the head at β = 0 and zero variance, and the reparameterised draw with β · KL against a
per-task autograd loop (per-task BatchNorm statistics, cross-entropy)."""

import copy

import pytest
import torch
import torch.nn.functional as F

from _mr_maml_a_reference import assert_matches_reference, meta_grads
from maml_ext.algorithms import MRMAMLA, build_algorithm
from maml_ext.models.bottleneck import BottleneckConv4, build_conv4
from maml_ext.tasks import TaskBatch

LATENT, WAY = 3, 4


def model64(seed=0):
    torch.manual_seed(seed)
    return BottleneckConv4(1, WAY, hidden=(), latent=LATENT, filters=4, image_size=16).double()


def batch64(tasks=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(WAY).repeat(tasks, 2)  # 2 examples per class
    images = lambda: torch.rand(tasks, 2 * WAY, 1, 16, 16, generator=g, dtype=torch.float64)  # noqa: E731
    return TaskBatch(images(), labels, images(), labels.clone())


def test_beta_zero_and_zero_variance_is_anil_on_the_head():
    model = model64()
    with torch.no_grad():  # σ = softplus(−1000) = 0 exactly: the scale rows of the encoder's linear layer
        model.encoder.head.weight[LATENT:] = 0.0
        model.encoder.head.bias[LATENT:] = -1000.0
    batch = batch64()
    mr = MRMAMLA(model, lr=0.3, steps=2, beta=0.0, loss="cross_entropy")
    anil = build_algorithm("anil", copy.deepcopy(model), lr=0.3, steps=2, adapt=["head"], loss="cross_entropy")
    loss, grads = meta_grads(mr, model, batch)
    loss_anil, grads_anil = meta_grads(anil, anil.model, batch)  # the model's own forward: head(μ)
    torch.testing.assert_close(loss, loss_anil, rtol=1e-12, atol=0)
    for n in grads_anil:
        torch.testing.assert_close(grads[n], grads_anil[n], rtol=1e-10, atol=1e-14)
    assert grads["encoder.convs.0.weight"].abs().max() > 0


def test_reparameterised_draw_and_query_kl_match_per_task_autograd():
    model = model64()
    batch = batch64()
    mr = MRMAMLA(model, lr=0.3, steps=2, beta=0.7, loss="cross_entropy")
    assert_matches_reference(mr, model, batch, 0.3, 2, 0.7, LATENT, loss_fn=F.cross_entropy)


@pytest.mark.parametrize("latent", [0, 2.5, True])
def test_names_a_bad_latent(latent):
    with pytest.raises(ValueError, match="latent must be an integer >= 1"):
        build_conv4(1, WAY, latent=latent)
