"""The run journal: what an unfinished run has durably written, so the next run can resume.

``INDEX_DIR/run-journal.json`` is rewritten atomically each time a shard is finished. It records what
the run was (settings fingerprint, the inputs' names, sizes and mtimes, the manifest it started from)
and, per finished shard, its manifest entry and how many source chunks it covers. A later run with the
same signature verifies those shards by sha256 and continues after them; any other run discards it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tokembed.index.atomic import atomic_write_bytes, sha256_file

JOURNAL = "run-journal.json"


def input_signature(inputs: list[Path], output: Path | None = None) -> list[list]:
    """Name, size and mtime of every input file (a changed corpus invalidates a journal); the files of the
    ``output`` index are not inputs, even when it lies inside an input folder (they change as the run goes)."""
    from tokembed.sources.base import walk_files

    entries = []
    for path in inputs:
        files = [path] if path.is_file() else walk_files(path, skip=output)
        for file in files:
            try:
                stat = file.stat()
            except OSError:  # a link to a file that is gone: a bad row of the run, no signature of its own
                continue
            entries.append([str(file), stat.st_size, stat.st_mtime_ns])
    return entries


@dataclass
class Journal:
    folder: Path
    signature: dict
    shards: list[dict] = field(default_factory=list)  # manifest shard entries, in order
    chunks_done: int = 0  # source chunks fully covered by the finished shards
    skipped: list[dict] = field(default_factory=list)  # bad rows met within those chunks
    counts: dict = field(default_factory=dict)  # added / updated / unchanged within those chunks

    @property
    def path(self) -> Path:
        return self.folder / JOURNAL

    def record(self, shard: dict, chunks_done: int, skipped: list[dict], counts: dict) -> None:
        self.shards.append(shard)
        self.chunks_done = chunks_done
        self.skipped = list(skipped)
        self.counts = dict(counts)
        payload = {
            "signature": self.signature,
            "shards": self.shards,
            "chunks_done": self.chunks_done,
            "skipped": self.skipped,
            "counts": self.counts,
        }
        atomic_write_bytes(self.path, json.dumps(payload).encode())

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def resume_journal(folder: Path, signature: dict) -> Journal:
    """The journal to continue: the previous run's if it matches and its shards verify, else a fresh one."""
    fresh = Journal(folder, signature)
    path = folder / JOURNAL
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return fresh
    if data.get("signature") != signature:
        return fresh
    for shard in data.get("shards", []):
        file = folder / shard["file"]
        if not file.is_file() or file.stat().st_size != shard["bytes"] or sha256_file(file) != shard["sha256"]:
            return fresh
    return Journal(folder, signature, data["shards"], data["chunks_done"], data.get("skipped", []), data.get("counts", {}))
