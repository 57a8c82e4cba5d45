"""MR-MAML(A)'s per-task autograd reference, shared by the sinusoid and the conv4 bottleneck tests."""

import copy
from typing import Callable

import torch
import torch.nn.functional as F
from torch.func import functional_call


def grads_of(model):
    return {n: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for n, p in model.named_parameters()}


def meta_grads(learner, model, batch):
    learner.zero_grad()
    loss = learner.meta_loss(batch)
    loss.backward()
    return loss.detach(), grads_of(model)


def per_task_reference(model, batch, lr, steps, beta, eps_support=None, eps_query=None, scale="softplus",
                       loss_fn: Callable = F.mse_loss):
    """Plain autograd, one task at a time: the encoder on that task's inputs alone (so BatchNorm
    takes that task's statistics), z = μ + σ ε, ``steps`` SGD steps of the head on the support
    latents, the mean query loss, + β · mean KL of the query encodings."""
    head = dict(model.head.named_parameters())
    total_query, total_kl = 0.0, 0.0
    tasks = batch.x_support.shape[0]
    for t in range(tasks):
        def latents(x, eps):
            mean, r = model.encoder(x).chunk(2, dim=-1)
            std = F.softplus(r) if scale == "softplus" else (0.5 * r).exp()
            return mean, std, (mean if eps is None else mean + std * eps)

        _, _, z_s = latents(batch.x_support[t], None if eps_support is None else eps_support[t])
        mean_q, std_q, z_q = latents(batch.x_query[t], None if eps_query is None else eps_query[t])
        params = dict(head)
        for _ in range(steps):
            loss = loss_fn(functional_call(model.head, params, (z_s,)), batch.y_support[t])
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
            params = {n: p - lr * g for (n, p), g in zip(params.items(), grads)}
        total_query = total_query + loss_fn(functional_call(model.head, params, (z_q,)), batch.y_query[t])
        total_kl = total_kl + (-std_q.log() + 0.5 * (std_q**2 + mean_q**2) - 0.5).mean()
    query = total_query / tasks
    (query + beta * total_kl / tasks if beta else query).backward()  # β = 0: no KL (σ = 0 makes it infinite)
    return query.detach(), grads_of(model)


def assert_matches_reference(learner, model, batch, lr, steps, beta, latent, **reference_options):
    """The learner's loss and meta-gradient in training mode against :func:`per_task_reference`
    with the same ε: drawn from the global RNG for the support, then the query inputs."""
    torch.manual_seed(5)
    loss, grads = meta_grads(learner, model, batch)
    torch.manual_seed(5)
    eps_s = torch.randn(*batch.x_support.shape[:2], latent, dtype=torch.float64)
    eps_q = torch.randn(*batch.x_query.shape[:2], latent, dtype=torch.float64)
    ref = copy.deepcopy(model)
    loss_ref, grads_ref = per_task_reference(ref, batch, lr, steps, beta, eps_s, eps_q, **reference_options)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-12, atol=0)  # the value: the query loss alone
    for n in grads_ref:
        torch.testing.assert_close(grads[n], grads_ref[n], rtol=1e-10, atol=1e-14)
