"""The generic path's batched forward, traced once and replayed: ``vmap`` without its per-call cost.

``vmap`` of a module re-runs, on every call, the module tree's Python (``nn.Module.__call__`` per
layer), the ``vmap`` wrapper and functorch's batching rules, and the rules emit more operators
than a hand-written batched forward (a batched ``linear`` becomes expand, view, bmm, a view back,
a multiplication of the bias by 1 and an add). Here that work is done once per input signature:
``make_fx`` records the aten operators ``vmap`` runs, :func:`simplify` removes the ones that do
nothing (views and expands to the same shape, multiplications by 1) and folds ``bmm`` + bias into
``baddbmm``, and later calls replay the recorded operators. They are plain differentiable aten
ops, so autograd through the replay (per-task gradients, second order) is exact.

A recording is valid while the forward is a function of its tensor inputs, the modules' own
Python attributes (``training``, a dropout's ``p``, an ``eps``: :class:`ModuleState`), grad mode,
the input shapes, dtypes, devices and strides and the module's buffer tensors (the
cache key). That holds for ``torch.nn``'s layers and maml_ext's models; a user's own ``forward``
could also read Python state outside its modules (a global, another object's attribute), so it is
traced only on request
(``trace=True``, see :class:`~maml_ext.algorithms.base.MetaLearner`). Forward hooks and autocast
switch recording off for the call.
"""

from __future__ import annotations

import operator
import warnings
from collections.abc import Callable

import torch
from torch import Tensor, fx, nn
from torch.fx.experimental.proxy_tensor import make_fx
from torch.nn.modules import module as module_globals

aten = torch.ops.aten
SAME_SHAPE_NOOPS = (aten.view.default, aten.expand.default, aten._unsafe_view.default, aten.reshape.default)
TRUSTED = ("torch.nn.modules.", "maml_ext.models.")  # forwards that read no mutable Python state
MAX_SIGNATURES = 64  # beyond this many input signatures (shapes keep changing) new ones run unrecorded
# This many recordings of one signature in a row, none replayed between: an attribute changes on
# every call (a counter, a fresh tensor), and recording is switched off.
CHURN = 3


def trusted(model: nn.Module) -> bool:
    """Whether every module's ``forward`` is one of torch.nn's or maml_ext's (safe to record)."""
    return all(type(m).__module__.startswith(TRUSTED) for m in model.modules())


def _is_mutating(node: fx.Node) -> bool:
    schema = getattr(node.target, "_schema", None)
    return schema is not None and schema.is_mutable


def _same_layout(a: fx.Node, b: fx.Node) -> bool:
    """Same shape and strides. A rewrite must keep every value's strides as recorded: the recording
    dropped the ``.contiguous()`` calls that found a contiguous tensor, and some kernels read their
    input's memory as contiguous without checking (``_weight_norm_interface_backward`` on CPU
    gives wrong gradients for a transposed one)."""
    va, vb = a.meta.get("val"), b.meta.get("val")
    return (isinstance(va, Tensor) and isinstance(vb, Tensor) and va.shape == vb.shape
            and va.stride() == vb.stride())


def simplify(gm: fx.GraphModule) -> fx.GraphModule:
    """Drop same-layout views/expands and ``mul(x, 1)``; ``add(bmm(a, b), c)`` -> ``baddbmm(c, a, b)``
    where the sum is contiguous, as baddbmm's result is. Graphs with in-place operators are left
    as recorded (dropping a copy could alias an input)."""
    graph = gm.graph
    calls = [n for n in graph.nodes if n.op == "call_function"]
    if any(_is_mutating(n) for n in calls):
        return gm
    for n in calls:
        src = n.args[0] if n.args else None
        if (n.target in SAME_SHAPE_NOOPS or (n.target is aten.mul.Scalar and n.args[1] == 1)) and _same_layout(src, n):
            n.replace_all_uses_with(src)
            graph.erase_node(n)
    for n in list(graph.nodes):
        if n.op != "call_function" or n.target is not aten.add.Tensor or n.kwargs or len(n.args) != 2:
            continue
        for mm, other in (n.args, reversed(n.args)):
            if (isinstance(mm, fx.Node) and mm.target is aten.bmm.default and len(mm.users) == 1
                    and isinstance(other, fx.Node) and _same_layout(mm, n) and n.meta["val"].is_contiguous()):
                with graph.inserting_before(n):
                    fused = graph.call_function(aten.baddbmm.default, (other, *mm.args))
                fused.meta = n.meta
                n.replace_all_uses_with(fused)
                graph.erase_node(n)
                graph.erase_node(mm)
                break
    for n in list(graph.nodes):
        _fold_norm_affine(graph, n)
    graph.eliminate_dead_code()
    graph.lint()
    gm.recompile()
    return gm


