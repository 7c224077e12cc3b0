"""Progress for long runs: a rich bar on a terminal (rows/s, tokens/s, ETA), plain lines otherwise.

Both also show tokens/s per device when the engine reports them (``device_tokens``): a line per device
under the bar, or a ``(cuda:0 ..., cuda:1 ...)`` tail on the periodic line. With ``--quiet`` nothing is
printed but the final summary; cron mails stay short. ``--log-format json`` shows no progress, but its
warnings are still lines on stderr (stdout holds the JSON).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from contextlib import contextmanager


class LineProgress:
    """Plain log lines on stderr at most every ``every`` seconds (not a TTY)."""

    def __init__(self, every: float = 30.0, quiet: bool = False) -> None:
        self.every = every
        self.quiet = quiet
        self.rows = self.tokens = 0
        self.total: int | None = None
        self.doing = "encoding"
        self.devices: dict[str, int] = {}  # device -> tokens
        self.started = self.last = time.perf_counter()

    def start(self, total_rows: int | None, doing: str = "encoding") -> None:
        self.total, self.doing = total_rows, doing
        self.started = self.last = time.perf_counter()

    def set_total(self, total_rows: int | None) -> None:
        """The rows the run will advance by after all (a resumed run that encodes every row again)."""
        self.total = total_rows

    def advance(self, rows: int, tokens: int) -> None:
        self.rows += rows
        self.tokens += tokens
        if self.total is not None and self.rows > self.total:
            self.total = None  # an estimate the run outgrew (PDF cells: pages, not Parquet rows) is no total
        now = time.perf_counter()
        if not self.quiet and now - self.last >= self.every:
            self.last = now
            elapsed = now - self.started
            of = f"/{self.total}" if self.total else ""
            per_device = ", ".join(f"{device} {tokens / elapsed:,.0f}" for device, tokens in list(self.devices.items()))
            doing = "" if self.doing == "encoding" else f"{self.doing} "
            self.log(f"progress: {doing}{self.rows}{of} rows, {self.tokens / elapsed:,.0f} tokens/s" + (f" ({per_device})" if per_device else ""))

    def device_tokens(self, device: str, tokens: int) -> None:
        self.devices[device] = self.devices.get(device, 0) + tokens

    def log(self, message: str) -> None:
        if not self.quiet:
            print(f"tokembed: {message}", file=sys.stderr, flush=True)

    def stop(self) -> None:
        pass


class LogLines(logging.Handler):
    """The library's logging records as ``level: message`` lines to ``log`` (which adds ``tokembed: ``), with the
    traceback of a record that carries one (serve's failed requests)."""

    def __init__(self, log) -> None:
        super().__init__()
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        text = f"{record.levelname.lower()}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        self.log(text)


@contextmanager
def warnings_logged(log):
    """Python warnings raised meanwhile (Pillow's about a corrupt EXIF block or TIFF tag, say) and the library's
    own logged warnings (a folder left alone among the index's files) go to ``log`` (``progress.log``): one
    ``tokembed: warning: ...`` line each (with ``--log-format json`` too), and none with ``--quiet``, so that a
    cron job that succeeds stays silent on stderr."""
    import warnings

    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        log(f"warning: {category.__name__}: {message}")

    logger = logging.getLogger("tokembed")
    handlers, logger.handlers = logger.handlers, [LogLines(log)]
    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown
        logger.handlers = handlers


@contextmanager
def libraries_quiet(quiet: bool):
    """With ``--quiet``, transformers' own notices are held back too: they are logged during the forward pass as
    well as at load (ColQwen3.5's "falling back to its reference PyTorch implementation" on the CPU), each a line
    on the stderr a succeeding cron job must keep empty."""
    import os

    if not quiet:
        yield
        return
    before = os.environ.get("TRANSFORMERS_VERBOSITY")
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"  # read when transformers is imported (lazily, at load)
    verbosity = None
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TRANSFORMERS_VERBOSITY", None)
        else:
            os.environ["TRANSFORMERS_VERBOSITY"] = before
        if verbosity is not None:
            from transformers.utils import logging as hf_logging

            hf_logging.set_verbosity(verbosity)


def make_progress(quiet: bool, bar: bool = True):
    """The bar on a terminal, else plain lines; ``bar`` False (``--log-format json``): no progress at all, but the
    run's other lines (warnings, notices) still, as ``quiet`` alone silences them."""
    if not bar:
        return LineProgress(every=math.inf, quiet=quiet)
    if quiet or not sys.stderr.isatty():  # rich (the bar) is imported only when there is a terminal to draw on
        return LineProgress(quiet=quiet)
    from rich.console import Console

    from cli._terminal import TerminalProgress

    console = Console(stderr=True)
    return TerminalProgress(console) if console.is_terminal else LineProgress(quiet=quiet)


def __getattr__(name: str):
    if name == "TerminalProgress":  # lives in cli._terminal so that importing this module never imports rich
        from cli._terminal import TerminalProgress

        return TerminalProgress
    raise AttributeError(f"module 'cli.progress' has no attribute {name!r}")
