"""Typer application: wires the commands and turns library errors into one-line messages and exit codes."""

from __future__ import annotations

import logging
import sys

import tokembed  # noqa: F401  (first: it caps native kernel caches before torch loads)
import typer  # noqa: E402

from cli import compress as compress_cmd  # noqa: E402
from cli import encode as encode_cmd  # noqa: E402
from cli import export as export_cmd  # noqa: E402
from cli import info as info_cmd
from cli import models as models_cmd
from cli import score as score_cmd
from cli import serve as serve_cmd
from cli._errors import EXIT_INTERRUPTED, exit_code_for, format_error

app = typer.Typer(
    name="tokembed",
    help="Batch indexer for late-interaction retrieval: per-token embeddings in Arrow files, MaxSim search.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.command("compress", no_args_is_help=True)(compress_cmd.compress)
app.command("encode", no_args_is_help=True)(encode_cmd.encode)
app.command("export", no_args_is_help=True)(export_cmd.export)
app.command("info", no_args_is_help=True)(info_cmd.info)
app.command("models")(models_cmd.models)
app.command("score", no_args_is_help=True)(score_cmd.score)
app.command("serve", context_settings={"allow_extra_args": True})(serve_cmd.serve)


def _library_warnings_to_stderr() -> None:
    """The library's own warnings (a stray folder left alone, a runtime falling back) in the CLI's line format, on
    the stderr of the moment (a test's captured one included)."""
    from cli.progress import LogLines

    logger = logging.getLogger("tokembed")
    if not any(isinstance(handler, LogLines) for handler in logger.handlers):
        # still propagates: a host's own root handlers (pytest's) see the records
        logger.addHandler(LogLines(lambda line: print(f"tokembed: {line}", file=sys.stderr)))


def run(args: list[str] | None = None, started: float | None = None, through_exit: bool = False) -> int:
    """Run the app and return its exit code; known errors become one line on stderr, and so does a standard
    output that cannot be written (``cli/_stdout.py``).

    ``started``: the ``time.perf_counter()`` at which the command began (default: now), for ``load_seconds``.
    ``through_exit``: the process exits when this returns (``main``): once the command's work is done, SIGINT and
    SIGTERM stay ignored (``cli/_signals.py``) instead of getting the caller's handlers back.
    """
    from cli._clock import mark_start
    from cli._stdout import guarded_stdout, report_failed_stdout, stderr_or_devnull

    mark_start(started)
    _library_warnings_to_stderr()
    code = 0
    with stderr_or_devnull(), guarded_stdout() as stdout:
        try:
            code = _run_command(args, through_exit)
            if stdout.error is None:
                stdout.flush()  # what print() left in the buffer: a failure is reported here, not at exit
        except (OSError, SystemExit):  # click turns a broken pipe into SystemExit(1)
            if stdout.error is None:
                raise
    return code if stdout.error is None else report_failed_stdout(stdout.error, code)


def _run_command(args: list[str] | None, through_exit: bool = False) -> int:
    from cli._signals import command_signals, work_done
    from tokembed._testhooks import fault_point
    from tokembed.errors import TokembedError
    from tokembed.open_files import limit_error, out_of_descriptors

    commits, unsynced = _commits_finished(), len(_unsynced_commits())
    try:
        with command_signals(through_exit):  # uvicorn replaces SIGTERM's handler while serving, and restores it after
            code = app(args=args, standalone_mode=False)  # returns an int exit code (typer turns Ctrl-C into 130)
            fault_point("returned", 1)
            if not code:  # encode, compress and export said so already, before their summary line
                work_done()
    except TokembedError as exc:
        return _reported(exc)
    except OSError as exc:  # no descriptor left outside the index's own opens (importing a module, say): as theirs
        if not out_of_descriptors(exc):
            raise
        return _reported(limit_error(exc.filename, exc))
    except (KeyboardInterrupt, typer.Abort):
        code = EXIT_INTERRUPTED
    except typer.Exit as exc:
        code = exc.exit_code
    except typer.TyperException as exc:  # usage errors (bad option values) carry their own exit code
        show = getattr(exc, "show", None)
        if show is not None:
            show()
        return getattr(exc, "exit_code", 2)
    if code == EXIT_INTERRUPTED:
        print(_interrupted_message(_commits_finished() > commits), file=sys.stderr)
    code = code if isinstance(code, int) else 0
    return _reported_unsynced(_unsynced_commits()[unsynced:]) if code == 0 else code


def _reported(exc) -> int:
    print(format_error(exc), file=sys.stderr)
    return exit_code_for(exc)[0]


def _commits_finished() -> int:
    """Commit windows finished so far (``tokembed.index.commit_window``; none where it was never imported: importing
    it here would load numpy for `--help` and usage errors)."""
    window = sys.modules.get("tokembed.index.commit_window")
    return window.commits_finished() if window is not None else 0


def _unsynced_commits() -> list[str]:
    """Commits whose folder fsync failed after the rename (``tokembed.index.atomic.commit_sync``; none where it
    was never imported)."""
    atomic = sys.modules.get("tokembed.index.atomic")
    return atomic.unsynced_commits() if atomic is not None else []


def _reported_unsynced(messages: list[str]) -> int:
    """0, or exit 8 (a write error) once the work is done and committed, as for a standard output that cannot be
    written: the message says the commit was made (a --quiet run showed no warning)."""
    if not messages:
        return 0
    from tokembed.errors import IndexWriteError

    return _reported(IndexWriteError(messages[-1]))


def _interrupted_message(committed: bool) -> str:
    if committed:  # the signal was held until the clean-up after the commit was done (tokembed/index/commit_window.py)
        done = sys.modules["tokembed.index.commit_window"].last_commit()
        return f"tokembed: interrupted after {done}; nothing to redo"
    return "tokembed: interrupted; the previous index is untouched"


def main() -> None:
    from cli._clock import process_start
    from tokembed._testhooks import fault_point
    from tokembed.open_files import raise_soft_limit

    raise_soft_limit()  # an index holds a file open per shard: the usual soft 1024 is no limit of the machine's
    code = run(started=process_start(), through_exit=True)
    fault_point("exiting", 1)
    sys.exit(code)


if __name__ == "__main__":  # python -m cli.main: UTF-8 mode first, as the tokembed program (cli/launch.py) does;
    # not in main(), which a host program may call: starting again would run the host's script again
    from cli._utf8 import run_in_utf8_mode

    run_in_utf8_mode()
    main()