def _shape(n: object) -> list[int] | None:
    return list(n.meta["val"].shape) if isinstance(n, fx.Node) and isinstance(n.meta.get("val"), Tensor) else None


def _fold_norm_affine(graph: fx.Graph, add: fx.Node) -> None:
    """vmap's rule for a per-task BatchNorm affine: ``native_batch_norm(x [N, G·C, ...], ones,
    zeros)``, its output transposed and viewed ``[G, C, N, ...]``, times a ``[G, C, 1, ...]`` weight
    plus a bias of that shape -> ``native_batch_norm(x, weight [G·C], bias [G·C])`` with the same
    transpose and view: the affine inside the normalisation, on contiguous memory, as a
    hand-written per-task BatchNorm does."""
    if add.target is not aten.add.Tensor or add.kwargs or len(add.args) != 2:
        return
    mul, bias = add.args
    if not (isinstance(mul, fx.Node) and mul.target is aten.mul.Tensor and len(mul.users) == 1 and not mul.kwargs):
        return
    view, weight = mul.args
    if not (isinstance(view, fx.Node) and view.target is aten.view.default and len(view.users) == 1):
        return
    trans = view.args[0]
    if not (trans.target is aten.transpose.int and tuple(trans.args[1:]) == (0, 1) and len(trans.users) == 1):
        return
    item = trans.args[0]
    if not (item.target is operator.getitem and item.args[1] == 0 and len(item.users) == 1):
        return
    norm = item.args[0]
    if not (norm.target is aten.native_batch_norm.default and norm.args[3] is None and norm.args[4] is None
            and norm.args[5] is True and norm.args[1].target is aten.ones.default
            and norm.args[2].target is aten.zeros.default):
        return
    shape = _shape(view)
    per_channel = shape[:2] + [1] * (len(shape) - 2)
    if shape[0] * shape[1] != _shape(norm.args[0])[1] or _shape(weight) != per_channel or _shape(bias) != per_channel:
        return
    channels = [shape[0] * shape[1]]
    with graph.inserting_before(add):
        flat_w = graph.call_function(aten.reshape.default, (weight, channels))
        flat_b = graph.call_function(aten.reshape.default, (bias, channels))
        folded = graph.call_function(aten.native_batch_norm.default, (norm.args[0], flat_w, flat_b, *norm.args[3:]))
        out = graph.call_function(operator.getitem, (folded, 0))
        out = graph.call_function(aten.transpose.int, (out, 0, 1))
        out = graph.call_function(aten.view.default, (out, view.args[1]))
    out.meta = add.meta
    add.replace_all_uses_with(out)  # the old chain is dead code now


def _hashable(value: object) -> object:
    """A key for attribute values: containers by content (a list of sizes changed in place is
    seen), other unhashable objects by identity."""
    if isinstance(value, (list, tuple)):
        return tuple([_hashable(v) for v in value])
    if isinstance(value, dict):
        return tuple([(k, _hashable(v)) for k, v in value.items()])
    try:
        hash(value)
    except TypeError:
        return id(value)
    return value


def _differs(x: object, y: object) -> bool:
    if x is y:
        return False
    if isinstance(x, Tensor) or isinstance(y, Tensor):  # tensors enter the key by identity
        return True
    try:
        return bool(x != y)
    except Exception:  # noqa: BLE001 - an object without a plain comparison: by identity
        return True


class ModuleState:
    """The modules' own Python attributes, read for a cache key: ``training``, a dropout's ``p``,
    a slope, an ``eps``, a flag of the user's, a tensor held as a plain attribute (by identity). A
    forward may branch on any of them, so a recording holds only while they are as they were.
    The attribute names are looked up once (again when a module gains or loses one): one
    ``itemgetter`` per module per call."""

    def __init__(self, modules: list[nn.Module]) -> None:
        self.dicts = [vars(m) for m in modules]
        self._index()

    def _index(self) -> None:
        self.sizes = [len(d) for d in self.dicts]
        found = [(d, names) for d in self.dicts if (names := [k for k in d if k[0] != "_"])]
        self.getters = [(d, operator.itemgetter(*names)) for d, names in found]
        self.names = [names for _, names in found]

    def changed(self, old: tuple, new: tuple) -> list[str]:
        """The attributes whose values differ between two of this object's results (the names
        of the present layout; all of them where a module gained or lost one since)."""
        if len(old) != len(new):
            return [n for names in self.names for n in names]
        found = []
        for names, a, b in zip(self.names, old, new):
            pairs = zip(names, a, b) if len(names) > 1 else [(names[0], a, b)]
            found += [n for n, x, y in pairs if _differs(x, y)]
        return found

    def __call__(self) -> tuple:
        if [len(d) for d in self.dicts] != self.sizes:
            self._index()
        values = tuple([get(d) for d, get in self.getters])
        try:
            hash(values)
        except TypeError:  # a list or dict attribute
            return _hashable(values)
        return values


