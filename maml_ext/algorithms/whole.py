"""The generic path's whole meta-gradient, recorded once per input signature and replayed as one node.

:mod:`.trace` records the ``vmap``-batched forward; the inner loop around it (the support
gradients with ``create_graph``, the inner steps, the query loss) and the outer backward still
ran as Python and as autograd-engine work on every call: about 390 Python calls per iteration on
a small MLP, against 110 for a hand-written batched loop. Here ``make_fx`` records all of it,
``torch.autograd.grad`` calls included, as one graph of aten operators ``(batch, parameters) ->
(mean query loss, meta-gradient)``; :func:`simplify_whole` cleans it and :class:`_Replay` runs it
as a single autograd node whose backward hands over the recorded meta-gradient, as the fused
op does. Same operators, so the same meta-gradient (first and second order, any number of
steps); no autograd graph is kept between ``meta_loss`` and ``backward``.

The recording is valid on the conditions of :mod:`.trace` (the learner's ``trace`` setting)
plus the learner's own settings that enter the key (step count, step sizes, first order, loss,
inner optimizer, which tensors need gradients). What it cannot hold falls back to the step-by-step
path: grad mode off, hooks, per-step BatchNorm statistics (updated in place), a custom loss
function, a model's ``forward_tasks``, random operators, or any tracing failure.
"""

from __future__ import annotations

import contextlib
import operator
import warnings
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, fx
from torch.fx.experimental.proxy_tensor import make_fx

from maml_ext import _extension

from . import sums
from .trace import MAX_SIGNATURES, Recorder, simplify

aten = torch.ops.aten
ALIASES = (aten.detach.default, aten.alias.default)  # no-ops when the replay runs without autograd
Slot = tuple[dict, str]  # (a module's _parameters dict, attribute)


def _functional_inplace(graph: fx.Graph) -> bool:
    """``x.div_(c)`` on an intermediate nothing else reads -> ``div(x, c)`` (autograd's backward
    formulas scale in place); False when another in-place operator is left."""
    for n in list(graph.nodes):
        schema = getattr(n.target, "_schema", None)
        if n.op != "call_function" or schema is None or not schema.is_mutable:
            continue
        name = n.target.__name__.split(".")[0]
        first = schema.arguments[0].alias_info if schema.arguments else None
        if not (name.endswith("_") and first is not None and first.is_write):  # mutates something else
            return False
        base = n.args[0] if n.args else None
        packet = getattr(aten, name.rstrip("_"), None)
        overload = getattr(packet, n.target._overloadname, None) if packet is not None else None
        if (overload is None or not isinstance(base, fx.Node) or base.op != "call_function"
                or set(base.users) != {n} or n.kwargs or _is_view(base)):
            return False
        n.target = overload
    return True


def _is_view(n: fx.Node) -> bool:
    if n.target is operator.getitem:  # one output of a multi-output operator: its own memory
        return False
    schema = getattr(n.target, "_schema", None)
    return schema is None or any(r.alias_info is not None for r in schema.returns)


# Besides the pointwise operators (TensorIterator), those that give the same values whatever their
# inputs' strides; together, the only readers of relaid values in tests/test_models_zoo.py and the
# benchmarks. Others (CPU _weight_norm_interface_backward) may read an input as contiguous unchecked.
ANY_LAYOUT = {aten.view.default, aten._unsafe_view.default, aten.reshape.default}


def reads_any_layout(n: fx.Node) -> bool:
    """Whether ``n`` gives the same values whatever its inputs' strides (views of a relaid value
    become reshapes in :func:`_drop_identities`)."""
    return n.target in ANY_LAYOUT or torch.Tag.pointwise in getattr(n.target, "tags", ())


