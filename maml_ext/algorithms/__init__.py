r"""Meta-learning algorithms, selectable by name.

=============  ===========================================================================
name           what it is
=============  ===========================================================================
maml           MAML, exact second-order meta-gradient
fomaml         first-order MAML
metasgd        Meta-SGD: MAML with a learned step size per parameter entry
anil           ANIL: MAML adapting only the head (``adapt``: default the last layer)
maml++         MAML with MAML++ options on: per-layer per-step learned α (LSLR), multi-step
               loss, derivative-order annealing (set to 0 to turn each off) and per-step
               BatchNorm running statistics
reptile        Reptile (first-order, no graph through the inner loop)
pretrain       "pretrain on all tasks, then fine-tune": the paper's baseline
bmaml          Bayesian MAML: M SVGD particles per task (``particles``), Chaser loss
               (``objective="chaser"``) or the BMAML likelihood loss (``"likelihood"``)
platipus       PLATIPUS: learned Gaussian prior over initialisations, ELBO meta-objective,
               ``test_samples`` sampled initialisations adapted at test time
mr-maml        MR-MAML(W) (alias mr_maml): MAML with stochastic weights and a β-weighted KL
               meta-regulariser against memorisation
mr-maml-a      MR-MAML(A) (alias mr_maml_a): a stochastic, meta-learned encoder N(μ(x), σ(x)²)
               and a head adapted on its samples, β-weighted KL on the query encodings
imaml          iMAML: proximal inner problem, implicit meta-gradient by conjugate gradient on
               Hessian-vector products (memory independent of the inner steps)
=============  ===========================================================================

BMAML and PLATIPUS are :class:`~maml_ext.algorithms.bayes.RowLearner` subclasses: their
``sample_predictions`` gives every particle's / sample's outputs, which the evaluation turns into
predictive distributions.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ._checks import FirstLayer
from .base import LossFn, MetaLearner, Params, task_loss
from .bayes import RowLearner
from .bmaml import BMAML
from .clone import TaskClone
from .imaml import IMAML
from .inner import Adam, InnerSGD, Momentum
from .maml import MAML, msl_weights
from .mr_maml import MRMAML
from .mr_maml_a import MRMAMLA
from .platipus import PLATIPUS
from .pretrain import Pretrain
from .reptile import Reptile

__all__ = [
    "ALGORITHMS", "Adam", "BMAML", "FirstLayer", "IMAML", "InnerSGD", "LossFn", "MAML", "MRMAML", "MRMAMLA", "MetaLearner", "Momentum",
    "PLATIPUS", "Params", "Pretrain", "Reptile", "RowLearner", "TaskClone", "build_algorithm", "msl_weights",
    "task_loss",
]


def _head(model: nn.Module) -> list[str]:
    """Name of the last submodule that owns parameters (ANIL's default head)."""
    owners = [name for name, m in model.named_modules() if name and list(m.parameters(recurse=False))]
    if not owners:
        raise ValueError("ANIL needs a model with at least one named submodule holding parameters")
    return [owners[-1]]


ALGORITHMS: dict[str, tuple[type[MetaLearner], dict[str, Any]]] = {
    "maml": (MAML, {}),
    "fomaml": (MAML, {"first_order": True}),
    "metasgd": (MAML, {"learn_lr": "elementwise"}),
    "anil": (MAML, {}),
    "maml++": (MAML, {"learn_lr": "per_step", "multi_step_loss": 1000, "second_order_after": 1000, "per_step_bn": True,
                          "per_step_bn_weights": True}),
    "reptile": (Reptile, {}),
    "pretrain": (Pretrain, {}),
    "bmaml": (BMAML, {}),
    "platipus": (PLATIPUS, {}),
    "mr-maml": (MRMAML, {}), "mr_maml": (MRMAML, {}),
    "mr-maml-a": (MRMAMLA, {}), "mr_maml_a": (MRMAMLA, {}),
    "imaml": (IMAML, {}),
}


def build_algorithm(name: str, model: nn.Module, **options: Any) -> MetaLearner:
    """Wrap ``model`` in the algorithm ``name``; ``options`` override its defaults."""
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; available: {', '.join(sorted(ALGORITHMS))}")
    cls, defaults = ALGORITHMS[name]
    kwargs = {**defaults, **options}
    if name == "anil" and kwargs.get("adapt") is None:
        kwargs["adapt"] = _head(model)
    try:
        return cls(model, **kwargs)
    except TypeError as exc:
        raise ValueError(f"algorithm {name!r} rejected its options {sorted(options)}: {exc}") from exc