def _has_hooks(modules: list[nn.Module]) -> bool:
    if module_globals._global_forward_hooks or module_globals._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in modules)


class Recorder:
    """Recorded batched forwards of one model, one per input signature."""

    def __init__(self, model: nn.Module) -> None:
        self.modules = list(model.modules())
        self.state = ModuleState(self.modules)
        # A recording holds the module's buffers (a normalisation constant, say) as they were:
        # in-place changes are seen, a buffer replaced by another tensor needs a new recording.
        self.buffer_slots = [(m._buffers, name) for m in self.modules for name in m._buffers]
        self.graphs: dict[tuple, Callable[..., Tensor]] = {}  # key -> a recorded GraphModule's forward
        # Keys whose recording failed (dropout in training mode, say): unrecorded, not tried again;
        # another key (the model in eval mode, other shapes) is tried.
        self.failed: set[tuple] = set()
        self.enabled = True  # False once an attribute changes on every call (see churned)
        # Signature (the key without module state and buffers) -> recordings of it in a row, the
        # last one's key; emptied by a replay.
        self.streaks: dict[tuple, tuple[int, tuple]] = {}

    def key(self, names: tuple[str, ...], dims: tuple, tensors: tuple[Tensor, ...]) -> tuple | None:
        """The cache key of a call, or None when this call must not use a recording (hooks,
        autocast: a replay under autocast would cast the recorded casts' operands again, and the
        autocast dtype is not in the key)."""
        if _has_hooks(self.modules) or torch.is_autocast_enabled(tensors[0].device.type):
            return None
        # Grad mode: layers may take another route without gradients (e.g. MultiheadAttention's
        # fused inference path).
        # Lists, not generator expressions: this runs twice per inner step.
        return (names, dims, torch.is_grad_enabled(), self.state(),
                tuple([id(d[n]) for d, n in self.buffer_slots]),
                tuple([(t.shape, t.stride(), t.dtype, t.device) for t in tensors]))

    def record(self, key: tuple, fn: Callable[..., Tensor], tensors: tuple[Tensor, ...]) -> bool:
        """Record ``fn(*tensors)`` (the vmapped forward) as ``graphs[key]``; False when recording is
        off or fails (the caller runs ``fn`` itself, which raises the model's own error)."""
        # Beyond MAX_SIGNATURES the recordings made so far are still used.
        if (key in self.failed or max(len(self.graphs), len(self.failed)) >= MAX_SIGNATURES
                or self.churned(key)):
            return False
        try:
            gm = make_fx(fn)(*(t.detach() for t in tensors))  # the batched operators, no autograd graph
        except Exception:  # noqa: BLE001 - anything vmap or tracing rejects runs untraced
            self.failed.add(key)
            return False
        self.graphs[key] = simplify(gm).forward  # forward: without nn.Module.__call__'s overhead
        return True

    def replayed(self) -> None:
        """A recording was replayed: the attributes do not change on every call."""
        if self.streaks:
            self.streaks.clear()

    def churned(self, key: tuple) -> bool:
        """Counts a new recording of ``key``'s signature; True (recording off for this learner,
        with a warning naming the attribute) at the CHURN-th in a row: every call re-recorded
        (seconds each on a conv net) and replayed nothing."""
        signature = key[:3] + key[5:]
        count, last = self.streaks.get(signature, (0, None))
        self.streaks[signature] = (count + 1, key)
        if count + 1 < CHURN:
            return False
        names = self.state.changed(last[3], key[3]) + [
            f"buffer {a}" for (_, a), x, y in zip(self.buffer_slots, last[4], key[4]) if x != y]
        self.enabled = False
        warnings.warn(
            f"maml_ext: the model's attribute(s) {', '.join(names) or '?'} changed on each of the last {CHURN} "
            "calls, so each call recorded the model anew; not recording it from now on (the step-by-step "
            "path, same results). Keep per-call state out of the modules, or pass trace=False",
            stacklevel=5,
        )
        return True