def _drop_identities(graph: fx.Graph) -> None:
    """Aliases -> their input; ``add(zeros_like(x), y)`` (a gradient accumulated onto zeros) -> y.
    y may be laid out differently from the sum (transposed, say), so only where the sum's readers
    read any layout: views computed from it become reshapes, which copy only where a view cannot
    be taken; what is computed from it further is checked by :func:`lower` (``_keep_layouts``)."""
    relaid = []
    for n in list(graph.nodes):
        if n.op != "call_function":
            continue
        if n.target in ALIASES:
            n.replace_all_uses_with(n.args[0])
        elif n.target is aten.add.Tensor and len(n.args) == 2 and not n.kwargs:
            a, b = n.args
            for zero, other in ((a, b), (b, a)):
                if (isinstance(zero, fx.Node) and zero.target is aten.zeros_like.default and isinstance(other, fx.Node)
                        and _same_type(other, n) and (_same_layout(other, n) or all(map(reads_any_layout, n.users)))):
                    n.replace_all_uses_with(other)
                    relaid.append(other)
                    break
    seen = set()
    while relaid:  # everything computed from a relaid value
        n = relaid.pop()
        for user in n.users:
            if user not in seen:
                seen.add(user)
                relaid.append(user)
                if user.target in (aten.view.default, aten._unsafe_view.default):
                    user.target = aten.reshape.default


def _drop_double_transposes(graph: fx.Graph) -> None:
    """``transpose(transpose(x, i, j), i, j)`` -> x (the backward transposes what the forward did)."""
    for n in graph.nodes:
        if n.op == "call_function" and n.target is aten.transpose.int:
            inner = n.args[0]
            if (isinstance(inner, fx.Node) and inner.target is aten.transpose.int
                    and sorted(inner.args[1:]) == sorted(n.args[1:])):
                n.replace_all_uses_with(inner.args[0])


def _same_layout(a: fx.Node, b: fx.Node) -> bool:
    return a.meta["val"].stride() == b.meta["val"].stride()


def _same_type(a: fx.Node, b: fx.Node) -> bool:
    va, vb = a.meta.get("val"), b.meta.get("val")
    return isinstance(va, Tensor) and isinstance(vb, Tensor) and va.shape == vb.shape and va.dtype == vb.dtype


def _eliminate_common(graph: fx.Graph) -> None:
    """One node per (operator, arguments): the inner and outer backward recompute some of the
    same values (transposes of the same weight, say). Safe: the graph is functional by now."""
    seen: dict[tuple, fx.Node] = {}
    for n in list(graph.nodes):
        if n.op != "call_function":
            continue
        try:
            key = (n.target, _freeze(n.args), _freeze(n.kwargs))
            hash(key)
        except TypeError:  # an unhashable argument: keep the node
            continue
        if key in seen:
            n.replace_all_uses_with(seen[key])
            graph.erase_node(n)
        else:
            seen[key] = n


def _freeze(value: object) -> object:
    """A hashable key for an argument; scalars keep their type (1, 1.0 and True are equal in
    Python but not to an operator) and 0.0 and -0.0 stay apart."""
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, *(_freeze(v) for v in value))
    if isinstance(value, dict):
        return ("dict", *sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, (bool, int, float, complex)):
        return (type(value).__name__, value, str(value))
    return value


REASSOCIATE_SUMS = True  # read when a graph is recorded; benchmarks/bench_generic.py's "before" sets it False


def simplify_whole(gm: fx.GraphModule) -> fx.GraphModule | None:
    """The recorded meta-gradient graph without aliases, in-place scaling, additions of zero and
    repeated operators, its sums read in fewer passes (:mod:`.sums`), then :func:`.trace.simplify`'s folds; None when it must not be replayed
    (random operators, whose replay would draw other numbers, or in-place updates left)."""
    graph = gm.graph
    for n in graph.nodes:
        if n.op == "call_function" and torch.Tag.nondeterministic_seeded in getattr(n.target, "tags", ()):
            return None
    if not _functional_inplace(graph):
        return None
    _drop_identities(graph)
    _drop_double_transposes(graph)
    graph.eliminate_dead_code()
    _eliminate_common(graph)
    if REASSOCIATE_SUMS:
        sums.distribute_sums(graph)
        sums.merge_sums(graph)
    return simplify(gm)


