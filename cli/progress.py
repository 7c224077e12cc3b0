"""Progress for long runs: a rich bar on a terminal (rows/s, tokens/s, ETA), plain lines otherwise.

Both also show tokens/s per device when the engine reports them (``device_tokens``): a line per device
under the bar, or a ``(cuda:0 ..., cuda:1 ...)`` tail on the periodic line. With ``--quiet`` nothing is
printed but the final summary; cron mails stay short.
"""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class _MainRowOnly(ProgressColumn):
    """Show ``column`` on the main row only; the per-device rows carry just their name and rate."""

    def __init__(self, column: ProgressColumn) -> None:
        super().__init__()
        self.column = column

    def render(self, task):
        return Text("") if task.fields.get("device") else self.column(task)


class TerminalProgress:
    """Rich progress bar on stderr, a line per device under it, messages printed above it."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.tokens = 0
        self.started = time.perf_counter()
        self.devices: dict[str, list] = {}  # device -> [task id, tokens]
        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            _MainRowOnly(BarColumn()),
            _MainRowOnly(MofNCompleteColumn()),
            _MainRowOnly(TextColumn("rows")),
            TextColumn("{task.fields[rate]}"),
            _MainRowOnly(TimeElapsedColumn()),
            _MainRowOnly(TextColumn("ETA")),
            _MainRowOnly(TimeRemainingColumn()),
            console=console,
            transient=True,
        )
        self.task = None

    def start(self, total_rows: int | None) -> None:
        self.bar.start()
        self.started = time.perf_counter()
        self.task = self.bar.add_task("encoding", total=total_rows, rate="")

    def advance(self, rows: int, tokens: int) -> None:
        self.tokens += tokens
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        done = self.bar.tasks[0].completed + rows
        rate = f"{done / elapsed:,.0f} rows/s {self.tokens / elapsed:,.0f} tok/s"
        self.bar.update(self.task, advance=rows, rate=rate)

    def device_tokens(self, device: str, tokens: int) -> None:
        if self.task is None:
            return
        if device not in self.devices:
            self.devices[device] = [self.bar.add_task(f"  {device}", total=None, rate="", device=True), 0]
        entry = self.devices[device]
        entry[1] += tokens
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        self.bar.update(entry[0], rate=f"{entry[1] / elapsed:,.0f} tok/s")

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
        self.devices: dict[str, int] = {}  # device -> tokens
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
            per_device = ", ".join(f"{device} {tokens / elapsed:,.0f}" for device, tokens in list(self.devices.items()))
            self.log(f"progress: {self.rows}{of} rows, {self.tokens / elapsed:,.0f} tokens/s" + (f" ({per_device})" if per_device else ""))

    def device_tokens(self, device: str, tokens: int) -> None:
        self.devices[device] = self.devices.get(device, 0) + tokens

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
