"""PDF pages rendered in worker processes (``--pdf-workers N``), for image models.

PDFium renders one page at a time per process (it is not thread-safe): 17-60 US Letter pages/s at 144 dpi on one
core of the CI hosts, slower than a GPU encodes pages. With N workers the reading thread deals pages round-robin
to N processes (``python -m tokembed.sources.pdf_workers``: requests pickled over their stdin; on their stdout a
pickled header, then the page's RGB pixels raw) and takes them back in page order. A worker renders and hashes a
page exactly as the reading thread would (``pdf.render_hashed``, ``pdf.page_error``) and keeps the last PDF it
opened, so pixels, digests and error texts are the same whatever N is. Each worker has at most two pages in
flight: the memory bound stays one chunk plus ``2 N`` pages. A PDF held by a Parquet/JSONL cell is written once
to a temporary file the workers open.

Workers are plain subprocesses, not ``multiprocessing``: spawning would re-run the caller's main script, and
forking a process that runs torch's threads is unsafe. A worker ignores Ctrl-C and exits when its stdin closes,
so it never outlives the reading process, even one killed by SIGKILL. A worker that dies while rendering (PDFium
crashing on a malformed page, the OOM killer) makes that page a bad row, not the run's end: a fresh worker takes
over its other pages. The workers live for one ``open_sources`` run (``close_render_pool``).
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Iterator
from pathlib import Path

from tokembed.errors import OpenFilesLimitError
from tokembed.open_files import descriptors_named

MAX_AUTO_WORKERS = 8
COPY_PREFIX, COPY_SUFFIX = "tokembed-pdf-", ".pdf"  # a cell's temporary copy: tokembed-pdf-PID-RANDOM.pdf
IN_FLIGHT = 2  # pages queued per worker: one rendering, one waiting

_workers: list[_Worker] = []


def auto_render_workers(device: str, cpu_count: int | None = None) -> int:
    """Workers when ``--pdf-workers`` is not given: none when the CPU also encodes (its cores are busy with the
    model, which is slower than one rendering core), else all cores but one, up to 8."""
    if device.startswith("cpu"):
        return 0
    return max(1, min(MAX_AUTO_WORKERS, (cpu_count or os.cpu_count() or 2) - 1))


def rendered_pages(pdf: Path | bytes, count: int, workers: int, password: str | None, dpi: float, max_pixels: int) -> Iterator[tuple]:
    """``(image, digest, error)`` for pages 1..count of ``pdf``, in order, rendered by ``workers`` processes."""
    held = _temporary_copy(pdf) if isinstance(pdf, (bytes, bytearray)) else None
    path = str(held.path if held else pdf)
    pool = _pool(workers)
    queued: deque[int] = deque()  # pages sent and not yet taken back, in page order (page p on worker p % N)
    try:
        for number in range(1, count + 1):
            pool[number % workers].send((path, password, number, dpi, max_pixels))
            queued.append(number)
            if len(queued) >= IN_FLIGHT * workers:
                yield _take(pool, queued.popleft(), workers)
        while queued:
            yield _take(pool, queued.popleft(), workers)
    finally:
        for worker in pool:  # stopped early: a worker's unread answers would be taken for the next PDF's pages
            if worker.pending:
                worker.stop()
        if held is not None:
            held.release()


def close_render_pool() -> None:
    while _workers:
        _workers.pop().stop()


class _Worker:
    def __init__(self) -> None:
        package_root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
        if sys.flags.utf8_mode:  # as this process reads file names (``python -X utf8`` sets no variable to inherit)
            env["PYTHONUTF8"] = "1"
        with descriptors_named("a PDF render worker's pipe"):
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tokembed.sources.pdf_workers"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
            )
        self.pending: deque[tuple] = deque()
        _widen(self.process.stdout)

    def send(self, request: tuple) -> None:
        self.pending.append(request)
        try:
            pickle.dump(request, self.process.stdin)
            self.process.stdin.flush()
        except OSError:  # the worker died: ``receive`` finds out, and a fresh worker gets what is still pending
            pass

    def receive(self) -> tuple:
        request = self.pending.popleft()
        try:
            size, digest, error = pickle.load(self.process.stdout)
            if isinstance(error, OpenFilesLimitError):  # the worker ran out of descriptors: no bad row, the run's end
                raise error
            if error is not None:
                return None, None, error
            from tokembed.sources.pdf import page_image

            return page_image(size, self.process.stdout.read(size[0] * size[1] * 3)), digest, None
        except (EOFError, pickle.UnpicklingError, OSError, ValueError):  # ValueError: the pixels ended early
            code = self.process.wait()
            return None, None, f"cannot render page {request[2]}: the render process died ({_exit_reason(code)})"

    def stop(self) -> None:
        for pipe in (self.process.stdin, self.process.stdout):
            try:
                pipe.close()
            except OSError:
                pass
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def _pool(workers: int) -> list[_Worker]:
    """The run's ``workers`` processes, started once; a stopped one is replaced."""
    while len(_workers) > workers:
        _workers.pop().stop()
    for i, worker in enumerate(_workers):
        if worker.process.poll() is not None or worker.process.stdin.closed:
            _workers[i] = _Worker()
    _workers.extend(_Worker() for _ in range(workers - len(_workers)))
    return _workers


