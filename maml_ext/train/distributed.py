"""Data-parallel meta-training on torch.distributed: each rank adapts its share of a meta-batch.

Every rank samples the full meta-batch from the same seeded generator and keeps its contiguous
slice of tasks, so N ranks see exactly the tasks a single process sees. The meta-gradient, the
logged loss and any buffer updates (MAML++ per-step BatchNorm statistics) are all-reduced in one
call, each rank's share weighted by its number of tasks: the result is the single-process mean
over the meta-batch, and every rank applies the same optimizer step to the same parameters.

Two ways in: ``torchrun`` (``join`` reads RANK/WORLD_SIZE/LOCAL_RANK and rendezvous from the
environment) or ``launch(nproc, ...)`` (the CLI's ``--nproc``: local processes, ``file://``
rendezvous over loopback). The training loop asks ``current()`` for its ``Shard``.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from maml_ext.algorithms import MetaLearner
from maml_ext.tasks import TaskBatch

from .config import ConfigError

DEFAULT_TIMEOUT = 300.0  # seconds a collective waits for a silent rank before failing
GRACE = 10.0  # seconds the launcher lets the other ranks fail on their own after one dies

T = TypeVar("T")


class DistributedError(RuntimeError):
    """A rank died, did not answer in time, or the job could not start."""


def backend() -> str:
    # One process group for both devices: gloo for CPU tensors, NCCL for CUDA ones when there are GPUs.
    if torch.cuda.is_available() and dist.is_nccl_available():
        return "cpu:gloo,cuda:nccl"
    return "gloo"


def chunked_backward(learner: MetaLearner, batch: TaskBatch, iteration: int, chunk: int | None) -> float:
    """Accumulate the meta-gradient of ``batch`` into ``.grad``, ``chunk`` tasks per pass; returns
    the meta-loss (the mean over tasks, so chunks are weighted by their share of the tasks).

    Chunking changes only speed and memory: peak memory is one chunk's graph, and on CPU chunks whose
    activations stay in cache run faster than one pass over the whole batch (benchmarks/RESULTS.md).
    Not for learners with per-step BatchNorm statistics, which average one pass's tasks.
    """
    tasks = batch.num_tasks
    chunk = tasks if chunk is None else min(chunk, tasks)
    total = 0.0
    for start in range(0, tasks, chunk):
        stop = min(start + chunk, tasks)
        total += learner.meta_grad(batch.slice(start, stop), iteration, (stop - start) / tasks).item()
    return total


class Shard:
    """This process's place in the job (rank 0 of 1 without torch.distributed)."""

    def __init__(self, rank: int = 0, world: int = 1, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.rank, self.world, self.timeout = rank, world, timeout

    @property
    def is_main(self) -> bool:
        """Rank 0: the only one that writes checkpoints, metrics and plots."""
        return self.rank == 0

    def bounds(self, num_tasks: int) -> tuple[int, int]:
        """This rank's contiguous slice of ``num_tasks`` tasks (sizes differ by at most one)."""
        return self.rank * num_tasks // self.world, (self.rank + 1) * num_tasks // self.world

    def from_main(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 only and hand its result, or its exception, to every rank."""
        if self.world == 1:
            return fn()
        box: list[Any] = [None]
        if self.is_main:
            try:
                box[0] = (True, fn())
            except Exception as exc:  # re-raised on every rank, so none waits for the others
                box[0] = (False, exc)
        self.collective("broadcast from rank 0", lambda: dist.broadcast_object_list(box, src=0))
        ok, value = box[0]
        if not ok:
            raise value
        return value

    def prepare(self, learner: nn.Module, meta_batch: int) -> None:
        """Check every rank gets a task, and start all ranks from rank 0's parameters and buffers
        (the same seed already gives the same ones; this also covers models initialised from other
        random sources)."""
        if meta_batch < self.world:
            raise ConfigError(f"train.meta_batch ({meta_batch}) must be at least the number of processes ({self.world})")
        if self.world == 1:
            return
        for tensor in (*learner.parameters(), *learner.buffers()):
            self.collective("broadcast of the parameters", lambda t=tensor: dist.broadcast(t.data, src=0))

    def backward(self, learner: MetaLearner, batch: TaskBatch, iteration: int, chunk: int | None = None) -> float:
        """Meta-gradient of the whole ``batch`` into ``.grad`` on every rank; returns the meta-loss.

        ``chunk``: tasks per forward/backward pass within this rank's share (see ``chunked_backward``)."""
        if self.world == 1:
            return chunked_backward(learner, batch, iteration, chunk)
        start, stop = self.bounds(batch.num_tasks)
        weight = (stop - start) / batch.num_tasks
        buffers = [b for b in learner.buffers() if b.is_floating_point()]
        before = [b.detach().clone() for b in buffers]
        loss = chunked_backward(learner, batch.slice(start, stop), iteration, chunk)
        grads = [p.grad for p in learner.parameters() if p.grad is not None]
        # Buffers travel as deltas: unchanged ones stay bit-identical, updated ones get the task-weighted mean.
        parts = [next(learner.parameters()).detach().new_tensor([loss]), *(g.reshape(-1) for g in grads), *((b - b0).reshape(-1) for b, b0 in zip(buffers, before))]
        flat = torch.cat(parts) * weight
        self.collective(f"all_reduce at iteration {iteration}", lambda: dist.all_reduce(flat))
        offset = 1
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()
        for b, b0 in zip(buffers, before):
            b.copy_(b0 + flat[offset:offset + b.numel()].view_as(b))
            offset += b.numel()
        return flat[0].item()

    def collective(self, what: str, call: Callable[[], Any]) -> None:
        """Run a collective (``call``); a peer's failure becomes a DistributedError naming ``what``."""
        try:
            call()
        except RuntimeError as exc:  # gloo/NCCL errors: a peer closed its connection or timed out
            raise DistributedError(
                f"rank {self.rank}: {what} failed: another rank died or did not answer within "
                f"{self.timeout:g} s ({str(exc).strip().splitlines()[0]})"
            ) from exc


_timeout = DEFAULT_TIMEOUT  # the one ``join`` gave the process group, for error messages


def current() -> Shard:
    """The shard of this process: from the initialised process group, else a single process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return Shard()
    return Shard(dist.get_rank(), dist.get_world_size(), _timeout)


@contextmanager
def join(timeout: float = DEFAULT_TIMEOUT, init_method: str = "env://") -> Iterator[Shard]:
    """Join the process group described by RANK, WORLD_SIZE and LOCAL_RANK (as torchrun sets them)
    for the duration of the block; a plain process (no WORLD_SIZE > 1) stays a single shard."""
    global _timeout
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1 or dist.is_initialized():
        yield current()
        return
    rank = int(os.environ["RANK"])
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    try:
        dist.init_process_group(backend(), init_method=init_method, rank=rank, world_size=world,
                                timeout=timedelta(seconds=timeout))
    except RuntimeError as exc:
        raise DistributedError(f"rank {rank}: could not join the {world}-process group: {exc}") from exc
    _timeout = timeout
    try:
        yield current()
        # Leave together: no rank tears its group down while another still talks to it.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _loopback() -> str:
    return next(name for _, name in socket.if_nameindex() if name.startswith("lo"))


def _rank_main(rank: int, nproc: int, init_method: str, timeout: float, threads: int, report: Path,
               expected: tuple[type[BaseException], ...], fn: Callable[..., Any], args: tuple, kwargs: dict) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(nproc), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(nproc))
    # One machine: keep gloo's (and NCCL's bootstrap) sockets on the loopback interface.
    os.environ.setdefault("GLOO_SOCKET_IFNAME", _loopback())
    os.environ.setdefault("NCCL_SOCKET_IFNAME", os.environ["GLOO_SOCKET_IFNAME"])
    torch.set_num_threads(threads)
    try:
        with join(timeout, init_method):
            fn(*args, **kwargs)
    except (DistributedError, *expected) as exc:
        report.write_text(str(exc))  # the launcher's error carries it
        sys.exit(2)
    except KeyboardInterrupt as exc:  # Ctrl-C reaches every rank: no traceback, say what was kept
        report.write_text(str(exc))
        sys.exit(128 + signal.SIGINT)
    except BaseException as exc:
        traceback.print_exc()
        report.write_text(f"{type(exc).__name__}: {exc} (traceback above)")
        sys.exit(1)


def _describe(rank: int, exitcode: int | None, report: Path) -> str:
    if exitcode is not None and exitcode < 0:
        return f"rank {rank} was killed by {signal.Signals(-exitcode).name}"
    message = f": {report.read_text()}" if report.exists() else ""
    return f"rank {rank} exited with code {exitcode}{message}"


@contextmanager
def _installed_package_first() -> Iterator[None]:
    """The forkserver (and spawn) interpreter runs ``python -c``, which puts the working directory
    first on ``sys.path``: launched from a source checkout, the ranks would import that tree's
    ``maml_ext`` (without the compiled kernels) instead of the installed package. PYTHONSAFEPATH
    (Python >= 3.11) leaves the working directory out."""
    old = os.environ.get("PYTHONSAFEPATH")
    os.environ["PYTHONSAFEPATH"] = "1"
    try:
        yield
    finally:
        if old is None:
            del os.environ["PYTHONSAFEPATH"]
        else:
            os.environ["PYTHONSAFEPATH"] = old


def launch(nproc: int, fn: Callable[..., Any], *args: Any, timeout: float = DEFAULT_TIMEOUT,
           expected: tuple[type[BaseException], ...] = (), **kwargs: Any) -> None:
    """Run ``fn(*args, **kwargs)`` in ``nproc`` local processes joined in one process group.

    The children are watched: when one fails, the others get ``GRACE`` seconds to stop on their own
    (their collectives fail at once when a peer's connection closes) and are then terminated; the
    raised ``DistributedError`` says how each failed rank ended, with its error message. Other
    exceptions than ``expected`` types also print their traceback. Each child
    gets an equal share of the CPU threads (torch's default would oversubscribe the cores).
    """
    # forkserver: the interpreter that imports torch and maml_ext once and forks every rank from
    # that clean, single-threaded state (a fresh interpreter per rank would import them again).
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["maml_ext.train.loop"])
    else:
        ctx = mp.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // nproc)
    with tempfile.TemporaryDirectory(prefix="maml_ext_rdzv_") as tmp:
        init_method = (Path(tmp) / "rendezvous").as_uri()
        reports = [Path(tmp) / f"rank{r}.err" for r in range(nproc)]
        procs = [
            ctx.Process(target=_rank_main, name=f"maml-ext rank {r}",
                        args=(r, nproc, init_method, timeout, threads, reports[r], expected, fn, args, kwargs))
            for r in range(nproc)
        ]
        with _installed_package_first():
            for p in procs:
                p.start()
        failed, stopped = False, set()
        try:
            pending = {p.sentinel: r for r, p in enumerate(procs)}
            deadline = None
            while pending:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                ready = wait(list(pending), timeout=left)
                if not ready:
                    break
                for sentinel in ready:
                    r = pending.pop(sentinel)
                    procs[r].join()
                    if procs[r].exitcode != 0 and not failed:
                        failed, deadline = True, time.monotonic() + GRACE
        except KeyboardInterrupt:
            # Ctrl-C in a terminal interrupts the ranks too (one process group): give them time to
            # stop, then pass on rank 0's account of the checkpoint it kept.
            for p in procs:
                p.join(GRACE)
            told = procs[0].exitcode == 128 + signal.SIGINT and reports[0].exists()
            raise KeyboardInterrupt(reports[0].read_text() if told else "") from None
        finally:
            for r, p in enumerate(procs):
                if p.is_alive():
                    stopped.add(r)
                    p.terminate()
                    p.join()
        if failed:
            fates = [_describe(r, p.exitcode, reports[r]) for r, p in enumerate(procs) if p.exitcode != 0 and r not in stopped]
            fates += [f"rank {r} was stopped after {GRACE:g} s" for r in sorted(stopped)]
            raise DistributedError("distributed training failed: " + "; ".join(fates))
