"""Progress for long runs: a rich bar on a terminal (rows/s, tokens/s, ETA), plain lines otherwise.

With ``--quiet`` nothing is printed but the final summary; cron mails stay short.
"""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class TerminalProgress:
    """Rich progress bar on stderr, messages printed above it."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.tokens = 0
        self.started = time.perf_counter()
        self.bar = Progress(
            TextColumn("[bold]encoding"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("rows"),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self.task = None

    def start(self, total_rows: int | None) -> None:
        self.bar.start()
        self.started = time.perf_counter()
        self.task = self.bar.add_task("encode", total=total_rows, rate="")

    def advance(self, rows: int, tokens: int) -> None:
        self.tokens += tokens
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        done = self.bar.tasks[0].completed + rows
        rate = f"{done / elapsed:,.0f} rows/s {self.tokens / elapsed:,.0f} tok/s"
        self.bar.update(self.task, advance=rows, rate=rate)

    def log(self, message: str) -> None:
        self.console.print(message, highlight=False, markup=False)

    def stop(self) -> None:
        self.bar.stop()


class LineProgress:
    """Plain log lines on stderr at most every ``every`` seconds (not a TTY)."""

    def __init__(self, every: float = 30.0, quiet: bool = False) -> None:
        self.every = every
        self.quiet = quiet
        self.rows = self.tokens = 0
        self.total: int | None = None
        self.started = self.last = time.perf_counter()

    def start(self, total_rows: int | None) -> None:
        self.total = total_rows
        self.started = self.last = time.perf_counter()

    def advance(self, rows: int, tokens: int) -> None:
        self.rows += rows
        self.tokens += tokens
        now = time.perf_counter()
        if not self.quiet and now - self.last >= self.every:
            self.last = now
            elapsed = now - self.started
            of = f"/{self.total}" if self.total else ""
            self.log(f"progress: {self.rows}{of} rows, {self.tokens / elapsed:,.0f} tokens/s")

    def log(self, message: str) -> None:
        if not self.quiet:
            print(f"tokembed: {message}", file=sys.stderr, flush=True)

    def stop(self) -> None:
        pass


def make_progress(quiet: bool):
    console = Console(stderr=True)
    if quiet or not console.is_terminal:
        return LineProgress(quiet=quiet)
    return TerminalProgress(console)