def _take(pool: list[_Worker], number: int, workers: int) -> tuple:
    """Page ``number``'s answer; if its worker died, a fresh one renders the pages it still had."""
    worker = pool[number % workers]
    answer = worker.receive()
    if answer[2] is not None and worker.process.poll() is not None:
        unanswered = list(worker.pending)
        worker.stop()
        pool[number % workers] = fresh = _Worker()
        for request in unanswered:
            fresh.send(request)
    return answer


def _widen(pipe) -> None:
    """A 1 MiB pipe instead of 64 KiB: a page's pixels (5.8 MB for Letter at 144 dpi) cross in fewer turns."""
    try:
        import fcntl

        fcntl.fcntl(pipe.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
    except (ImportError, OSError):
        pass  # not Linux, or over /proc/sys/fs/pipe-max-size: the default size works, a little slower


def _exit_reason(code: int) -> str:
    if code < 0:
        import signal

        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def remove_abandoned_copies() -> None:
    """Remove the temporary copies (``_temporary_copy``) whose run is gone (a SIGKILL leaves its copy behind): every
    ``encode`` run does at its start, whether or not it reads PDFs; a live run's copy, in any container sharing the
    temp folder, is left to it."""
    from tokembed.index.held import held_pattern, remove_abandoned

    remove_abandoned(Path(tempfile.gettempdir()), held_pattern(COPY_PREFIX, COPY_SUFFIX))


def _temporary_copy(data: bytes):
    """The PDF's bytes in a file the render workers open by name (``.path`` of the ``HeldEntry`` returned); removed
    when its pages are rendered (``release``), or by the next run once this process is gone
    (``remove_abandoned_copies``)."""
    from tokembed.index.held import HeldEntry

    folder = Path(tempfile.gettempdir())
    with descriptors_named(folder / f"{COPY_PREFIX}*{COPY_SUFFIX}"):
        held = HeldEntry(folder, COPY_PREFIX, COPY_SUFFIX)
        try:
            with os.fdopen(os.open(held.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as file:
                file.write(data)  # readable by this user only, as ``mkstemp`` made it: a document's content
        except BaseException:
            held.release()
            raise
    return held


# -- in a worker process ----------------------------------------------------------------------------------


def render_in_worker(path: str, password: str | None, number: int, dpi: float, max_pixels: int, opened: dict) -> tuple:
    """One page as the reading thread would render it: ``((width, height), digest, None)`` and its RGB pixels,
    or ``(None, None, reason)`` and no pixels; ``reason`` is the ``OpenFilesLimitError`` itself when this process
    ran out of descriptors, which is no reason for a bad row."""
    from tokembed._testhooks import fault_point
    from tokembed.open_files import limit_error, out_of_descriptors
    from tokembed.sources.pdf import PdfOpenError, open_pdf, page_error, render_hashed

    fault_point("render", number)
    page = None
    try:
        key = (path, os.stat(path).st_mtime_ns, password)
        if key not in opened:
            for document in opened.values():
                document.close()
            opened.clear()
            opened[key] = open_pdf(Path(path), password)
        page = opened[key][number - 1]
        size, pixels, digest = render_hashed(page, dpi, max_pixels)
        return (size, digest, None), pixels
    except PdfOpenError as exc:
        return (None, None, str(exc)), b""
    except OpenFilesLimitError as exc:  # pickled to the reading process, which raises it
        return (None, None, exc), b""
    except Exception as exc:  # PdfiumError, MemoryError, a page over the pixel limit, ...
        return (None, None, limit_error(path, exc) if out_of_descriptors(exc) else page_error("image", number, exc)), b""
    finally:
        if page is not None:
            page.close()


def _serve() -> None:
    """Answer pickled requests from stdin until it closes; answers go to the original stdout, and anything a
    library prints goes to stderr instead."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the reader stops us
    requests, answers = sys.stdin.buffer, os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    opened: dict = {}
    while True:
        try:
            request = pickle.load(requests)
        except EOFError:
            return
        header, pixels = render_in_worker(*request, opened)
        try:
            pickle.dump(header, answers)
            answers.write(pixels)
            answers.flush()
        except (BrokenPipeError, ConnectionResetError):  # the reading process went away (killed, interrupted)
            os._exit(0)  # quietly: no traceback, no failing flush at exit, on a --quiet run's stderr


if __name__ == "__main__":
    _serve()
