"""A user's own ``nn.Sequential`` MLP: the automatically detected fused path against the generic
(vmap) path, same model, same batch, same run; and (``--loop``) the training loop's whole
meta-iteration against the bare ``mlp_maml_grad`` call, with its parts: before (meta_grad, then
the lean fused Adam) and after (one ``mlp_maml_adam_`` call, ``MAML.meta_step_adam_``).

    python benchmarks/bench_front.py [--threads 1] [--reps 30]
    python benchmarks/bench_front.py --loop [--rounds 7] [--seconds 0.5]
    python benchmarks/bench_front.py --floor [--rounds 7] [--seconds 0.5]

Default: one line per configuration, median wall time of one meta-iteration (meta_loss +
backward). ``--loop``: median CPU µs per call over alternating rounds, paper sinusoid config
(1-40-40-1, 25 tasks, K=10, 1 step, second order, float32), with the literal path
``zero_grad(); meta_loss(batch).backward(); step()`` and its parts. ``--floor``: the literal path
around an op that does almost nothing (what torch's engine and the front end cost alone).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
from torch import nn

from maml_ext.algorithms import MAML
from maml_ext.tasks.sinusoid import Sinusoid

CONFIGS = (  # hidden width, tasks, inner steps, α (the paper's sinusoid config; the large one)
    (40, 25, 1, 0.01),
    (256, 100, 5, 0.001),
)


def median_ms(learner: MAML, batch, reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        learner.zero_grad(set_to_none=True)
        learner.meta_loss(batch).backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _cpu_us(fn, seconds: float) -> float:
    calls, start, wall = 0, time.process_time(), time.perf_counter()
    while time.perf_counter() - wall < seconds or calls < 3:
        fn()
        calls += 1
    return (time.process_time() - start) / calls * 1e6


def _denormals(opt) -> str:
    """How many of Adam's first-moment entries are denormal (each costs a microcode assist)."""
    moments = [s["exp_avg"] for s in opt.state.values()]
    tiny = torch.finfo(moments[0].dtype).tiny
    count = sum(int(((m != 0) & (m.abs() < tiny)).sum()) for m in moments)
    return f"{count} of {sum(m.numel() for m in moments)}"


def literal_path(learner: MAML, opt, batch, backward: bool = True, step: bool = True):
    """The issue's definition: zero_grad, meta_loss(batch).backward(), Adam; or its first parts."""
    def run():
        opt.zero_grad(set_to_none=True)
        loss = learner.meta_loss(batch)
        if backward:
            loss.backward()
        if step:
            opt.step()
    return run


