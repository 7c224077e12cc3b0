"""Structure files: safetensors written atomically, read back memory-mapped (zero-copy numpy views).

safetensors is a header (8-byte length + JSON: dtype, shape, byte range per tensor) followed by the raw
tensors, so a reader maps the file and takes ``np.frombuffer`` views; pages are read when touched. The
writer (``safetensors.numpy.save``) emits the same bytes for the same arrays, which is what lets an
incremental run's code files be compared with a rebuild's byte for byte.
"""

from __future__ import annotations

import json
import mmap
import os
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path

import numpy as np

from tokembed.errors import IndexCorruptError
from tokembed.index.atomic import atomic_write_bytes, replacing, sha256_file, write_error
from tokembed.index.format import MANIFEST
from tokembed.open_files import descriptors_named

_DTYPES = {"U8": np.uint8, "U16": np.uint16, "U32": np.uint32, "I64": np.int64, "F16": np.float16, "F32": np.float32, "F64": np.float64}


def write_tensors(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> dict:
    """Write durably (temp, fsync, rename); returns the manifest entry (bytes, sha256).

    ``save_file`` writes the tensors straight to the file (the bytes ``save`` would return, without that
    copy of them in memory); the sha256 is read back from the page cache: 0.06 vs 0.11 s for a 36 MB file."""
    from safetensors.numpy import save_file

    from safetensors import SafetensorError

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # out of inodes, or a file or a dangling link named so
        raise write_error(path.parent, exc, f"{path.parent}: cannot create the folder ({exc.strerror or exc})") from exc
    with replacing(path) as tmp:
        try:
            save_file({name: np.ascontiguousarray(array) for name, array in tensors.items()}, str(tmp), metadata=metadata)
        except SafetensorError as exc:  # a full disk, say: safetensors' own error, not an OSError
            raise write_error(path, exc, f"{path}: cannot write the structure file ({exc})") from exc
        tmp.chmod(0o666 & ~_umask())  # safetensors creates it 0600 whatever the umask: other users could not search
        entry = {"bytes": tmp.stat().st_size, "sha256": sha256_file(tmp)}
    return entry


def _umask() -> int:
    """The process's umask, read without setting it (``os.umask`` would, for an instant, for every thread)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def map_tensors(path: Path, opened=None) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read-only zero-copy views of every tensor in a safetensors file, and its metadata; ``opened``: that file
    already open (the one ``verify_files`` checked), mapped instead of whatever is at ``path`` now."""
    try:
        with descriptors_named(path), _open_named(path) if opened is None else nullcontext(opened) as handle:
            mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)  # holds a descriptor of its own
    except (OSError, ValueError) as exc:
        raise IndexCorruptError(f"{path}: cannot map the file ({exc})") from exc
    try:
        length = int.from_bytes(mapped[:8], "little")
        header = json.loads(mapped[8 : 8 + length])
        base = 8 + length
        tensors = {}
        for name, spec in header.items():
            if name == "__metadata__":
                continue
            dtype = np.dtype(_DTYPES[spec["dtype"]])
            begin, end = spec["data_offsets"]
            if base + end > len(mapped):
                raise ValueError(f"tensor {name} runs past the end of the file")
            array = np.frombuffer(mapped, dtype, count=(end - begin) // dtype.itemsize, offset=base + begin)
            tensors[name] = array.reshape(spec["shape"])
        return tensors, header.get("__metadata__", {})
    except (ValueError, KeyError, TypeError) as exc:
        raise IndexCorruptError(f"{path}: not a readable tensor file ({exc})") from exc


def verify_files(folder: Path, entries: list[dict], checksum: bool, remembered: bool = True, opened=None,
                 pending: list | None = None) -> None:
    """``verify_file`` for many files: sizes first, then the sha256 of each file not already found to match
    and unchanged since (``VerifiedFiles``; every file when not ``remembered``), in a thread pool (hashlib
    releases the GIL, so the cores hash different files at once: a 1M-document index holds ~2 GB of them).
    ``opened`` (``held_open``): the files the caller maps are checked, not those at their paths now. The files
    that matched are recorded at once, or added to ``pending`` for a caller checking files group by group to
    record once (each recording reads and rewrites the whole record)."""
    from concurrent.futures import ThreadPoolExecutor

    from tokembed.index.verified import VerifiedFiles, stat_key

    with _named_read_errors(folder):
        for entry in entries:
            verify_file(folder, entry, checksum=False, opened=opened)
    if not checksum or not entries:
        return
    record = VerifiedFiles(folder) if remembered else None
    with _named_read_errors(folder):  # a commit that replaced the generation since: the caller reads the manifest again
        keys = [stat_key(_source(folder, entry, opened)) for entry in entries]  # before hashing: a change while hashing shows
        todo = [(entry, key) for entry, key in zip(entries, keys) if not (record and record.known(entry["file"], key, entry["sha256"]))]
        if not todo:
            return
        with ThreadPoolExecutor(min(len(todo), os.cpu_count() or 1)) as pool:
            digests = list(pool.map(lambda item: sha256_file(_source(folder, item[0], opened)), todo))
    for (entry, key), digest in zip(todo, digests):
        if digest != entry["sha256"]:
            raise IndexCorruptError(f"{folder / entry['file']}: sha256 does not match the manifest")
    matched = [(entry["file"], key, digest) for (entry, key), digest in zip(todo, digests)]
    if pending is not None:
        pending.extend(matched)
    else:
        (record or VerifiedFiles(folder)).remember(matched)


@contextmanager
def _named_read_errors(folder: Path):
    """A file of ``folder`` gone is missing (a commit that replaced the generation since: the caller reads the manifest
    again); one there but refused (EACCES) is ``read_error``'s, never missing or corrupt."""
    from tokembed.index.reader import read_error

    try:
        yield
    except FileNotFoundError as exc:
        raise IndexCorruptError(f"{folder}: manifest lists {Path(exc.filename or '?').name}, which is missing") from None
    except OSError as exc:
        if exc.filename is None:
            raise
        raise read_error(exc.filename, exc) from None


def verify_file(folder: Path, entry: dict, checksum: bool, opened=None) -> None:
    """Raise ``IndexCorruptError`` when a listed structure file is missing, truncated or altered (``opened``: as
    ``verify_files``)."""
    path, source = folder / entry["file"], _source(folder, entry, opened)
    with _named_read_errors(folder):  # there but refused (EACCES): a read error, whoever calls
        try:
            size = os.stat(source).st_size
        except FileNotFoundError:
            raise IndexCorruptError(f"{folder}: manifest lists {entry['file']}, which is missing") from None
        if size != entry["bytes"]:
            raise IndexCorruptError(f"{path}: {size} bytes on disk, manifest says {entry['bytes']}")
        if checksum and sha256_file(source) != entry["sha256"]:
            raise IndexCorruptError(f"{path}: sha256 does not match the manifest")


def _source(folder: Path, entry: dict, opened) -> Path | int:
    """What to check of a listed file: the descriptor of the one the caller holds open, else its path."""
    return folder / entry["file"] if opened is None else opened[entry["file"]].fileno()


@contextmanager
def held_open(folder: Path, entries: list[dict]):
    """Each listed file opened once for the block (name -> open file), to check and map the very same files
    while a deploy swaps the folder; closed after it (a map keeps its file)."""
    with ExitStack() as stack:
        with _named_read_errors(folder):
            opened = {entry["file"]: stack.enter_context(_open_named(folder / entry["file"])) for entry in entries}
        yield opened


def _open_named(path: Path):
    """``path`` open for reading; there but refused (EACCES, EMFILE) is ``read_error``'s, missing is the caller's."""
    from tokembed.index.reader import read_error

    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise read_error(path, exc) from None


def check_structure_lists_shards(folder: Path, manifest: dict) -> None:
    """The manifest's ``search`` section must list exactly its shards, in order (else the index is corrupt)."""
    if [entry["shard"] for entry in manifest["search"]["shards"]] != [shard["file"] for shard in manifest["shards"]]:
        raise IndexCorruptError(f"{folder}: the search structure does not list the manifest's shards")


def check_codec_agrees(path: Path, tensors: dict, metadata: dict, structure: dict, index) -> None:
    """The manifest's nbits, centroid count and dim are those of its codec (``path``, mapped: ``map_tensors``), whose
    centroids have the dim of ``index`` (an ``Index``): search and the runs that code with it use the codec's, so a
    manifest that says otherwise is corrupt (info would report what search does not do; a run would record codes of
    one width under another; queries of one dim would be scored against centroids of another)."""
    try:
        centroids = tensors["centroids"]
        found = {"nbits": int(metadata["nbits"]), "centroids": len(centroids), "dim": centroids.shape[1]}
    except (KeyError, ValueError, TypeError, IndexError) as exc:
        raise IndexCorruptError(f"{path}: not a codec file (no {exc})") from None
    said = {"nbits": structure["nbits"], "centroids": structure["centroids"], "dim": structure.get("dim", found["dim"])}
    differ = [name for name, value in found.items() if said[name] != value]
    if differ:
        has = ", ".join(f"{name} {found[name]}" for name in differ)
        says = ", ".join(f"{name} {said[name]}" for name in differ)
        raise IndexCorruptError(f"{path}: the codec has {has}; the manifest says {says}")
    if found["dim"] != index.dim:
        for shard in index.shards:  # the manifest's dim may be the one that is wrong: its shards' vectors say
            index.verify_shard(shard, checksum=False)
        raise IndexCorruptError(f"{path}: the codec has dim {found['dim']}; the manifest says the index's vectors have dim {index.dim}")


def write_coding_figures(code_file: Path, coded_tokens: int, residual_norm_sum: float, entry: dict,
                         generation: str | None) -> None:
    """Beside a code file, once it is written whole: its ``entry`` (bytes, sha256), how many of its tokens this
    run coded (the rest were carried) and ``generation``, the one the run replaces (``committed_generation``), so
    that a run resuming after a crash keeps the file only while its bytes are the ones written and nothing was
    committed since (``written_whole``), and counts its tokens as coded, not carried (the manifest's drift)."""
    data = {"coded_tokens": coded_tokens, "residual_norm_sum": residual_norm_sum,
            "bytes": entry["bytes"], "sha256": entry["sha256"], "replacing": generation}
    atomic_write_bytes(coding_figures_path(code_file), json.dumps(data).encode())


def written_whole(folder: Path, name: str, generation: str | None) -> dict | None:
    """The coding figures of the code file ``name`` (relative to the index ``folder``) that a run replacing the
    committed ``generation`` (this one, or one killed before its commit) wrote whole and that still has the bytes it
    was written with; None for any other file under that name, to code again: no figures (a committed file, an older
    release's leftover, a run killed before it wrote them), figures of a run that committed (killed before its
    clean-up removed them: its tokens are in the committed drift already), or bytes changed since (bit rot)."""
    try:
        data = json.loads(coding_figures_path(folder / name).read_text())
        if data["replacing"] != generation:
            return None
        figures = {"coded_tokens": int(data["coded_tokens"]), "residual_norm_sum": float(data["residual_norm_sum"]),
                   "bytes": int(data["bytes"]), "sha256": str(data["sha256"])}
        verify_files(folder, [{"file": name, "bytes": figures["bytes"], "sha256": figures["sha256"]}], checksum=True)
    except (OSError, ValueError, KeyError, TypeError, IndexCorruptError):
        return None
    return figures


def committed_generation(folder: Path) -> str | None:
    """The sha256 of the index's committed manifest (None: none on disk, or unreadable): the generation a run
    replaces, read once per run under the writer lock. Every commit replaces the manifest, so code files whose
    figures name another generation were written by a run that committed since, or by one replacing another (a
    commit of the very same bytes would change nothing a run codes against)."""
    try:
        return sha256_file(folder / MANIFEST)
    except OSError:
        return None


def coding_figures_path(code_file: Path) -> Path:
    """Where ``write_coding_figures`` keeps a code file's figures (removed with the unlisted files at commit)."""
    return code_file.with_name(code_file.name + ".coded.json")
