"""``encode_corpus``'s checks of an ``EncodeJob``, all made before the model loads.

``checked_job`` takes the job as a library caller may write it (str paths, one path alone as ``inputs``, any
iterable of them, a numpy integer in its counts, ``nbits`` or ``flags``) and returns it with ``Path``s and ints,
every option checked; ``check_inputs`` then checks that each input is there. A field of the wrong type is a
``UsageError`` naming it, never a TypeError or AttributeError from deep inside the run.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from tokembed.errors import UsageError
from tokembed.index.reader import require_index_path
from tokembed.locale_names import refuse_misread_path
from tokembed.settings import checked_flags, whole_count
from tokembed.sources import SourceOptions
from tokembed.sources.base import check_input
from tokembed.sources.files import file_key, refuse_inputs_given_twice
from tokembed.sources.id_source import refuse_mixed_ids
from tokembed.sources.pdf import check_pdf_password

if TYPE_CHECKING:
    from tokembed.encode import EncodeJob


def checked_job(job: EncodeJob) -> EncodeJob:
    """``job`` with ``inputs`` a list of ``Path``, ``output`` a ``Path`` and its counts ints; every option checked."""
    from tokembed.index.lock import check_wait

    if not isinstance(job.sources, SourceOptions):
        raise UsageError(f"sources: expected a SourceOptions, got {type(job.sources).__name__}")
    job = replace(job, inputs=_input_paths(job.inputs), output=require_index_path(job.output, "output"),
                  batch_tokens=whole_count("--batch-tokens", job.batch_tokens, 1),
                  shard_rows=whole_count("--shard-rows", job.shard_rows, 1), flags=checked_flags(job.flags),
                  nbits=_nbits(job.nbits))
    if job.on_error not in ("fail", "skip"):
        raise UsageError(f"--on-error must be fail or skip; got {job.on_error!r}")
    if job.engine not in ("local", "ray"):
        raise UsageError(f"--engine must be local or ray; got {job.engine!r}")
    if job.ray_address is not None and job.engine != "ray":
        raise UsageError(f"--ray-address {job.ray_address}: only --engine ray connects to a cluster (--engine is {job.engine})",
                         hint="add --engine ray, or leave --ray-address out")
    check_pdf_password(job.sources.pdf_password)
    check_wait(job.wait_seconds)
    _refuse_retrain_without_structure(job)
    return job


def check_inputs(job: EncodeJob) -> None:
    """Every input there and a kind a reader takes, none given twice, their ids from one source (``job.sources.walks``:
    the run's walks)."""
    _refuse_output_as_input(job)  # before its walk, which leaves the output folder out: "holds no files"
    for path in job.inputs:  # before the model loads: a mistyped path is said in a moment, not after seconds
        check_input(path)
    refuse_inputs_given_twice(job.inputs, job.sources.walks)
    refuse_mixed_ids(job.inputs, job.sources)


def _refuse_output_as_input(job: EncodeJob) -> None:
    """The index folder is an input folder: its files would go among the documents, and the walk that leaves the
    run's own index out (``files.FolderWalks``) would read none of them. One inside an input folder is left out."""
    output = file_key(job.output)
    for path in job.inputs:
        if output is not None and path.is_dir() and file_key(path) == output:
            raise UsageError(f"--output {job.output}: the input folder {path} itself; the index's files would be "
                             "written among the documents", hint="give another folder (one inside the input folder is "
                             "left out of the run's reading)")


def _input_paths(inputs) -> list[Path]:
    """``inputs`` as a list of paths: one path alone is the only input (a str is not read as its characters)."""
    if isinstance(inputs, (str, os.PathLike)):
        return [_input_path("inputs", inputs)]
    if isinstance(inputs, bytes) or not isinstance(inputs, Iterable):
        raise UsageError(f"inputs: expected a list of file or folder paths, got {type(inputs).__name__}")
    return [_input_path(f"inputs[{i}]", path) for i, path in enumerate(inputs)]


def _input_path(what: str, path) -> Path:
    if isinstance(path, (str, os.PathLike)):
        refuse_misread_path(path, what)
        return Path(path)
    raise UsageError(f"{what}: expected a file or folder path (str or Path), got {type(path).__name__}")


def _nbits(nbits) -> int | None:
    """``--nbits`` as a Python int, None (not given: the index's structure, if any, kept) as is."""
    if nbits is None:
        return None
    from tokembed.search.plaid.codec import checked_nbits  # imports the structure's search (~80 ms): only when asked

    return checked_nbits(nbits)


def _refuse_retrain_without_structure(job: EncodeJob) -> None:
    """``--retrain`` where no run builds a search structure was silently ignored: exit 2, as other flags that
    cannot apply are."""
    from tokembed.errors import IndexCorruptError
    from tokembed.index.format import SEARCH, SEARCH_SETTINGS
    from tokembed.index.reader import read_manifest

    if not job.retrain or job.nbits is not None or job.drop_vectors or (job.output / "plaid").is_dir():
        return
    try:
        committed = read_manifest(job.output)
    except (IndexCorruptError, OSError):  # the run itself says what is wrong with it
        return
    if not committed or not (committed.get(SEARCH) or committed.get(SEARCH_SETTINGS)):
        raise UsageError(f"--retrain: {job.output} has no search structure to train centroids for",
                         hint="add --nbits 1|2|4 to build one in this run, or leave --retrain out")
