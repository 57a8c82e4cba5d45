"""Reptile with one inner step is joint training: the library says so."""

import pytest

from maml_ext.algorithms import Reptile
from maml_ext.models.mlp import build


def test_reptile_with_one_step_warns_that_it_is_pretraining():
    with pytest.warns(UserWarning, match="Reptile with steps=1 is joint training"):
        Reptile(build(1, 1, hidden=(8,)), lr=0.01, steps=1)
    Reptile(build(1, 1, hidden=(8,)), lr=0.01, steps=2)  # filterwarnings=error: no warning here
