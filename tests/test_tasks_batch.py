"""Sampled task batches are contiguous: the ops would otherwise copy every part on every call."""

import pytest
import torch

from maml_ext.tasks import TaskBatch
from maml_ext.tasks.memorization import build_sinusoid as build_memo_sinusoid
from maml_ext.tasks.sinusoid import build as build_sinusoid


@pytest.mark.parametrize("build", [build_sinusoid, build_memo_sinusoid], ids=["sinusoid", "memo_sinusoid"])
def test_sampled_parts_are_contiguous(build):
    batch = build().sample(7, 5, 9, torch.Generator().manual_seed(0))
    parts = (batch.x_support, batch.y_support, batch.x_query, batch.y_query)
    assert [tuple(p.shape[:2]) for p in parts] == [(7, 5), (7, 5), (7, 9), (7, 9)]
    assert all(p.is_contiguous() for p in parts)


def test_split_keeps_the_points_in_order():
    x = torch.randn(3, 8, 2)
    y = torch.randn(3, 8, 1)
    batch = TaskBatch.split(x, y, 3, {"code": torch.arange(3)})
    torch.testing.assert_close(torch.cat([batch.x_support, batch.x_query], 1), x, rtol=0, atol=0)
    torch.testing.assert_close(torch.cat([batch.y_support, batch.y_query], 1), y, rtol=0, atol=0)
    assert batch.info["code"].tolist() == [0, 1, 2]
