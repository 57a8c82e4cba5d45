"""Running a user's ``nn.Module`` functionally over a batch of tasks, without touching it.

- Every (module, attribute) slot holding a parameter, tied and reused ones included, is given the
  adapted tensor for the duration of one forward call and restored afterwards (also on an
  error), so a tied or shared parameter takes the same adapted tensor everywhere and the module's
  own ``nn.Parameter``\\ s are in place again when the call returns. This is what
  ``torch.func.functional_call(..., tie_weights=False)`` does, with the slots looked up once
  instead of on every call (its per-call bookkeeping was a tenth of a small model's iteration).
- BatchNorm running statistics are passed as ``None`` (batch statistics in train and eval mode,
  as in the original MAML, and no in-place update of the module's buffers).
- What a forward writes into the module is undone: the module's other buffers are given copies
  for the call (spectral norm's power iteration updates its vectors in place in training mode),
  and tensors stored as plain attributes (the deprecated ``torch.nn.utils.weight_norm`` and
  ``spectral_norm`` hooks set the weight so; under ``vmap`` it would be left a dead batched
  tensor) are put back; attributes a forward adds or replaces with tensors (``self.features = h``,
  ``self.cache = [h]``) are removed or put back, and lists and dicts it fills in place
  (``self.acts.append(h)``) get their contents back.
  Every call starts from the module as the user left it.
- Tasks run under ``vmap``, recorded once per input signature and replayed (:mod:`.trace`) for
  torch.nn's layers, maml_ext's models and models traced on request; a model vmap cannot batch
  (RNNs, dropout, data-dependent control flow) runs as an exact per-task loop instead, with a
  one-time notice. So does a model vmap would batch wrongly: an adapted ``nn.Embedding`` with
  ``padding_idx`` (vmap's rule offsets the indices, so only the first task's padding row gets a
  zero gradient).
- While gradients are recorded, attention (``scaled_dot_product_attention``: MultiheadAttention,
  Transformer layers, a user's own) runs on its math kernel: the fused kernels have no double
  backward, so second-order MAML through them fails in torch's own autograd. The eval-mode fast
  path of MultiheadAttention and TransformerEncoderLayer (no derivative at all) is off then.
- ``nn.Embedding(max_norm=...)`` (renormalises its weight in place: it would write into the
  user's module) and ``nn.Embedding(sparse=True)`` are refused when the learner is built.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import Union

import torch
from torch import Tensor, nn
from torch.func import vmap
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.modules.batchnorm import _BatchNorm

from .trace import Recorder, trusted

Output = Union[int, str, Callable[[object], Tensor], None]
"""Which part of a model's output the loss sees: None (a tensor as is, element 0 of a tuple or
list), an index, a dict key, or a callable ``output -> Tensor``."""

BN_STATS = ("running_mean", "running_var", "num_batches_tracked")


def check_output(output: Output) -> None:
    if output is not None and not isinstance(output, (int, str)) and not callable(output):
        raise ValueError(f"output: expected None, an index, a dict key or a callable, got {type(output).__name__}")


def select_output(out: object, output: Output) -> Tensor:
    """The prediction the loss sees (see :data:`Output`)."""
    if callable(output):
        chosen = output(out)
    elif output is None:
        if isinstance(out, dict):
            raise ValueError(f"output: the model returns a dict (keys {sorted(out)}); pass output=<key>")
        chosen = out[0] if isinstance(out, (tuple, list)) else out
    else:
        chosen = out[output]
    if not isinstance(chosen, Tensor):
        raise ValueError(f"output: expected the selected model output to be a tensor, got {type(chosen).__name__}")
    return chosen


def _attributes(d: dict) -> dict[str, tuple[object, object]]:
    """A module's public attributes: name -> (value, a copy of its contents for a list or dict)."""
    return {k: (v, v.copy() if type(v) in (list, dict) else None) for k, v in d.items() if k[0] != "_"}