def loop(rounds: int, seconds: float) -> None:
    """The training loop's meta-iteration against the bare op, same run: before (SupervisedStep's
    separate steps: zero_grad, meta_grad, the finiteness check, the lean fused Adam) and after
    (one mlp_maml_adam_ call, SupervisedStep._fused_step), and the parts of the difference."""
    from maml_ext import ops
    from maml_ext.models import mlp as mlp_plugin
    from maml_ext.train import loop as train_loop
    from maml_ext.train import optim

    batch = Sinusoid().sample(25, 10, 10, torch.Generator().manual_seed(0))

    def setup():
        """A learner and its optimizer, Adam's state created by a first step. Each path below
        trains its own copy: Adam's moments evolve with the path's arithmetic (the fused step
        flushes denormals, which would otherwise also speed up the other paths' steps)."""
        torch.manual_seed(0)
        learner = MAML(mlp_plugin.build(1, 1, hidden=(40, 40)), lr=0.01, steps=1)
        opt = optim.adam(learner.parameters(), 1e-3)
        learner.meta_grad(batch)
        opt.step()
        opt.zero_grad()
        return learner, opt, list(learner.parameters())  # listed once, as SupervisedStep does

    separate, fused, flushed_state = setup(), setup(), setup()
    params = [p.detach() for p in separate[0].model.parameters()]

    def bare():
        return ops.mlp_maml_grad(params, batch.x_support, batch.y_support, batch.x_query, batch.y_query, lr=0.01)

    def iteration(check=None, step=True):
        learner, opt, listed = separate

        def run():
            opt.zero_grad(set_to_none=True)
            loss = float(learner.meta_grad(batch))
            if check is not None:
                check(loss, listed)
            if step:
                opt.step()
        return run

    def bare_and_adam(state=separate):  # torch's fused Adam kernel right after the meta-gradient kernel
        learner, opt, _ = state
        own = [p.detach() for p in learner._fused_call.params()]

        def run():
            _, grads, _ = ops.mlp_maml_grad(own, batch.x_support, batch.y_support, batch.x_query,
                                            batch.y_query, lr=0.01)
            for p, g in zip(learner._fused_call.params(), grads):
                p.grad = g
            opt.step()
        return run

    def fused_step():  # the training loop's step now: one mlp_maml_adam_ call (SupervisedStep._fused_step)
        learner, opt, _ = fused
        opt.zero_grad(set_to_none=True)
        loss, applied = learner.meta_step_adam_(batch, opt)
        if not (applied and math.isfinite(loss)):
            raise RuntimeError("non-finite")

    raw_state, wrapped_state = setup(), setup()
    weight = separate[0]._fused_call.mean_weight(25, params[0])

    def raw_grad():  # the op alone: no Python wrapper
        torch.ops.maml_ext.mlp_maml_grad(params, [], 0.01, False, batch.x_support, batch.y_support, None,
                                         batch.x_query, batch.y_query, None, 1, "relu", "mse", False, weight)

    def adam_args(state):  # gathered once: these rows time the call alone
        learner, opt, _ = state
        own = learner._fused_call.params()
        return own, opt.fused_state(own)

    raw_params, raw_adam_state = adam_args(raw_state)
    wrapped_params, wrapped_adam_state = adam_args(wrapped_state)

    def raw_adam():  # mlp_maml_adam_ alone: no Python wrapper, no MAML glue
        adam = raw_adam_state
        with torch.no_grad():
            torch.ops.maml_ext.mlp_maml_adam_(
                raw_params, batch.x_support, batch.y_support, None, batch.x_query, batch.y_query, None, 0.01, 1,
                "relu", "mse", False, weight, adam.exp_avgs, adam.exp_avg_sqs, adam.step_counts, 1e-3, 0.9, 0.999,
                0.0, 1e-8, False, math.inf, False)

    def wrapped_adam():  # through the Python wrapper ops.mlp_maml_adam_
        adam = wrapped_adam_state
        ops.mlp_maml_adam_(wrapped_params, batch.x_support, batch.y_support, batch.x_query, batch.y_query, lr=0.01,
                           loss_weight=weight, exp_avgs=adam.exp_avgs, exp_avg_sqs=adam.exp_avg_sqs,
                           step_counts=adam.step_counts, adam_lr=1e-3)

    backward_state = setup()
    torch.manual_seed(0)
    torch_learner = MAML(mlp_plugin.build(1, 1, hidden=(40, 40)), lr=0.01, steps=1)
    torch_adam = torch.optim.Adam(torch_learner.parameters(), lr=1e-3, fused=True)

    def flushed(fn):  # the same with denormals flushed to zero for the whole thread
        def run():
            torch.set_flush_denormal(True)
            try:
                fn()
            finally:
                torch.set_flush_denormal(False)
        return run

    leaf = torch.ones((), requires_grad=True)

    def bare_and_trivial_backward():  # the floor of any path through `.backward()`: a one-node graph
        bare()
        leaf.grad = None
        (leaf * 2.0).backward()

    fns = {
        "bare `ops.mlp_maml_grad`": bare,
        "floor: bare op + a one-node `.backward()` (`(leaf * 2.0).backward()`, no optimizer)": bare_and_trivial_backward,
        "`zero_grad` + `meta_grad`": iteration(step=False),
        "bare op + lean Adam step": bare_and_adam(),
        "bare op + lean Adam step, denormals flushed (`torch.set_flush_denormal(True)`, own state)":
            flushed(bare_and_adam(flushed_state)),
        "meta-iteration, before: `zero_grad` + `meta_grad` + lean Adam": iteration(),
        "meta-iteration, after: `zero_grad` + `meta_step_adam_` (one `mlp_maml_adam_` call, own state)": fused_step,
        "part: `torch.ops.maml_ext.mlp_maml_grad` alone (no Python wrapper)": raw_grad,
        "part: `torch.ops.maml_ext.mlp_maml_adam_` alone (no wrapper, no MAML glue, own state)": raw_adam,
        "part: `ops.mlp_maml_adam_` (the Python wrapper, own state)": wrapped_adam,
        "training loop's step, before: + `loop.check_finite` (AMP check)": iteration(train_loop.check_finite),
        "`zero_grad` + `meta_loss(batch).backward()` + lean Adam (own state)":
            literal_path(*backward_state[:2], batch),
        "`zero_grad` + `meta_loss(batch).backward()` + `torch.optim.Adam(fused=True)` (own state)":
            literal_path(torch_learner, torch_adam, batch),
        "literal path, part: `zero_grad` + `meta_loss(batch)` (no backward, no step)":
            literal_path(*backward_state[:2], batch, backward=False, step=False),
        "literal path, part: `zero_grad` + `meta_loss(batch).backward()` (no step)":
            literal_path(*backward_state[:2], batch, step=False),
    }
    assert fused[0].meta_step_adam_(batch, fused[1]) is not None, "the fused step was declined"
    for fn in fns.values():  # warm-up
        for _ in range(3):
            fn()
    samples = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            samples[k].append(_cpu_us(fn, seconds))
    bare_us = statistics.median(samples["bare `ops.mlp_maml_grad`"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}; median of {rounds} alternating rounds of {seconds} s; "
          f"Adam steps taken: {int(separate[1].state[separate[2][0]]['step'])} (separate), "
          f"{int(fused[1].state[fused[2][0]]['step'])} (fused); denormal first moments: {_denormals(separate[1])} "
          f"(separate), {_denormals(fused[1])} (fused)\n")
    print("| what | CPU µs | vs bare op |\n|---|---|---|")
    for k, v in samples.items():
        m = statistics.median(v)
        print(f"| {k} | {m:.1f} | {m / bare_us:.2f}x |")


