"""When a model may run in the fused MLP op: a declared spec, or a plain ``nn.Sequential`` MLP
detected automatically; never a model the op would compute differently."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

import torch
from torch import nn
from torch.nn.modules import module as module_globals

from maml_ext.models import FusedMLPSpec, fused_spec

# Exact types only: a subclass may override forward and compute something else.
FUSABLE_ACTIVATIONS: dict[type[nn.Module], str] = {nn.ReLU: "relu", nn.Tanh: "tanh"}
FUSED_DTYPES = (torch.float32, torch.float64)
HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                "_global_backward_pre_hooks")


def plain_mlp_spec(model: nn.Module) -> FusedMLPSpec | None:
    """The spec of an ``nn.Sequential`` (exactly that type) of ``nn.Linear`` layers with bias
    separated by one kind of fusable activation, ending in a Linear; None for anything else
    (a lone Linear too: there is no inner loop to fuse worth the detection)."""
    spec = layers_spec(model) if type(model) is nn.Sequential else None
    return spec if spec is not None and spec.activation else None


def layers_spec(model: nn.Sequential) -> FusedMLPSpec | None:
    """What the layers of a Sequential compute, as a spec (None: not a plain MLP; activation ""
    for a single Linear, which has no hidden layer)."""
    if len(model) % 2 == 0:
        return None
    layers = list(model)
    linears, activations = layers[0::2], layers[1::2]
    if any(type(m) is not nn.Linear or m.bias is None for m in linears):
        return None
    kinds = {type(m) for m in activations}
    if len(kinds) > 1 or not kinds <= FUSABLE_ACTIVATIONS.keys():
        return None
    if any(a.out_features != b.in_features for a, b in zip(linears[:-1], linears[1:])):
        return None
    names = tuple(f"{i}.{kind}" for i in range(0, len(layers), 2) for kind in ("weight", "bias"))
    return FusedMLPSpec(FUSABLE_ACTIVATIONS[kinds.pop()] if kinds else "", names)


def model_spec(model: nn.Module) -> FusedMLPSpec | None:
    """A declared spec (``fused_mlp_spec()``), else an automatically detected plain MLP's; for
    ``torch.compile(model)`` the compiled module's, its parameter names under ``_orig_mod.``
    (the compiled forward computes the module's function, which the op computes in one call)."""
    inner = _compiled_module(model)
    if inner is not None:
        spec = model_spec(inner)
        return None if spec is None else replace(spec, param_names=tuple(f"_orig_mod.{n}" for n in spec.param_names))
    return fused_spec(model) or plain_mlp_spec(model)


def _compiled_module(model: nn.Module) -> nn.Module | None:
    """The module ``torch.compile`` wrapped in ``model`` (an ``OptimizedModule``), else None."""
    inner = getattr(model, "_orig_mod", None)
    return inner if type(model).__name__ == "OptimizedModule" and isinstance(inner, nn.Module) else None


def unfusable_reasons(model: nn.Module, spec: FusedMLPSpec | None) -> list[str]:
    """Why the op would compute another function than the module (empty: it would not)."""
    if spec is None:
        return ["the model is not a plain MLP (no fused MLP spec declared or detected)"]
    named = list(model.named_parameters())
    checks = (
        ("a parameter or module is shared or reused (the op would treat it as separate layers)",
         len(list(model.named_parameters(remove_duplicate=False))) != len(named)
         or len(list(model.named_modules(remove_duplicate=False))) != len(list(model.named_modules()))),
        ("the spec does not list every parameter", sorted(spec.param_names) != sorted(n for n, _ in named)),
        # A declared spec of a Sequential (e.g. our MLP with a layer since replaced) must be its layers'.
        ("the declared spec does not match the layers", isinstance(model, nn.Sequential) and not _same(layers_spec(model), spec)),
        ("frozen parameters (requires_grad=False)", any(not p.requires_grad for _, p in named)),
        ("parameters neither float32 nor float64 (the op's dtypes; float16 runs the generic path)",
         any(p.dtype not in FUSED_DTYPES for _, p in named)),
        ("module hooks", any(getattr(m, h, None) for m in model.modules() for h in HOOKS)
         or any(getattr(module_globals, h, None) for h in GLOBAL_HOOKS)),
    )
    return [why for why, bad in checks if bad]


def choose_spec(model: nn.Module, fused: bool | None, learner_reasons: Iterable[tuple[str, bool]] = ()) -> FusedMLPSpec | None:
    """The spec a learner runs the fused op with, or None for its generic path. ``fused``: None
    (whenever possible), True (required: a ValueError names every reason it is not possible) or
    False; ``learner_reasons``: (why, applies) pairs of the learner's own options."""
    spec = model_spec(model)
    reasons = unfusable_reasons(model, spec) + [why for why, applies in learner_reasons if applies]
    if fused and reasons:
        raise ValueError(f"fused=True is not possible: {'; '.join(reasons)}")
    return None if (reasons or fused is False) else spec


def _same(layers: FusedMLPSpec | None, declared: FusedMLPSpec) -> bool:
    """The layers compute the declared MLP (a single Linear, any declared activation)."""
    return (layers is not None and layers.param_names == declared.param_names
            and layers.activation in ("", declared.activation))
