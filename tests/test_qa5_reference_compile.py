"""Every reference op under torch.compile (a user benchmarks the fused ops against them): the
values and the gradients through the outputs equal eager in float64. The ops that call
torch.autograd.grad inside run eagerly there: traced, mlp_hvp raised and the second-order terms of
mlp_maml, the SVGD steps and the BMAML chase silently vanished. The reference runs the same with
and without the extension (both modes)."""

import pytest
import torch

from maml_ext import reference as R

DT = torch.float64
T, K, D, H, M = 2, 3, 2, 4, 2


def data():
    g = torch.Generator().manual_seed(0)
    rand = lambda *s: torch.randn(*s, generator=g, dtype=DT)  # noqa: E731
    base = [rand(H, D), rand(H), rand(1, H), rand(1)]
    xy = dict(x=rand(T, K, D), y=rand(T, K, 1), xq=rand(T, K, D), yq=rand(T, K, 1))
    per_task = [p.expand(T, *p.shape).clone() + 0.1 * rand(T, *p.shape) for p in base]
    particles = [p.expand(M, *p.shape).clone() + 0.1 * rand(M, *p.shape) for p in base]
    return base, xy, per_task, [rand(*p.shape) for p in per_task], particles


def rows(t):
    return t.repeat_interleave(M, 0)


# name -> (which inputs are differentiated, the call on them)
CASES = {
    "mlp_forward": ("base", lambda p, d: R.mlp_forward(p, d["x"], "tanh")),
    "mlp_task_losses": ("base", lambda p, d: R.mlp_task_losses(p, R.mlp_forward(p, d["x"], "relu"), d["y"], "mse")),
    "inner_update": ("base", lambda p, d: R.inner_update(p, [q * q for q in p], 0.1)),
    "mlp_hvp": ("per_task", lambda p, d: R.mlp_hvp(p, d["x"], d["y"], d["direction"])),
    "mlp_hvp direction": ("direction", lambda v, d: R.mlp_hvp(d["per_task"], d["x"], d["y"], v)),
    "mlp_hvp no direction": ("per_task", lambda p, d: R.mlp_hvp(p, d["x"], d["y"])),
    "mlp_maml": ("base", lambda p, d: R.mlp_maml(p, d["x"], d["y"], d["xq"], d["yq"], lr=0.1, steps=2)),
    "mlp_maml learned lr": ("lrs", lambda a, d: R.mlp_maml(d["base"], d["x"], d["y"], d["xq"], d["yq"], lr=a, steps=2)),
    "mlp_maml_grad": ("none", lambda _, d: R.mlp_maml_grad(d["base"], d["x"], d["y"], d["xq"], d["yq"], lr=0.1, steps=2)),
    "mlp_maml_eval": ("none", lambda _, d: R.mlp_maml_eval(d["base"], d["x"], d["y"], d["xq"], d["yq"], lr=0.1, steps=2)),
    "svgd_step": ("sets", lambda s, d: R.svgd_step(s, [q.sin() for q in s], -1.0, 0.1)),
    "bmaml_svgd_steps": ("sets", lambda s, d: R.bmaml_svgd_steps(s, rows(d["x"]), rows(d["y"]), 2, 0.1, "relu", "mse",
                                                                  False)),
    "mlp_bmaml_chaser": ("none", lambda _, d: R.mlp_bmaml_chaser(d["particles"], d["x"], d["y"], d["xq"], d["yq"],
                                                                 steps=1, leader_steps=1, lr=0.1)),
}


def inputs(which):
    base, xy, per_task, direction, particles = data()
    d = dict(xy, base=base, per_task=per_task, direction=direction, particles=particles,
             lrs=[torch.full((), 0.1, dtype=DT) for _ in base],
             sets=[p.expand(T, *p.shape).clone() for p in particles])
    leaves = [t.requires_grad_() for t in d[which]] if which != "none" else []
    if leaves:
        d[which] = leaves
    return leaves, d


def flat(out):
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in out for t in flat(o)] if isinstance(out, (list, tuple)) else []


def run(name, compiled):
    which, call = CASES[name]
    leaves, d = inputs(which)
    fn = torch.compile(call, backend="aot_eager", fullgraph=False) if compiled else call
    outs = flat(fn(leaves, d))
    tracked = [o for o in outs if o.requires_grad]
    grads = []
    if tracked:  # a weighted sum of every output that carries a graph, differentiated in full
        total = sum((i + 1.5) * o.sum() for i, o in enumerate(tracked))
        grads = torch.autograd.grad(total, leaves, allow_unused=True)
    return [o.detach() for o in outs], [g for g in grads if g is not None]


@pytest.mark.parametrize("name", sorted(CASES))
def test_reference_op_under_torch_compile_equals_eager(name):
    torch._dynamo.reset()
    values, grads = run(name, compiled=False)
    c_values, c_grads = run(name, compiled=True)
    assert len(values) == len(c_values) and len(grads) == len(c_grads)
    for a, b in zip(values + grads, c_values + c_grads):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
    if CASES[name][0] not in ("none",) and name not in ("mlp_hvp no direction",):
        assert grads, "the case must differentiate through the outputs"


def test_compiled_first_call_in_a_fresh_process_runs_the_op_eagerly():
    """The eager wrapper is made at the first call (importing maml_ext must not import torch._dynamo):
    a first call that is traced by torch.compile must still meet the disabled op."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import sys, torch
        from maml_ext import reference as R
        assert "torch._dynamo" not in sys.modules, "importing maml_ext imported torch._dynamo"
        g = torch.Generator().manual_seed(0)
        p = [torch.randn(*s, generator=g, dtype=torch.float64) for s in [(4, 2), (4,), (1, 4), (1,)]]
        x, y, xq, yq = (torch.randn(2, 3, d, generator=g, dtype=torch.float64) for d in (2, 1, 2, 1))
        leaves = [t.clone().requires_grad_() for t in p]
        f = lambda q: R.mlp_maml(q, x, y, xq, yq, lr=0.1, steps=2)
        out = torch.compile(f, backend="aot_eager")(leaves)
        c = torch.autograd.grad(out[0].sum(), leaves)  # (query losses, adapted parameters)
        e = torch.autograd.grad(f(leaves)[0].sum(), leaves)
        assert all(torch.allclose(a, b, rtol=1e-12, atol=1e-12) for a, b in zip(c, e))
        v = [torch.randn(2, *t.shape, generator=g, dtype=torch.float64) for t in p]
        pt = [t.expand(2, *t.shape).clone() for t in p]
        hc = torch.compile(lambda: R.mlp_hvp(pt, x, y, v), backend="aot_eager")()
        he = R.mlp_hvp(pt, x, y, v)
        flat = lambda o: [t for x in o for t in flat(x)] if isinstance(o, (list, tuple)) else [o]
        assert len(flat(hc)) == len(flat(he)) > 0
        assert all(torch.allclose(a, b, rtol=1e-12, atol=1e-12) for a, b in zip(flat(hc), flat(he)))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
