"""A dependency-free progress bar on stderr: iteration, loss and speed."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Redraws one line in place on a terminal; elsewhere (logs, nohup) prints a line every
    ``log_seconds`` so the output stays readable."""

    def __init__(self, total: int, start: int = 0, stream: TextIO | None = None, log_seconds: float = 30.0) -> None:
        self.total = total
        self.start = start
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.interval = 0.2 if self.tty else log_seconds
        self.t0 = time.perf_counter()
        self.last = 0.0

    def rate(self, iteration: int) -> float:
        elapsed = time.perf_counter() - self.t0
        return (iteration - self.start) / elapsed if elapsed > 0 else 0.0

    def update(self, iteration: int, loss: float, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self.last < self.interval:
            return
        self.last = now
        rate = self.rate(iteration)
        eta = (self.total - iteration) / rate if rate > 0 else 0.0
        width = 24
        filled = int(width * iteration / max(self.total, 1))
        line = (
            f"[{'#' * filled}{'.' * (width - filled)}] {iteration}/{self.total} "
            f"loss {loss:.4f} {rate:.1f} it/s eta {int(eta) // 60}:{int(eta) % 60:02d}"
        )
        self.stream.write(("\r" + line) if self.tty else line + "\n")
        self.stream.flush()

    def close(self, iteration: int, loss: float) -> None:
        self.update(iteration, loss, force=True)
        if self.tty:
            self.stream.write("\n")
        self.stream.flush()