def _holds_tensor(value: object) -> bool:
    if isinstance(value, Tensor):
        return True
    if isinstance(value, (list, tuple)):
        return any(_holds_tensor(v) for v in value)
    if isinstance(value, dict):
        return any(_holds_tensor(v) for v in value.values())
    return False


def _undo_stored_tensors(d: dict, old: dict[str, tuple[object, object]]) -> None:
    """Tensors a forward stored in a module's attributes (``self.features = h``, ``self.cache =
    [h]``, ``self.acts.append(h)``): under vmap dead batched tensors, which ``torch.save`` and
    ``deepcopy`` of the model then refuse. New attributes holding tensors are removed, replaced
    ones put back, lists and dicts filled in place given their contents back (same object)."""
    for k in [k for k in d if k[0] != "_"]:
        value = d[k]
        if not _holds_tensor(value):
            continue
        if k not in old:
            del d[k]
            continue
        original, contents = old[k]
        if value is not original:
            d[k] = original
        elif contents is not None:
            value.clear()
            (value.update if type(value) is dict else value.extend)(contents)


def parameter_aliases(model: nn.Module) -> dict[str, str]:
    """One name per (module, attribute) slot holding a parameter -> the parameter's canonical
    name in ``named_parameters()``. Tied weights (one tensor in two modules) need every slot set;
    a reused module (one module under two names) is one slot, listed once."""
    canonical = {id(p): n for n, p in model.named_parameters()}
    return {
        f"{prefix}.{attr}" if prefix else attr: canonical[id(p)]
        for prefix, owner in model.named_modules()  # each module once, under its first name
        for attr, p in owner.named_parameters(recurse=False)
    }


def batch_stat_buffers(model: nn.Module, skip: list[str]) -> dict[str, None]:
    """BatchNorm running statistics replaced by None: batch statistics, no in-place update."""
    found = {}
    for name, m in model.named_modules():  # each module once (see parameter_aliases)
        if isinstance(m, _BatchNorm) and name not in skip:
            for stat in BN_STATS:
                if getattr(m, stat, None) is not None:
                    found[f"{name}.{stat}" if name else stat] = None
    return found


def check_layers(model: nn.Module) -> None:
    """Refuse, when the learner is built, an ``nn.Embedding`` whose forward changes its own weight
    in place (``max_norm``: maml_ext never modifies the user's module, and the adapted tensors
    would be overwritten) or gives sparse gradients (``sparse=True``: the task-batched inner
    gradient is summed over tasks, which sparse tensors cannot be reshaped for)."""
    for name, m in model.named_modules():
        if not isinstance(m, nn.Embedding):
            continue
        where = f"model: nn.Embedding {name or type(model).__name__!r}"
        if m.max_norm is not None:
            raise ValueError(
                f"{where} has max_norm={m.max_norm}, which renormalises its weight in place on every "
                "forward (it would modify your module and the adapted weights); use max_norm=None, or "
                "renormalise out of place in your forward (e.g. F.embedding(x, w * torch.clamp(max_norm "
                "/ w.norm(dim=1, keepdim=True), max=1)))")
        if m.sparse and m.weight.requires_grad:
            raise ValueError(
                f"{where} has sparse=True: the inner loop needs dense gradients (MAML's meta-gradient is "
                "dense anyway); use sparse=False")


def padded_embedding_weights(model: nn.Module, aliases: dict[str, str]) -> dict[str, str]:
    """Canonical names of ``nn.Embedding`` weights with a ``padding_idx`` -> the module's name:
    vmap's embedding rule with batched weights and indices offsets the indices by task, so the
    padding row of every task but the first gets a gradient; adapted, they run per task."""
    return {aliases[f"{name}.weight" if name else "weight"]: name or type(model).__name__
            for name, m in model.named_modules()
            if isinstance(m, nn.Embedding) and m.padding_idx is not None and m.weight.requires_grad}


ATTENTION = (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer, nn.Transformer)


