"""The one table from library error to exit code. Ordered: subclasses before their bases.

Documented in the README ("Exit codes"); tests assert each code.
"""

from __future__ import annotations

from tokembed import errors

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

EXIT_CODES: list[tuple[type[BaseException], int, str]] = [
    (errors.UsageError, 2, "usage error"),
    (errors.BadInputError, 3, "bad input"),
    (errors.ModelMismatchError, 5, "model mismatch"),
    (errors.ModelError, 4, "model error"),
    (errors.IndexLockedError, 7, "index locked"),
    (errors.IndexWriteError, 8, "write error"),
    (errors.IndexUnreadableError, 8, "read error"),
    (errors.OpenFilesLimitError, 8, "too many open files"),
    (errors.IndexNotFoundError, 6, "index not found"),
    (errors.IndexCorruptError, 6, "index corrupt"),
    (errors.IndexReplacedError, 6, "index replaced"),
    (errors.DeviceError, 9, "device error"),
    (errors.InterruptedRun, EXIT_INTERRUPTED, "interrupted"),
]


def exit_code_for(exc: BaseException) -> tuple[int, str]:
    for cls, code, label in EXIT_CODES:
        if isinstance(exc, cls):
            return code, label
    return EXIT_FAILURE, "error"


def format_error(exc: BaseException) -> str:
    """One line (plus an optional hint line) for stderr."""
    _, label = exit_code_for(exc)
    line = f"tokembed: {label}: {exc}"
    hint = getattr(exc, "hint", None)
    return f"{line}\n  hint: {hint}" if hint else line
