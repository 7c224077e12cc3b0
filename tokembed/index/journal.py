"""The run journal: what an unfinished run has durably written, so the next run can resume.

``INDEX_DIR/run-journal.json`` records, as each shard is finished (one line appended, ``index.journal_lines``), what
the run was (settings fingerprint, weights digest, the inputs' names, sizes and mtimes, the manifest it
replaces) and, per finished shard, its manifest entry and how many source chunks it covers. A later run with
the same signature checks the seal of each of its lines (``index.sealed``) and their chain, then those shards (each
listed once, in order, its size, sha256, rows and tokens those of its file) and continues after them, checking as
it reads their chunks that they hold the same rows (``plan.plan_chunks``: the journal records a digest of each
chunk's ids and content hashes); any other run discards it, with the shards it lists that no manifest lists (as a
run that fails does with its own).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tokembed.index.atomic import atomic_write_bytes, sha256_file
from tokembed.index.format import DATA_DIR, SHARD_PATTERN
from tokembed.index.journal_lines import (
    append_line, counts_added, entry_bytes, header_bytes, line_digest, listed_shards, read_journal,
)

JOURNAL = "run-journal.json"
# Journaled counts that a resumed run's summary keeps apart from its own (``encode.EncodeSummary``): the tokens
# the interrupted run(s) put through the model count in the generation's useful-token fraction, not in this run's
# encoded tokens and tokens/s.
_RESUMED_FIELDS = {"tokens_in": "resumed_tokens_in", "computed_tokens": "resumed_computed_tokens"}


def input_signature(inputs: list[Path], output: Path | None = None, walks=None) -> list[list]:
    """Name, size and mtime of every input file (a changed corpus invalidates a journal); the files of the
    ``output`` index are not inputs, even when it lies inside an input folder (they change as the run goes)."""
    from tokembed.sources.files import files_of

    entries = []
    for path in inputs:
        files = [path] if path.is_file() else files_of(path, walks, skip=output)
        for file in files:
            try:
                stat = file.stat()
            except OSError:  # a link to a file that is gone: a bad row of the run, no signature of its own
                continue
            entries.append([str(file), stat.st_size, stat.st_mtime_ns])
    return entries


def run_signature(job, weights_sha256: str, settings_fp: str, previous, replaced) -> dict:
    """What a run's shards are made from (``encode.EncodeJob``): a journal is resumed only when all of it is the
    same. ``replaced``: the committed index the run replaces; ``previous``: the same when the run carries its rows
    over, None for a full rebuild."""
    sources = job.sources
    pdf = [sources.pdf_dpi, sources.pdf_column if sources.pdf_column_given else None, sources.pdf_password is not None]
    # a column given, not the default's name: an explicit one must exist, and it decides between image and video
    media = [sources.modality, sources.max_image_pixels, sources.image_column, sources.image_column_given,
             sources.video_column, sources.video_column_given]
    return {
        "settings_fingerprint": settings_fp,
        "weights_sha256": weights_sha256,  # the model fingerprint samples the weight files' edges only
        "inputs": input_signature(job.inputs, job.output, job.sources.walks),
        "sources": [sources.id_column, sources.text_column, sources.chunk_rows, *pdf, *media],
        # not the index the run started from: a run killed after its commit left the journal of the one it replaces
        "base": replaced.index.manifest.get("created_at") if replaced else None,
        "base_fingerprint": previous.index.manifest.get("settings_fingerprint") if previous else None,
        "shard_rows": job.shard_rows,
        "batch_tokens": job.batch_tokens,
        "on_error": job.on_error,
    }


@dataclass
class Journal:
    folder: Path
    signature: dict
    shards: list[dict] = field(default_factory=list)  # manifest shard entries, in order
    chunks_done: int = 0  # source chunks fully covered by the finished shards
    skipped: list[dict] = field(default_factory=list)  # bad rows met within those chunks
    counts: dict = field(default_factory=dict)  # added / updated / unchanged within those chunks
    chunk_digests: list[str] = field(default_factory=list)  # plan.chunk_digest of every chunk planned so far
    tail: str | None = None  # line_digest of the journal's last line, once this run wrote it

    @property
    def path(self) -> Path:
        return self.folder / JOURNAL

    @property
    def rows_done(self) -> int:
        """Source rows the finished shards cover: the rows they hold and the bad rows skipped among them."""
        return sum(shard["rows"] for shard in self.shards) + len(self.skipped)

    def rows_left(self, total: int | None) -> int | None:
        """Of the corpus's ``total`` rows (None: not known), those after the finished shards: a resumed run's
        progress total (it reads past the shards' rows without advancing its progress)."""
        return None if total is None else max(0, total - self.rows_done)

    def record(self, shard: dict, chunks_done: int, skipped: list[dict], counts: dict) -> None:
        """Record a finished shard durably: one line appended, the whole journal only at the run's first shard."""
        entry = self._entry(shard, chunks_done, skipped, counts)
        self.shards.append(shard)
        self.chunks_done = chunks_done
        self.skipped = list(skipped)
        self.counts = dict(counts)
        if entry is None:
            self._write_whole()
        else:
            self._append(entry)

    def _entry(self, shard: dict, chunks_done: int, skipped: list[dict], counts: dict) -> dict | None:
        """The line's content: what recording ``shard`` adds to the journal; None before this run wrote the
        journal (it resumes another's, or a line failed) or where ``skipped`` or ``counts`` do not extend the
        recorded ones."""
        if self.tail is None:
            return None
        added = counts_added(self.counts, counts)
        if added is None or len(skipped) < len(self.skipped):
            return None
        digests = self.chunk_digests[self.chunks_done:chunks_done]
        return {"shard": shard, "chunks_done": chunks_done, "chunk_digests": digests,
                "skipped": skipped[len(self.skipped):], "counts": added}

    def _write_whole(self) -> None:
        self.tail = None
        line = header_bytes({
            "signature": self.signature,
            "shards": self.shards,
            "chunks_done": self.chunks_done,
            "skipped": self.skipped,
            "counts": self.counts,
            "chunk_digests": self.chunk_digests[: self.chunks_done],
        })
        atomic_write_bytes(self.path, line)
        self.tail = line_digest(line)

    def _append(self, entry: dict) -> None:
        line = entry_bytes(entry, self.tail)
        self.tail = None  # a failed append may leave part of the line: the next record writes the journal whole
        append_line(self.path, line)
        self.tail = line_digest(line)

    def restart(self) -> None:
        """Remove this journal and its unlisted shards, and go on as a fresh one of the same signature."""
        self.remove()
        self.shards, self.chunks_done, self.skipped, self.counts, self.chunk_digests = [], 0, [], {}, []

    def remove(self) -> None:
        """Drop the journal, and the shards it lists that the committed manifest does not (no run resumes them
        now; a run killed earlier wrote them, so its own failure's clean-up does not know them)."""
        self.path.unlink(missing_ok=True)
        self.tail = None
        remove_unlisted(self.folder, self.shards)


def continue_journal(journal: Journal, writer, summary) -> None:
    """Start the run's ``writer`` (``IndexWriter``) and ``summary`` (``encode.EncodeSummary``) after the journal's
    finished shards."""
    from tokembed.index.writer import ShardInfo

    writer.shards = [ShardInfo(**shard) for shard in journal.shards]
    summary.resumed_shards = len(journal.shards)
    summary.skipped = list(journal.skipped)
    for key, value in journal.counts.items():
        setattr(summary, _summary_field(key), value)


def restart_journal(journal: Journal, writer, summary, log) -> None:
    """The interrupted run's shards hold other rows than the inputs give now (``plan.plan_chunks`` found a chunk
    planned otherwise): remove them, and start the journal, ``writer`` and ``summary`` from the first chunk."""
    log("an interrupted run's finished shards hold other rows than the inputs give now: encoding them again")
    unstarted = type(summary)(summary.output)
    for key in ("resumed_shards", "skipped", *map(_summary_field, journal.counts)):
        setattr(summary, key, getattr(unstarted, key))
    writer.shards = []
    journal.restart()


def _summary_field(count: str) -> str:
    """The ``EncodeSummary`` field a journaled count resumes into."""
    return _RESUMED_FIELDS.get(count, count)


def remove_unlisted(folder: Path, shards: list[dict]) -> None:
    """Remove the shard files of ``shards`` (journal entries) that the committed manifest does not list; none
    when the manifest cannot be read (which of them it lists is then unknown)."""
    from tokembed.errors import IndexCorruptError
    from tokembed.index.atomic import remove_unused
    from tokembed.index.reader import read_manifest

    try:
        manifest = read_manifest(folder)
    except (IndexCorruptError, OSError):
        return
    listed = {Path(shard["file"]).name for shard in manifest["shards"]} if manifest else set()
    for shard in shards:
        name = Path(str(shard.get("file", ""))).name if isinstance(shard, dict) else ""
        if SHARD_PATTERN.match(name) and name not in listed:  # a shard's name: nothing else is ours to remove
            remove_unused(folder / DATA_DIR / name)


def journaled_shards(folder: Path) -> set[str]:
    """The shard file names the journal of an interrupted run lists (none without a readable one)."""
    try:
        shards = listed_shards((folder / JOURNAL).read_bytes())
    except OSError:
        return set()
    return {Path(str(shard.get("file", ""))).name for shard in shards if isinstance(shard, dict)}


def resume_journal(folder: Path, signature: dict) -> Journal:
    """The journal to continue: the previous run's if its seal holds, it matches and its shards verify, else a
    fresh one (the previous run's is then removed, with its shards)."""
    fresh = Journal(folder, signature)
    try:
        raw = (folder / JOURNAL).read_bytes()
    except OSError:
        return fresh
    data, intact = read_journal(raw)
    if data is None:
        return fresh
    shards, digests = data.get("shards", []), data.get("chunk_digests")
    # Without a digest per finished chunk (an earlier release's journal) its shards cannot be checked: not resumed.
    complete = isinstance(digests, list) and len(digests) == data.get("chunks_done")
    if not (intact and data.get("signature") == signature and complete and _shards_verified(folder, shards)):
        Journal(folder, data.get("signature"), listed_shards(raw)).remove()
        return fresh
    return Journal(folder, signature, shards, data["chunks_done"], data.get("skipped", []), data.get("counts", {}), digests)


def _shards_verified(folder: Path, shards) -> bool:
    """Each journaled shard is a well-formed entry naming a shard file, listed once and in the order the run wrote
    them, and is the very file it names: its size, sha256, rows and tokens."""
    if not isinstance(shards, list) or not all(_well_formed(shard) for shard in shards):
        return False
    numbers = [int(SHARD_PATTERN.match(Path(shard["file"]).name).group(1)) for shard in shards]
    return numbers == sorted(set(numbers)) and all(_verified(folder, shard) for shard in shards)


_ENTRY = {"file": str, "rows": int, "tokens": int, "bytes": int, "sha256": str}  # writer.ShardInfo's fields


def _well_formed(shard) -> bool:
    if not isinstance(shard, dict) or shard.keys() != _ENTRY.keys():
        return False
    if not all(isinstance(shard[name], kind) and not isinstance(shard[name], bool) for name, kind in _ENTRY.items()):
        return False
    parent, _, name = shard["file"].partition("/")
    return parent == DATA_DIR and SHARD_PATTERN.match(name) is not None


def _verified(folder: Path, shard: dict) -> bool:
    import pyarrow as pa

    from tokembed.errors import IndexCorruptError
    from tokembed.index.arrow_file import ShardReader
    from tokembed.index.reader import shard_counts

    file = folder / shard["file"]
    if not (file.is_file() and file.stat().st_size == shard["bytes"] and sha256_file(file) == shard["sha256"]):
        return False
    try:
        with pa.memory_map(str(file), "r") as source:
            return shard_counts(ShardReader(source, file)) == (shard["rows"], shard["tokens"])
    except (IndexCorruptError, OSError):  # not an Arrow shard with token ids
        return False