@contextlib.contextmanager
def _differentiable_attention() -> Iterator[None]:
    """While gradients are recorded: the math attention kernel (the only one with a double
    backward) and no fast path of ``nn.MultiheadAttention`` / ``nn.TransformerEncoderLayer`` in
    eval mode (kernels without a derivative; it checks ``requires_grad``, which the tensors
    ``vmap`` batches do not report)."""
    if not torch.is_grad_enabled():
        yield
        return
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


class FunctionalModel:
    """A model called with given parameters and buffers, per task or over a batch of tasks."""

    def __init__(self, model: nn.Module, output: Output, keep_stats: list[str], trace: bool | None = None) -> None:
        check_output(output)
        check_layers(model)
        if trace not in (None, True, False):
            raise ValueError(f"trace: expected None, True or False, got {trace!r}")
        # None: record the batched forward when every module's forward is torch.nn's or maml_ext's.
        self.recorder = Recorder(model) if trace or (trace is None and trusted(model)) else None
        # Attention may run: torch.nn's attention layers, or a forward of the user's own (it may
        # call F.scaled_dot_product_attention). Others skip the switch (~30 µs a call).
        self.attention = contextlib.nullcontext
        if not trusted(model) or any(isinstance(m, ATTENTION) for m in model.modules()):
            self.attention = _differentiable_attention
        self.model = model
        self.output = output
        self.aliases = parameter_aliases(model)
        self.no_stats = batch_stat_buffers(model, keep_stats)
        self.padded_embeddings = padded_embedding_weights(model, self.aliases)
        # (slot dict, attribute, canonical parameter name) for every parameter slot.
        self.param_slots = [(self._owner(alias)._parameters, alias.rpartition(".")[2], name)
                            for alias, name in self.aliases.items()]
        self.buffer_slots: dict[str, tuple[dict, str]] = {}  # filled on first use of each buffer name
        # Buffers a forward may update in place (not BatchNorm statistics, passed as None), and
        # tensor attributes a hook may replace: (slot dict, attribute, full name).
        self.own_buffers = [(owner._buffers, attr, f"{prefix}.{attr}" if prefix else attr)
                            for prefix, owner in model.named_modules()
                            for attr, value in owner._buffers.items() if value is not None]
        self.attr_slots = [(owner.__dict__, attr) for owner in model.modules()
                           for attr, value in vars(owner).items() if isinstance(value, Tensor)]
        self.module_dicts = [vars(owner) for owner in model.modules()]  # tensors a forward stores: undone
        self.vmap_ok: bool | None = None  # the last call's: None: not tried yet; False: per-task loop
        # The modules' train/eval modes in which vmap failed (dropout in training): per-task loop
        # there, vmap tried again in another (after ``model.eval()``).
        self.vmap_failed: set[tuple[bool, ...]] = set()

    def named_parameters(self) -> dict[str, Tensor]:
        """``dict(model.named_parameters())`` read from the slots found once: the tensors now in
        place, in the same order, without walking the module tree on every call."""
        return {name: slots[attr] for slots, attr, name in self.param_slots}

    def _owner(self, path: str) -> nn.Module:
        return self.model.get_submodule(path.rpartition(".")[0])

    def __call__(self, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor) -> Tensor:
        saved = [(slots, attr, slots[attr]) for slots, attr in self.attr_slots]
        before = [_attributes(d) for d in self.module_dicts]
        try:
            passed = {**self.no_stats, **buffers}
            for slots, attr, name in self.own_buffers:
                if name not in passed:  # a copy: an in-place update in forward leaves the module's as is
                    saved.append((slots, attr, slots[attr]))
                    slots[attr] = slots[attr].clone()
            for slots, attr, name in self.param_slots:
                saved.append((slots, attr, slots[attr]))
                slots[attr] = params[name]
            for key, value in passed.items():
                if key not in self.buffer_slots:
                    self.buffer_slots[key] = (self._owner(key)._buffers, key.rpartition(".")[2])
                slots, attr = self.buffer_slots[key]
                saved.append((slots, attr, slots[attr]))
                slots[attr] = value
            with self.attention():
                out = self.model(x)
        finally:
            for slots, attr, original in reversed(saved):  # reversed: a slot set twice ends as it was
                slots[attr] = original
            for d, old in zip(self.module_dicts, before):
                _undo_stored_tensors(d, old)
        return select_output(out, self.output)

    def over_tasks(
        self,
        adapted: dict[str, Tensor],
        frozen: dict[str, Tensor],
        batched: bool,
        make_buffers: Callable[[], tuple[dict[str, Tensor], int | None]],
        x: Tensor,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Outputs ``[T, N, ...]`` and the buffers used; ``adapted`` has a task dimension when
        ``batched``; ``make_buffers`` gives fresh buffers and their task dimension (None: shared)."""
        failure = None
        wrong = [m for n, m in self.padded_embeddings.items() if batched and n in adapted]
        if wrong:
            failure = (f"its batching rule gives a wrong gradient for the adapted nn.Embedding {wrong[0]!r} "
                       "with padding_idx")
        elif not self.vmap_failed or self._modes() not in self.vmap_failed:
            buffers, buffer_dim = make_buffers()
            # vmap gets one flat tuple of tensors: flattening nested dicts (pytree) on every call
            # was a sixth of a small model's meta-iteration.
            # Adapted after frozen: an adapted tensor wins a shared name, as in _call.
            names = (*frozen, *adapted, *buffers)
            dims = (None,) * len(frozen) + (0 if batched else None,) * len(adapted) + (buffer_dim,) * len(buffers)
            tensors = (x, *frozen.values(), *adapted.values(), *buffers.values())
            # Per-step BatchNorm statistics are updated in place: those calls are not recorded.
            recorder = self.recorder if self.recorder is not None and self.recorder.enabled and not buffers else None
            key = recorder.key(names, dims, tensors) if recorder is not None else None
            replay = recorder.graphs.get(key) if key is not None else None
            if replay is not None:
                recorder.replayed()
                return replay(*tensors), buffers

            n_params = len(frozen) + len(adapted)

            def flat_call(x: Tensor, *tensors: Tensor) -> Tensor:
                params = dict(zip(names[:n_params], tensors[:n_params]))
                return self(params, dict(zip(names[n_params:], tensors[n_params:])), x)

            batched_call = vmap(flat_call, in_dims=(0, *dims))
            if key is not None and recorder.record(key, batched_call, tensors):
                self.vmap_ok = True  # recorded from a vmap call that worked
                return recorder.graphs[key](*tensors), buffers
            try:
                out = batched_call(*tensors)
                self.vmap_ok = True
                return out, buffers
            except RuntimeError as exc:
                failure = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        buffers, buffer_dim = make_buffers()  # fresh: a failed vmap may have updated some in place
        outs = []
        for t in range(x.shape[0]):
            a = {n: p[t] for n, p in adapted.items()} if batched else adapted
            b = buffers if buffer_dim is None else {n: v[t] for n, v in buffers.items()}
            outs.append(self._call(a, frozen, b, x[t]))
        self.vmap_ok = False
        # Only now: had the loop failed too, its (the model's own) error would be the one raised.
        if failure is not None:
            first = not self.vmap_failed
            self.vmap_failed.add(self._modes())  # before warning: a warning raised as an error
            if first:
                warnings.warn(
                    f"maml_ext: vmap cannot batch {type(self.model).__name__} over tasks ({failure}); "
                    "running it as an exact per-task loop in its modules' present train/eval modes "
                    "(same results, slower)",
                    stacklevel=4,
                )
        return torch.stack(outs), buffers

    def _modes(self) -> tuple[bool, ...]:
        return tuple([m.training for m in self.model.modules()])

    def _call(self, adapted: dict[str, Tensor], frozen: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor) -> Tensor:
        return self({**frozen, **adapted}, buffers, x)

