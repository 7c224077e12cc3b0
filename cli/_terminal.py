"""The rich progress bar ``make_progress`` uses on a terminal (imported only then: rich costs start-up time)."""

from __future__ import annotations

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

    def start(self, total_rows: int | None, doing: str = "encoding") -> None:
        self.bar.start()
        self.started = time.perf_counter()
        self.task = self.bar.add_task(doing, total=total_rows, rate="")

    def set_total(self, total_rows: int | None) -> None:
        """The rows the run will advance by after all (a resumed run that encodes every row again)."""
        if self.task is not None:
            self.bar.tasks[0].total = total_rows  # not update(): it takes None as "unchanged"

    def advance(self, rows: int, tokens: int) -> None:
        self.tokens += tokens
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        done = self.bar.tasks[0].completed + rows
        rate = f"{done / elapsed:,.0f} rows/s {self.tokens / elapsed:,.0f} tok/s"
        if self.bar.tasks[0].total is not None and done > self.bar.tasks[0].total:
            self.set_total(None)  # an estimate the run outgrew (PDF cells: pages, not Parquet rows) is no total
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
