"""LeanFusedAdam and a setting switched by hand mid-run (``param_groups[0]['amsgrad'] = True``):
the gathered plain lists must not keep stepping as if nothing changed. Bitwise against
torch.optim.Adam(fused=True), as the other LeanFusedAdam tests; both modes (with the extension the
plain step is _C.FusedAdamLists, without it torch._fused_adam_ from Python)."""

import pytest
import torch
from torch import nn

from maml_ext.train import optim


def twins():
    torch.manual_seed(0)
    params = [nn.Parameter(torch.randn(4, 3, dtype=torch.float64)), nn.Parameter(torch.randn(3, dtype=torch.float64))]
    copies = [nn.Parameter(p.detach().clone()) for p in params]
    return (params, optim.adam(params, 1e-2)), (copies, torch.optim.Adam(copies, lr=1e-2, fused=True))


def step(params, opt, seed):
    g = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
    opt.step()


def assert_same(ours, theirs):
    for a, b in zip(ours[0], theirs[0], strict=True):
        assert torch.equal(a, b)
    assert str(ours[1].state_dict()) == str(theirs[1].state_dict())


def test_amsgrad_switched_on_after_steps_is_refused_clearly_before_any_work():
    ours, theirs = twins()
    assert isinstance(ours[1], optim.LeanFusedAdam)
    for i in range(3):
        step(*ours, i)
        step(*theirs, i)
    for _, opt in (ours, theirs):
        opt.param_groups[0]["amsgrad"] = True
    with pytest.raises(KeyError, match="max_exp_avg_sq"):  # torch's own Adam: no state to continue from
        step(*theirs, 3)
    before = [p.detach().clone() for p in ours[0]]
    assert ours[1].fused_state(ours[0]) is None  # nor is the fused update handed the plain state
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['amsgrad'\]: switched on after steps .*state.clear\(\)"):
        step(*ours, 3)
    assert all(torch.equal(p, b) for p, b in zip(ours[0], before))


@pytest.mark.parametrize("when", ["before the first step", "with the state cleared"])
def test_amsgrad_switched_on_where_torch_allows_it_steps_as_torch(when):
    ours, theirs = twins()
    for i in range(6):
        if i == (0 if when == "before the first step" else 3):
            for _, opt in (ours, theirs):
                opt.param_groups[0]["amsgrad"] = True
                if when == "with the state cleared":
                    opt.state.clear()
        step(*ours, i)
        step(*theirs, i)
        assert_same(ours, theirs)
    assert "max_exp_avg_sq" in ours[1].state[ours[0][0]]


def test_amsgrad_switched_off_mid_run_steps_as_torch():
    ours, theirs = twins()
    for _, opt in (ours, theirs):
        opt.param_groups[0]["amsgrad"] = True
    for i in range(6):
        if i == 3:
            for _, opt in (ours, theirs):
                opt.param_groups[0]["amsgrad"] = False
        step(*ours, i)
        step(*theirs, i)
        assert_same(ours, theirs)
