"""The cases of ops.mlp_hvp shared by test_ops_mlp_hvp and test_ops_cuda."""

from dataclasses import dataclass

import torch

from _ops_helpers import gen, like, mlp_batch, mlp_params, randn


@dataclass(frozen=True)
class Case:
    tasks: int
    k: int
    widths: tuple
    activation: str
    loss: str
    weighted: bool = False

    def __str__(self):
        w = "-".join(map(str, self.widths))
        return f"T{self.tasks}-K{self.k}-{w}-{self.activation}-{self.loss}{'-weighted' if self.weighted else ''}"

    def inputs(self, seed=0, dtype=torch.float64):
        g = gen(seed)
        params = mlp_params(g, self.widths, self.loss, self.tasks, dtype)
        x, y = mlp_batch(g, self.widths, self.loss, self.tasks, self.k, dtype)
        direction = like(g, params)
        weight = randn(g, self.tasks, self.k, dtype=dtype) if self.weighted else None
        return params, x, y, direction, weight

    def kwargs(self, weight):
        return dict(activation=self.activation, loss=self.loss, sample_weight=weight)


CASES = [
    Case(1, 1, (2, 5, 1), "relu", "mse"),
    Case(3, 5, (3, 7, 9, 2), "tanh", "mse", weighted=True),
    Case(25, 10, (1, 11, 1), "relu", "mse"),
    Case(3, 10, (4, 5, 3, 7, 3), "relu", "cross_entropy"),
    Case(25, 5, (2, 9, 4), "tanh", "cross_entropy", weighted=True),
    Case(1, 10, (3, 5, 5, 2), "tanh", "gaussian_nll", weighted=True),
    Case(3, 1, (2, 7, 2), "relu", "gaussian_nll"),
    Case(25, 10, (3, 13, 2), "relu", "gaussian_nll", weighted=True),
    Case(3, 5, (2, 3, 3, 3, 4), "tanh", "gaussian_nll"),
]
