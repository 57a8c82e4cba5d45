"""Each benchmark script owns one marked section of benchmarks/RESULTS.md and rewrites only it."""

from __future__ import annotations

import platform
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one), for result headers."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def replace_section(name: str, lines: list[str]) -> None:
    """Replace the block between ``<!-- name:begin -->`` and ``<!-- name:end -->`` (appended if
    absent), re-reading the file right before writing since other scripts edit their own blocks."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = "\n".join([begin, *lines, end])
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text)


def write_run(name: str, header: str, rows: Sequence[str], heading: str | None = None,
              extra: Sequence[str] = ()) -> None:
    """Write a script's run into its section: optional heading, the exact command (this process's
    arguments) with its environment ``header``, the table ``rows``, then ``extra`` lines."""
    command = shlex.join(["python", f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])
    title = ["", f"## {heading}"] if heading else []
    tail = ["", *extra] if extra else []
    replace_section(name, [*title, "", f"`{command}` — {header}", "", *rows, *tail, ""])