def _public(target: object) -> tuple[str, object] | None:
    """The public C binding of an aten overload: ``("call_function", torch.bmm)``-like or
    ``("call_method", "view")``; None for those without one (the backward formulas)."""
    if not isinstance(target, torch._ops.OpOverload):
        return None
    name = target.__name__.split(".")[0]
    for space in (torch._C._VariableFunctions, torch._C._nn):
        fn = getattr(space, name, None)
        if fn is not None:
            return "call_function", fn
    if type(getattr(torch.Tensor, name, None)).__name__ == "method_descriptor":  # C methods only
        return "call_method", name
    return None


def lower(gm: fx.GraphModule, inputs: tuple[Tensor, ...]) -> fx.GraphModule:
    """Calls ``torch.bmm(...)`` / ``x.view(...)`` instead of ``torch.ops.aten.bmm.default(...)``
    where a public binding exists: an ``OpOverload`` call costs ~3 µs more in Python per operator,
    the bulk of a small model's replay. A binding chooses the overload from its arguments and has
    its own defaults (``torch._C._nn.mse_loss``'s reduction is not aten's), so every argument is
    passed, and a node is lowered only where the binding gave bitwise the same tensor (values,
    dtype, shape, strides) on ``inputs``, the recording's own, without a warning (a deprecated
    overload matched)."""
    env: dict[fx.Node, object] = {}
    args_iter = iter(inputs)
    last_use = {a: n for n in gm.graph.nodes for a in n.all_input_nodes}  # later users overwrite
    with torch.no_grad():
        for n in gm.graph.nodes:
            if n.op == "placeholder":
                env[n] = next(args_iter)
            elif n.op == "get_attr":  # a tensor the recording holds (a module's buffer, say)
                env[n] = operator.attrgetter(n.target)(gm)
            elif n.op == "call_function":
                _keep_layouts(gm.graph, n, env)
                env[n] = _lower_node(n, env)
            for a in n.all_input_nodes:  # values are freed after their last use, as in a replay
                if last_use.get(a, n) is n:  # a copy _keep_layouts made: read by n only
                    env[a] = None
    gm.recompile()
    return gm


def _keep_layouts(graph: fx.Graph, n: fx.Node, env: dict[fx.Node, object]) -> None:
    """Gives ``n`` each input in its recorded layout where the simplifications changed it (a
    relaid sum of :func:`_drop_identities`) and ``n`` is not known to read any layout: some
    kernels read their input as contiguous without checking (CPU
    ``_weight_norm_interface_backward``), a silently wrong meta-gradient. A copy only there."""
    if reads_any_layout(n):
        return
    for a in n.all_input_nodes:
        got, recorded = env[a], a.meta.get("val")
        if isinstance(got, Tensor) and isinstance(recorded, Tensor) and got.stride() != recorded.stride():
            with graph.inserting_before(n):
                kept = graph.call_function(_in_layout, (a, recorded.stride()))
            kept.meta["val"] = recorded
            n.replace_input_with(a, kept)
            env[kept] = _in_layout(got, recorded.stride())


def _in_layout(x: Tensor, stride: tuple[int, ...]) -> Tensor:
    """``x``'s values in the layout ``stride``."""
    return torch.empty_strided(x.shape, stride, dtype=x.dtype, device=x.device).copy_(x)


def _lower_node(n: fx.Node, env: dict[fx.Node, object]) -> object:
    """Runs ``n`` on the values in ``env``; lowers it where its public binding gives the same tensor."""
    args, kwargs = fx.node.map_arg((n.args, n.kwargs), lambda a: env[a])
    want = n.target(*args, **kwargs)
    found = _public(n.target)
    if found is None or not isinstance(want, Tensor):
        return want
    full_args, full_kwargs = _all_arguments(n.target, n.args, n.kwargs)
    kind, fn = found
    call = (lambda *a, **k: getattr(a[0], fn)(*a[1:], **k)) if kind == "call_method" else fn
    try:
        with warnings.catch_warnings(record=True) as warned:  # e.g. a deprecated overload matched
            warnings.simplefilter("always")
            got = call(*fx.node.map_arg(full_args, lambda a: env[a]), **fx.node.map_arg(full_kwargs, lambda a: env[a]))
    except Exception:  # noqa: BLE001 - the binding rejects these arguments: keep aten's
        return want
    if (not warned and isinstance(got, Tensor) and got.dtype == want.dtype and got.shape == want.shape
            and got.stride() == want.stride() and torch.equal(got, want)):
        n.op, n.target, n.args, n.kwargs = kind, fn, full_args, full_kwargs
    return want


