"""Non-mutually-exclusive task families (Yin et al. 2020, §6): tasks that one function solves
without the support set, so a meta-learner can memorise them instead of learning to adapt.

``memo_sinusoid``: y = A sin(x) + noise, and the input carries a one-hot task code next to x. In
meta-training the code names the amplitude (code c has amplitude ``amps[c]``, ``amps`` evenly
spaced over ``amplitude``), so reading the code solves every training task. ``exclusive=True`` is
the control: the code is drawn independently of the amplitude and says nothing. Held-out tasks
(``held_out``, used by the evaluation) have amplitudes drawn uniformly from the whole range and a
random code, as in the paper's code: only adaptation on the support set can find A.

``memo_glyphs``: 5-way glyph episodes (the ``glyphs`` plugin's data and protocol) whose
meta-training class-to-label assignment is fixed: the training classes are dealt once into N
groups, group g's classes always get label g, and an episode takes one class of each group
(:class:`FixedLabelEpisodes`), so a classifier of all training classes solves every training task
without its support set. ``exclusive=True`` is the control (random labels per episode); held-out
episodes always have random labels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from . import TaskBatch
from .episodes import Episodes

if TYPE_CHECKING:
    from maml_ext.datasets.fewshot import FewShot


class CodedSinusoid:
    """Sinusoids A·sin(x) with a one-hot task code in the input: x ``[T, K, 1 + codes]``.

    Args:
        codes: length of the one-hot code; training tasks use codes ``0..train_codes-1``.
        train_codes: how many codes (and amplitudes) meta-training draws from.
        amplitude: [low, high]; training amplitudes are ``linspace(low, high, codes)[:train_codes]``.
        x_range: x ~ U[x_range].
        noise: standard deviation of the Gaussian noise added to every y.
        exclusive: the mutually-exclusive control (code independent of the amplitude).
        held_out: this family is the evaluation one (continuous amplitudes, random codes).
    """

    loss = "mse"
    out_features = 1

    def __init__(
        self,
        codes: int = 20,
        train_codes: int = 16,
        amplitude: tuple[float, float] = (0.1, 4.0),
        x_range: tuple[float, float] = (-5.0, 5.0),
        noise: float = 0.1,
        exclusive: bool = False,
        held_out: bool = False,
    ) -> None:
        if not (isinstance(codes, int) and codes >= 1):
            raise ValueError(f"task.codes must be an integer >= 1, got {codes!r}")
        if not (isinstance(train_codes, int) and 1 <= train_codes <= codes):
            raise ValueError(f"task.train_codes must be an integer in [1, codes={codes}], got {train_codes!r}")
        for key, (lo, hi) in (("amplitude", amplitude), ("x_range", x_range)):
            if not lo <= hi:
                raise ValueError(f"task.{key} must be [low, high] with low <= high, got {[lo, hi]}")
        if not noise >= 0:
            raise ValueError(f"task.noise must be >= 0, got {noise!r}")
        self.codes, self.train_codes = codes, train_codes
        self.amplitude = (float(amplitude[0]), float(amplitude[1]))
        self.x_range = (float(x_range[0]), float(x_range[1]))
        self.noise = float(noise)
        self.exclusive = bool(exclusive)
        self.in_features = 1 + codes
        self.amps = torch.linspace(self.amplitude[0], self.amplitude[1], codes)
        self.held_out = None if held_out else CodedSinusoid(
            codes, train_codes, amplitude, x_range, noise, exclusive, held_out=True)
        self._evaluation = held_out

    def _task_params(self, num_tasks: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """Amplitude and code per task."""
        code = torch.randint(self.train_codes, (num_tasks,), generator=gen)
        if self._evaluation:
            lo, hi = self.amplitude
            return torch.rand(num_tasks, generator=gen) * (hi - lo) + lo, code
        if self.exclusive:  # the same amplitudes, but a code that does not name them
            return self.amps[torch.randint(self.train_codes, (num_tasks,), generator=gen)], code
        return self.amps[code], code

    def sample(self, num_tasks: int, k_support: int, k_query: int, generator: torch.Generator) -> TaskBatch:
        amp, code = self._task_params(num_tasks, generator)
        k = k_support + k_query
        lo, hi = self.x_range
        x = torch.rand((num_tasks, k, 1), generator=generator) * (hi - lo) + lo
        y = amp[:, None, None] * torch.sin(x) + self.noise * torch.randn((num_tasks, k, 1), generator=generator)
        onehot = torch.nn.functional.one_hot(code, self.codes).to(x.dtype)
        inputs = torch.cat([x, onehot[:, None, :].expand(num_tasks, k, self.codes)], dim=2)
        info = {"amplitude": amp, "code": code}
        return TaskBatch.split(inputs, y, k_support, info)


def build_sinusoid(
    codes: int = 20,
    train_codes: int = 16,
    amplitude: tuple[float, float] = (0.1, 4.0),
    x_range: tuple[float, float] = (-5.0, 5.0),
    noise: float = 0.1,
    exclusive: bool = False,
) -> CodedSinusoid:
    """Entry point ``maml_ext.tasks: memo_sinusoid`` (defaults: the paper's code, 20 codes, 16 in training)."""
    return CodedSinusoid(int(codes), int(train_codes), tuple(amplitude), tuple(x_range), float(noise), bool(exclusive))


class FixedLabelEpisodes(Episodes):
    """N-way episodes with one fixed label per class: a permutation seeded by ``seed`` deals the
    classes into ``n_way`` groups, and every episode takes one class of each group, group g's
    class at label g."""

    def __init__(self, inputs: Tensor, labels: Tensor, n_way: int, seed: int = 0) -> None:
        super().__init__(inputs, labels, n_way)
        order = torch.randperm(len(self._classes), generator=torch.Generator().manual_seed(seed))
        self.group = torch.empty(len(self._classes), dtype=torch.long)
        self.group[order] = torch.arange(len(self._classes)) % n_way

    def pick_classes(self, num_tasks: int, eligible: Tensor, generator: torch.Generator) -> Tensor:
        groups = self.group[eligible]
        keys = torch.rand(num_tasks, len(eligible), generator=generator)
        picks = []
        for g in range(self.n_way):  # the eligible class of group g with the largest random key
            members = groups == g
            if not members.any():
                raise ValueError(f"no class of label group {g} has enough examples for the episode")
            picks.append(eligible[keys.masked_fill(~members, -1.0).argmax(1)])
        return torch.stack(picks, 1)


def build_glyphs(
    root: str = "data/glyphs", n_way: int = 5, image_size: int = 28, exclusive: bool = False, seed: int = 1,
    train_classes: int = 0, eval_split: str = "test",
) -> FewShot:
    """Entry point ``maml_ext.tasks: memo_glyphs``: the ``glyphs`` family (Omniglot's split and
    rotations) with a fixed class-to-label assignment in meta-training unless ``exclusive``.
    ``train_classes``: meta-train on that many training classes only (a subset drawn with
    ``seed``, the same for the control; 0: all): fewer classes are memorised sooner. Held-out
    episodes use every class of ``eval_split``: "test", or "val" (the validation classes, disjoint
    from the test classes) to choose settings without the test episodes."""
    from maml_ext.datasets import fewshot  # the image stack is only needed for this family

    if isinstance(train_classes, bool) or not isinstance(train_classes, int) or train_classes < 0:
        raise ValueError(f"task.train_classes must be an integer >= 0 (0: all), got {train_classes!r}")
    if eval_split not in fewshot.EVAL_SPLITS:  # before the images are loaded
        raise ValueError(f"task.eval_split must be one of {fewshot.EVAL_SPLITS}, got {eval_split!r}")
    family = fewshot.build_glyphs(root, int(n_way), int(image_size), eval_split=eval_split, seed=int(seed))
    inputs, labels = family.episodes.inputs, torch.from_numpy(np.asarray(family.split.labels))
    if train_classes:
        classes = torch.unique(labels)
        if not n_way <= train_classes <= len(classes):
            raise ValueError(f"task.train_classes must be 0 or in [n_way={n_way}, {len(classes)}] "
                             f"(the training classes), got {train_classes}")
        keep = classes[torch.randperm(len(classes), generator=torch.Generator().manual_seed(int(seed)))[:train_classes]]
        chosen = torch.isin(labels, keep)
        inputs, labels = inputs[chosen], labels[chosen]
    if exclusive:
        family.episodes = Episodes(inputs, labels, int(n_way))
    else:
        family.episodes = FixedLabelEpisodes(inputs, labels, int(n_way), seed=int(seed))
    return family
