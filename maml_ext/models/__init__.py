"""Built-in model plugins and the contract a model plugin may declare.

A model factory is called as ``build(in_features=..., out_features=..., **options)`` and returns an
``nn.Module``. A module that is a plain MLP (Linear layers separated by one elementwise activation)
may expose ``fused_mlp_spec() -> FusedMLPSpec``; MAML, FOMAML and Meta-SGD then run the whole
inner loop and meta-gradient in the fused ``maml_ext.ops.mlp_maml`` op instead of the generic path.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FusedMLPSpec:
    """How to hand a module to ``ops.mlp_maml``.

    ``param_names`` lists the module's parameters in the op's order ``[W1, b1, ..., WL, bL]``
    (``nn.Linear`` layout); ``activation`` is the op's activation name.
    """

    activation: str
    param_names: tuple[str, ...]


def fused_spec(module: object) -> FusedMLPSpec | None:
    """The module's fused-MLP declaration, or None when it has none."""
    declare = getattr(module, "fused_mlp_spec", None)
    return declare() if callable(declare) else None