def _all_arguments(op: torch._ops.OpOverload, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Every schema argument: required ones positionally, those with a default by name (filled
    in): positionally, ``aten.add.Scalar(x, 2.0, 3.0)``'s alpha would match ``torch.add``'s
    deprecated ``add(input, alpha, other)``."""
    positional, named = [], {}
    for i, a in enumerate(op._schema.arguments):
        value = args[i] if i < len(args) and not a.kwarg_only else kwargs.get(a.name, a.default_value)
        if a.has_default_value():
            named[a.name] = value
        else:
            positional.append(value)
    return tuple(positional), named


IN_PLACE = {aten.add.Tensor: "add_", aten.sub.Tensor: "sub_", aten.mul.Tensor: "mul_", aten.div.Tensor: "div_"}
REUSE_BUFFERS = True  # read when a graph is recorded; benchmarks/bench_generic.py's "before" sets it False


def in_place_candidates(graph: fx.Graph) -> dict[fx.Node, str]:
    """``add(a, b)`` nodes (and sub, mul, div) that may run as ``a.add_(b)``: this is ``a``'s last
    use, ``a`` is an intermediate owning its memory (no view of it is taken), and the result has
    ``a``'s shape, dtype and strides. Autograd accumulates gradients in place; the recording made
    every sum a fresh tensor (conv4: ~8 MB each, page-faulted in anew). Same values, bitwise."""
    order = {n: i for i, n in enumerate(graph.nodes)}
    found = {}
    for n in graph.nodes:
        method = IN_PLACE.get(n.target)
        if method is None or n.kwargs or len(n.args) != 2 or not isinstance(n.args[0], fx.Node):
            continue
        a = n.args[0]
        va, vn = a.meta.get("val"), n.meta.get("val")
        if (a.op == "call_function" and not _is_view(a) and isinstance(va, Tensor) and isinstance(vn, Tensor)
                and va.shape == vn.shape and va.dtype == vn.dtype and va.stride() == vn.stride()
                and all(u is n or (order[u] < order[n] and not _is_view(u)) for u in a.users)):
            found[n] = method
    return found


def run_in_place(gm: fx.GraphModule, found: dict[fx.Node, str]) -> fx.GraphModule:
    """The nodes of :func:`in_place_candidates` as ``Tensor.add_``-like method calls (after
    :func:`lower`, which evaluates only function calls)."""
    for n, method in found.items():
        n.op, n.target = "call_method", method
    gm.recompile()
    return gm


REUSE_MEMORY = True  # read on every replay; benchmarks/bench_generic.py's "before" sets it False


@contextlib.contextmanager
def reused_memory() -> Iterator[None]:
    """Inside: CPU blocks of >= 64 KiB freed are handed to the next request of their size
    (``csrc/replay/replay_memory.cpp``) instead of going back to glibc, which returns them to
    the kernel, so that each new 8 MB intermediate of a conv4 replay page-faulted in anew. The
    blocks kept are freed on leaving: nothing is held between replays. Without the compiled
    extension, a no-op."""
    if _extension.C is None or not REUSE_MEMORY:
        yield
        return
    _extension.C.replay_memory_enter()
    try:
        yield
    finally:
        _extension.C.replay_memory_leave()


class _Replay(torch.autograd.Function):
    """Runs a recorded meta-gradient graph: the loss forward, the recorded gradient backward."""

    @staticmethod
    def forward(ctx, run: Callable[..., tuple], wrt: tuple[int, ...], *tensors: Tensor) -> Tensor:  # noqa: ANN001
        with reused_memory():
            loss, *grads = run(*tensors)
        # Saved as tensors: freed with the graph, so a second backward raises as for any graph.
        ctx.wrt = wrt
        ctx.save_for_backward(*grads)
        ctx.count = len(tensors)
        return loss

    @staticmethod
    def backward(ctx, seed: Tensor) -> tuple:  # noqa: ANN001
        if torch.is_grad_enabled():  # create_graph: the recorded gradient is a value, not a graph
            raise RuntimeError(
                "maml_ext: MAML's recorded meta-gradient is differentiable once; for a second derivative "
                "(create_graph=True, a penalty on the meta-gradient) pass trace=False to the learner"
            )
        grads = [None, None] + [None] * ctx.count
        found = [(i, g) for i, g in zip(ctx.wrt, ctx.saved_tensors) if g is not None]
        # One foreach op for the whole seed product (its dispatch was a tenth of a small model's backward).
        for (i, _), g in zip(found, torch._foreach_mul([g for _, g in found], seed)):
            grads[2 + i] = g
        return tuple(grads)


class WholeRecorder:
    """Recorded meta-gradient graphs of one learner, one per signature (:meth:`run`); ``recorder``
    (the learner's forward recorder, whose key each call passes) also counts the recordings made
    here, to switch both off when an attribute changes on every call (:meth:`.trace.Recorder.churned`)."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.graphs: dict[tuple, Callable[..., tuple]] = {}
        # Keys whose recording failed (dropout in training mode, say): step by step, not tried again;
        # another key (the model in eval mode, other shapes) is tried.
        self.failed: set[tuple] = set()

    def run(self, key: tuple, slots: list[Slot], meta_loss: Callable[..., Tensor], data: tuple[Tensor, ...],
            tensors: tuple[Tensor, ...]) -> Tensor | None:
        """``meta_loss(*data)`` with ``tensors`` in ``slots`` (the parameters it reads), from the
        recording for ``key`` (made now if new); None when it cannot be recorded (``make_fx``
        refuses a branch on a tensor's value, as in a per-task loop's model)."""
        wrt = tuple(i for i, t in enumerate(tensors, len(data)) if t.requires_grad)
        key = (key, wrt)
        run = self.graphs.get(key)
        if run is None:
            if (key in self.failed or max(len(self.graphs), len(self.failed)) >= MAX_SIGNATURES
                    or self.recorder.churned(key[0])):
                return None
            run = self._record(slots, meta_loss, data, tensors, wrt)
            if run is None:
                self.failed.add(key)
                return None
            self.graphs[key] = run
        else:
            self.recorder.replayed()
        return _Replay.apply(run, wrt, *data, *tensors)

    @staticmethod
    def _record(slots: list[Slot], meta_loss: Callable[..., Tensor], data: tuple[Tensor, ...],
                tensors: tuple[Tensor, ...], wrt: tuple[int, ...]) -> Callable[..., tuple] | None:
        n_data = len(data)

        def whole(*inputs: Tensor) -> tuple:
            saved = [(d, a, d[a]) for d, a in slots]
            try:
                for (d, a), t in zip(slots, inputs[n_data:]):
                    d[a] = t
                loss = meta_loss(*inputs[:n_data])
                grads = torch.autograd.grad(loss, [inputs[i] for i in wrt], allow_unused=True)
            finally:
                for d, a, original in reversed(saved):
                    d[a] = original
            return (loss.detach(), *grads)

        leaves = [t.detach().requires_grad_(t.requires_grad) for t in tensors]
        devices = sorted({t.device.index or 0 for t in (*data, *tensors) if t.device.type == "cuda"})
        try:
            # A forward with random operators (dropout) is not replayed; the random numbers drawn
            # while finding that out are given back, so the stepwise call draws the same ones.
            with torch.random.fork_rng(devices=devices), torch.enable_grad():
                gm = make_fx(whole)(*(t.detach() for t in data), *leaves)
        except Exception:  # noqa: BLE001 - whatever tracing rejects runs step by step
            return None
        gm = simplify_whole(gm)
        if gm is None:
            return None
        found = in_place_candidates(gm.graph) if REUSE_BUFFERS else {}
        return run_in_place(lower(gm, (*(t.detach() for t in data), *leaves)), found).forward

