"""The tensor type of :func:`maml_ext.ops.mlp_maml_loss`'s output (with the compiled kernels)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import torch
from torch import Tensor

from maml_ext import _extension


class MetaLoss(Tensor):
    """A ``torch.Tensor`` in every respect (any op on it gives a plain tensor) whose ``.backward()``
    skips torch's autograd engine when the engine would only store the precomputed meta-gradient
    into each parameter's ``.grad`` (``_C.backward_alone``: same ``.grad`` bits, graph freed the
    same way). On the paper's sinusoid config the engine's run costs ~0.25x the kernel right after
    it, this one ~0.02x (benchmarks/RESULTS.md, issue 14.2). Any argument, hook, retained graph,
    anomaly mode, the profiler or compiled autograd takes ``Tensor.backward`` as usual."""

    __slots__ = ()
    __torch_function__ = torch._C._disabled_torch_function_impl

    def backward(self, gradient: Tensor | None = None, retain_graph: bool | None = None,
                 create_graph: bool = False, inputs: Tensor | Sequence[Tensor] | None = None) -> None:
        if (gradient is None and not retain_graph and not create_graph and inputs is None
                and not _compiled_autograd() and _extension.C.backward_alone(self)):
            return
        super().backward(gradient, retain_graph, create_graph, inputs)

    # Shown, formatted and pickled as the plain tensor it is (torch does so for Tensor itself only).
    def __repr__(self, *, tensor_contents: str | None = None) -> str:
        return "tensor(" + super().__repr__(tensor_contents=tensor_contents).removeprefix("MetaLoss(")

    def __format__(self, format_spec: str) -> str:
        return self.detach().__format__(format_spec)

    def __reduce_ex__(self, protocol: int) -> tuple:
        return self._reduce_ex_internal(protocol)


def _compiled_autograd() -> bool:
    """Whether compiled autograd is on (it must see the whole backward); not imported here."""
    module = sys.modules.get("torch._dynamo.compiled_autograd")
    return module is not None and bool(getattr(module, "compiled_autograd_enabled", False))


def as_meta_loss(loss: Tensor) -> Tensor:
    """``loss`` itself, as a :class:`MetaLoss` (the same tensor and autograd node, no copy)."""
    loss.__class__ = MetaLoss
    return loss
