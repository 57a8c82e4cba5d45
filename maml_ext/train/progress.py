"""A dependency-free progress bar on stderr: what runs, how far it is, its speed and ETA (and a
loss where there is one). Used by training, evaluation, rollouts and the glyph build."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TextIO, TypeVar

T = TypeVar("T")

# The bars being drawn, innermost last: long inner loops (rollouts) report into the innermost one
# through :func:`detail` without being handed a bar.
_ACTIVE: list[Progress] = []


def detail(what: str, done: int, total: int) -> None:
    """Report ``done``/``total`` of an inner step (e.g. the time steps of a batch of rollouts) on the
    innermost bar being drawn, if any; a no-op otherwise (quiet runs, non-main ranks)."""
    if _ACTIVE:
        _ACTIVE[-1].set_detail(f"{what} {done}/{total}")


class Progress:
    """Redraws one line in place on a terminal; elsewhere (logs, nohup) prints a line every
    ``log_seconds`` so the output stays readable. The first update is always shown, and no
    state is printed twice (``close`` after a final ``update`` adds nothing in a log)."""

    def __init__(self, total: int, start: int = 0, stream: TextIO | None = None, log_seconds: float = 30.0,
                 what: str = "", unit: str = "it", metric: str = "loss") -> None:
        self.total = total
        self.metric = metric
        self.start = start
        self.what = what
        self.unit = unit
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.interval = 0.2 if self.tty else log_seconds
        self.t0 = time.perf_counter()
        self.last: float | None = None
        self.shown: tuple[int, str] | None = None  # (done, label) of the last line written
        self.done = start
        self.value: float | None = None
        self.detail = ""
        _ACTIVE.append(self)

    def rate(self, done: int) -> float:
        elapsed = time.perf_counter() - self.t0
        return (done - self.start) / elapsed if elapsed > 0 else 0.0

    def set_detail(self, text: str) -> None:
        """Show ``text`` after the bar (what the current unit of work is doing), redrawn at most
        every ``interval`` like the bar itself."""
        self.detail = text
        self._draw(self.done, self.value, force=False, label=(self.done, self.what + text))

    def update(self, done: int, loss: float | None = None, force: bool = False) -> None:
        self.done, self.value, self.detail = done, loss, ""
        self._draw(done, loss, force, label=(done, self.what))

    def _draw(self, done: int, loss: float | None, force: bool, label: tuple[int, str]) -> None:
        now = time.perf_counter()
        if not force and self.last is not None and now - self.last < self.interval:
            return
        if self.shown == label and not self.tty:
            return
        self.last = now
        self.shown = label
        rate = self.rate(done)
        eta = (self.total - done) / rate if rate > 0 else (0.0 if done >= self.total else None)
        width = 24
        filled = int(width * min(done, self.total) / max(self.total, 1))
        speed = f"{rate:.1f} {self.unit}/s" if rate >= 1 or rate == 0 else f"{1 / rate:.1f} s/{self.unit}"
        line = (
            (f"{self.what} " if self.what else "")
            + f"[{'#' * filled}{'.' * (width - filled)}] {done}/{self.total} "
            + (f"{self.metric} {loss:.4f} " if loss is not None else "")
            + f"{speed} eta " + ("?" if eta is None else f"{int(eta) // 60}:{int(eta) % 60:02d}")
            + (f" | {self.detail}" if self.detail else "")
        )
        # \r then clear to the end of the line: a shorter line leaves no stale characters.
        self.stream.write(("\r" + line + "\x1b[K") if self.tty else line + "\n")
        self.stream.flush()

    def note(self, message: str) -> None:
        """A line of its own without breaking the bar (the bar is redrawn at the next update)."""
        self.stream.write(("\r\x1b[K" if self.tty else "") + message + "\n")
        self.stream.flush()

    def close(self, done: int, loss: float | None = None) -> None:
        self.update(done, loss, force=True)
        if self.tty:
            self.stream.write("\n")
        self.stream.flush()
        if self in _ACTIVE:
            _ACTIVE.remove(self)


def track(items: Iterable[T], total: int, what: str, unit: str = "it", enabled: bool = True) -> Iterator[T]:
    """Yield ``items`` while showing a :class:`Progress` of them on stderr (nothing when disabled)."""
    if not enabled:
        yield from items
        return
    bar = Progress(total, what=what, unit=unit)
    done = 0
    bar.update(0)
    try:
        for item in items:
            yield item
            done += 1
            bar.update(done)
    finally:
        bar.close(done)
