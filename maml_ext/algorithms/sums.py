"""Fewer passes over large tensors in a recorded graph's reductions (for :mod:`.whole`).

Two rewrites of ``aten.sum.dim_IntList`` that read the large operand once instead of twice or
three times. Both change the order of a floating-point sum (values agree to rounding, not
bitwise), as any reduction order would:

- ``sum(add(x, y))`` -> ``add(sum(x), sum(y))`` (with the views between the add and the sum
  repeated on each operand): the product rule's two weight gradients of a convolution, added and
  then summed over tasks. On conv4 one operand is a transposed slice, and the elementwise add
  over it (2048×64×3×3, strided reads across pages) took ~4x its two sums.
- ``sum(sum(x, d1, keepdim=True), d2)`` -> ``sum(x, d1 + d2)``: the batch-norm backward's
  per-channel sums, recorded as three successive reductions (over the batch, then each spatial
  axis), the second one over an inner axis of 14 elements.
"""

from __future__ import annotations

import torch
from torch import Tensor, fx

aten = torch.ops.aten
SUM = aten.sum.dim_IntList
VIEWS = (aten.view.default, aten._unsafe_view.default, aten.reshape.default, aten.permute.default)
MIN_REDUCTION = 2  # distribute a sum over an add only where it shrinks the add's size this much


def _val(n: object) -> Tensor | None:
    v = n.meta.get("val") if isinstance(n, fx.Node) else None
    return v if isinstance(v, Tensor) else None


def _call(graph: fx.Graph, target: object, args: tuple, kwargs: dict | None = None) -> fx.Node:
    """A new node with its ``val`` (shape, dtype and strides, on the meta device) for later passes."""
    node = graph.call_function(target, args, kwargs or {})
    meta = lambda a: torch.empty_strided(_val(a).shape, _val(a).stride(), dtype=_val(a).dtype, device="meta")  # noqa: E731
    node.meta["val"] = target(*fx.node.map_arg(args, meta), **(kwargs or {}))
    return node


def _plain_sum(n: fx.Node) -> bool:
    return (n.op == "call_function" and n.target is SUM and not n.kwargs and len(n.args) in (2, 3)
            and isinstance(n.args[1], (list, tuple)) and len(n.args[1]) > 0)  # [] / None: every axis


def _keepdim(n: fx.Node) -> bool:
    return len(n.args) == 3 and n.args[2] is True


def distribute_sums(graph: fx.Graph) -> int:
    """``sum(views(add(x, y)))`` -> ``add(sum(views(x)), sum(views(y)))`` where the add and each
    view have no other user, ``x`` and ``y`` have the add's shape and dtype (no broadcast) and
    the sum is at least :data:`MIN_REDUCTION` times smaller than the add. Views become reshapes
    (an operand may be laid out differently from the sum). Returns how many were rewritten."""
    done = 0
    for n in list(graph.nodes):
        if not _plain_sum(n):
            continue
        chain, cur = [], n.args[0]
        while isinstance(cur, fx.Node) and cur.target in VIEWS and len(cur.users) == 1:
            chain.append(cur)
            cur = cur.args[0]
        if not (isinstance(cur, fx.Node) and cur.target is aten.add.Tensor and len(cur.users) == 1
                and len(cur.args) == 2 and cur.kwargs.get("alpha", 1) == 1):
            continue
        va, vn = _val(cur), _val(n)
        operands = cur.args
        if (va is None or vn is None or vn.numel() * MIN_REDUCTION > va.numel()
                or not all(_val(o) is not None and _val(o).shape == va.shape and _val(o).dtype == va.dtype for o in operands)):
            continue
        with graph.inserting_before(n):
            sums = []
            for o in operands:
                for view in reversed(chain):
                    target = aten.permute.default if view.target is aten.permute.default else aten.reshape.default
                    o = _call(graph, target, (o, *view.args[1:]))
                sums.append(_call(graph, SUM, (o, *n.args[1:])))
            total = _call(graph, aten.add.Tensor, tuple(sums))
        n.replace_all_uses_with(total)
        for dead in (n, *chain, cur):
            graph.erase_node(dead)
        done += 1
    return done


def merge_sums(graph: fx.Graph) -> int:
    """``sum(sum(x, d1, keepdim=True), d2, keepdim=True)`` -> ``sum(x, d1 ∪ d2, keepdim=True)``
    where the inner sum has no other user (with keepdim the outer sum's axes are ``x``'s, and
    both keep them: an outer sum without keepdim would drop only d2). Returns how many sums
    were merged away."""
    done = 0
    for n in list(graph.nodes):
        if not (_plain_sum(n) and _keepdim(n)):
            continue
        inner = n.args[0]
        if not (isinstance(inner, fx.Node) and _plain_sum(inner) and _keepdim(inner) and len(inner.users) == 1):
            continue
        rank = _val(inner).dim()
        dims = sorted({d % rank for d in (*inner.args[1], *n.args[1])})
        n.args = (inner.args[0], dims, True)
        graph.erase_node(inner)
        done += 1
    return done
