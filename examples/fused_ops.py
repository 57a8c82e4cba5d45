"""Calling maml_ext's fused ops directly from plain PyTorch: a minimal sinusoid MAML loop.

    python examples/fused_ops.py [--iterations 2000]

No maml_ext front end is used: parameters are a plain list of tensors, the optimiser is
torch.optim.Adam, and the inner loop plus exact second-order meta-gradient is one `mlp_maml` call.
"""

from __future__ import annotations

import argparse
import math

import torch

from maml_ext import ops


def sinusoid_batch(tasks: int, k: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    amp = torch.rand(tasks, 1, 1, generator=gen) * 4.9 + 0.1
    phase = torch.rand(tasks, 1, 1, generator=gen) * math.pi
    xs, xq = (torch.rand(tasks, k, 1, generator=gen) * 10 - 5 for _ in range(2))
    return xs, amp * torch.sin(xs - phase), xq, amp * torch.sin(xq - phase)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iterations", type=int, default=2000)
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(0)
    widths = [1, 40, 40, 1]
    params = []
    for d_in, d_out in zip(widths[:-1], widths[1:]):
        params += [torch.randn(d_out, d_in, generator=gen) * math.sqrt(2 / d_in), torch.zeros(d_out)]
    params = [p.requires_grad_() for p in params]
    opt = torch.optim.Adam(params, lr=1e-3)
    for it in range(1, args.iterations + 1):
        xs, ys, xq, yq = sinusoid_batch(25, 10, gen)
        query_loss, _ = ops.mlp_maml(params, xs, ys, xq, yq, lr=0.01, steps=1)
        opt.zero_grad()
        query_loss.mean().backward()
        opt.step()
        if it % max(args.iterations // 10, 1) == 0:
            print(f"iteration {it:5d}  post-update query MSE {query_loss.mean().item():.3f}", flush=True)

    # The other two ops, on the adapted parameters of a fresh batch of tasks: each task's support
    # loss, gradient and Hessian-vector product (mlp_hvp), then one more inner step (inner_update).
    xs, ys, xq, yq = sinusoid_batch(5, 10, gen)
    with torch.no_grad():
        _, adapted = ops.mlp_maml(params, xs, ys, xq, yq, lr=0.01, steps=1)
    direction = [torch.randn_like(p) for p in adapted]
    loss, grads, hvps = ops.mlp_hvp(adapted, xs, ys, direction, activation="relu", loss="mse")
    stepped = ops.inner_update(adapted, grads, 0.01)
    after, _, _ = ops.mlp_hvp(stepped, xs, ys, direction, activation="relu", loss="mse")

    def per_task_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([t.flatten(1).pow(2).sum(1) for t in tensors]).sum(0).sqrt()

    print("task  support MSE  |gradient|   |H v|   support MSE after one more step")
    for t, row in enumerate(zip(loss.tolist(), per_task_norm(grads).tolist(), per_task_norm(hvps).tolist(),
                                after.tolist())):
        print(f"{t:4d}  {row[0]:11.3f}  {row[1]:10.3f}  {row[2]:7.3f}  {row[3]:11.3f}")


if __name__ == "__main__":
    main()