def floor(rounds: int, seconds: float) -> None:
    """The literal path around an op that does almost nothing (a 1-1-1 MLP, one task, one example
    each): what torch's autograd engine, the optimizer step and the Python front end cost alone."""
    from maml_ext import ops
    from maml_ext.models import mlp as mlp_plugin
    from maml_ext.train import optim

    batch = Sinusoid().sample(1, 1, 1, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    learner = MAML(mlp_plugin.build(1, 1, hidden=(1, 1)), lr=0.01, steps=1)
    opt = optim.adam(learner.parameters(), 1e-3)
    learner.meta_loss(batch).backward()
    opt.step()
    params = [p.detach() for p in learner._fused_call.params()]
    weight = learner._fused_call.mean_weight(1, params[0])
    data = (batch.x_support, batch.y_support, batch.x_query, batch.y_query)

    def raw_grad():
        torch.ops.maml_ext.mlp_maml_grad(params, [], 0.01, False, data[0], data[1], None, data[2], data[3], None, 1,
                                         "relu", "mse", False, weight)

    def engine_only():  # the engine called directly: without torch.autograd.backward's Python
        opt.zero_grad(set_to_none=True)
        loss = learner.meta_loss(batch)
        torch.autograd.Variable._execution_engine.run_backward((loss,), (torch.ones_like(loss),), False, False, (),
                                                               True, True)

    leaves = list(learner._fused_call.params())
    value, grads = torch.zeros(()), [torch.ones_like(p) for p in leaves]

    def python_node(backward=True):  # the node meta_loss used before: a Python autograd.Function
        def run():
            opt.zero_grad(set_to_none=True)
            loss = ops._PrecomputedGradient.apply(value, grads, *leaves)
            if backward:
                loss.backward()
        return run

    fns = {
        "bare `ops.mlp_maml_grad`": lambda: ops.mlp_maml_grad(params, *data, lr=0.01),
        "`torch.ops.maml_ext.mlp_maml_grad` alone (no Python wrapper)": raw_grad,
        "`zero_grad` + `meta_loss(batch)`": literal_path(learner, opt, batch, False, False),
        "`zero_grad` + `meta_loss(batch)` + the engine called directly": engine_only,
        "`zero_grad` + `meta_loss(batch).backward()`": literal_path(learner, opt, batch, step=False),
        "`zero_grad` + `meta_loss(batch).backward()` + `opt.step()` (the literal path)": literal_path(learner, opt, batch),
        "`opt.step()` alone (`maml_ext.train.optim.adam`)": opt.step,
        "Python node, no op: `zero_grad` + `_PrecomputedGradient.apply` over the 6 leaves": python_node(False),
        "Python node, no op: the same + `.backward()`": python_node(),
    }
    samples = {k: [] for k in fns}
    for fn in fns.values():
        fn(), fn()
    for _ in range(rounds):
        for k, fn in fns.items():
            samples[k].append(_cpu_us(fn, seconds))
    print(f"floor: MLP 1-1-1, 1 task, K=1, float32, {torch.get_num_threads()} thread(s); median of {rounds} "
          f"alternating rounds of {seconds} s\n")
    print("| what | CPU µs |\n|---|---|")
    for k, v in samples.items():
        print(f"| {k} | {statistics.median(v):.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--loop", action="store_true", help="the training loop's meta-iteration vs the bare op")
    parser.add_argument("--floor", action="store_true", help="the literal path around an op doing almost nothing")
    parser.add_argument("--rounds", type=int, default=7, help="--loop/--floor: alternating rounds")
    parser.add_argument("--seconds", type=float, default=0.5, help="--loop: timing per row and round")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.loop:
        return loop(args.rounds, args.seconds)
    if args.floor:
        return floor(args.rounds, args.seconds)
    for hidden, tasks, steps, lr in CONFIGS:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        batch = Sinusoid().sample(tasks, 10, 10, torch.Generator().manual_seed(0))
        fused, generic = MAML(model, lr=lr, steps=steps), MAML(model, lr=lr, steps=steps, fused=False)
        assert fused.fused_spec is not None, "the plain MLP was not detected"
        reps = max(3, args.reps // (10 if hidden > 100 else 1))
        median_ms(fused, batch, 2), median_ms(generic, batch, 2)  # warm-up
        f, g = median_ms(fused, batch, reps), median_ms(generic, batch, reps)
        print(f"nn.Sequential 1-{hidden}-{hidden}-1, {tasks} tasks, K=10, {steps} step(s), {args.threads} thread(s): "
              f"auto-fused {f:.2f} ms, generic {g:.2f} ms ({g / f:.1f}x)")


if __name__ == "__main__":
    main()
