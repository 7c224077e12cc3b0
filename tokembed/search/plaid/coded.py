"""``encode`` runs and the search structure: plain indexes, compressed-only ones, ``--drop-vectors``.

An incremental run on a compressed-only index (the nightly cron on an index ``compress --drop-vectors``
made) stays compressed-only and never needs the vectors it no longer has:

* ``CodedPrevious``: the committed generation as ``PreviousIndex`` reads it, except that an unchanged row
  (same id, same content hash) brings its codes (centroid ids, packed residuals), not vectors;
* ``CodedWriter``: an ``IndexWriter`` whose shards have no ``embeddings`` column. It copies a carried row's
  codes and codes a new or changed row with the committed codec, from its vectors cast to the stored dtype
  exactly as a shard would have held them, and writes each shard's code file, under the name
  ``refresh_structure`` looks for, as the shard closes (before the journal records the shard);
* ``refresh_structure`` then finds every code file on disk and only assembles the ``search`` section.

So the codes are those of a full rebuild coded with the same centroids, dropped afterwards (tested byte for
byte). A full run (``--full``, or a changed model or setting) on a compressed-only index, and any run with
``--drop-vectors``, writes shards with vectors, codes them as usual, then drops the vectors before the
commit (``drop.py``): the index stays compressed-only, at the price of the new generation's vectors on
disk until the commit. Retraining needs vectors: an incremental run on a compressed-only index refuses
``--retrain`` or another ``--nbits`` before encoding anything (``encode --full`` can retrain).

Retraining needs faiss too (the ``[search]`` extra): ``refuse_training_without_kmeans`` refuses, before
anything is encoded, a run that must train without it; a retrain drift alone calls for keeps the centroids.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tokembed.index.atomic import remove_unused
from tokembed.index.format import MANIFEST, SEARCH, SEARCH_SETTINGS, vectors_dropped
from tokembed.index.previous import PreviousIndex
from tokembed.index.writer import IndexWriter
from tokembed.search.plaid.codes import CodeParts, CodingStats, StoredCodes, assemble, codes_name, vector_lengths
from tokembed.search.plaid.files import (check_structure_lists_shards, coding_figures_path, committed_generation,
                                         write_coding_figures, written_whole)


@dataclass(frozen=True)
class CodedRow:
    """A carried row of a compressed-only index: its codes instead of its vectors."""

    centroid_ids: np.ndarray  # [n] uint16
    residuals: np.ndarray  # [n, code bytes] uint8
    norms: np.ndarray | None = None  # [n] float16, where the codec keeps the vectors' lengths

    def __len__(self) -> int:  # tokens, as len(vectors) counts them
        return len(self.centroid_ids)


def previous_index(index, nbits: int | None, retrain: bool) -> PreviousIndex:
    """The committed index an incremental run carries rows from: a ``CodedPrevious`` when it is compressed-only
    (after refusing what would need its vectors, before anything is encoded). Its files are checked first."""
    check_before_carrying(index)
    if not vectors_dropped(index.manifest):
        return PreviousIndex(index)
    from tokembed.search.plaid.retrain import keep_centroids_without_vectors, refuse_unit_codes_without_vectors
    from tokembed.search.plaid.codec import needs_vector_norms

    structure = index.manifest[SEARCH]
    if needs_vector_norms(index.manifest) and not structure.get("vector_norms"):
        refuse_unit_codes_without_vectors(index.folder, True)  # raises: an earlier release's unit-length codes
    asked = _retrain_asked(structure, nbits, retrain)
    if asked is not None:
        keep_centroids_without_vectors(index.folder, asked, False, print)  # raises VectorsDroppedError
    return CodedPrevious(index)


def refuse_training_without_kmeans(folder: Path, committed: dict | None, encoding: tuple[str, str | None],
                                   nbits: int | None, retrain: bool, drop_vectors: bool) -> None:
    """Before anything is encoded: a run whose structure must train centroids is refused (exit 2) where faiss is
    not installed; it encoded every row, then failed in k-means and committed nothing. ``committed``: the
    manifest this run replaces (None: none, or unreadable); ``encoding``: this run's settings fingerprint and
    weights sha256. A retrain only drift calls for is not refused: ``refresh_structure`` keeps the centroids."""
    from tokembed.search.plaid.retrain import same_encoding

    settings_fp, weights = encoding
    this_run = {"settings_fingerprint": settings_fp, "model": {"weights_sha256": weights}}  # its manifest will say so
    reason = _training_reason(committed, committed is not None and same_encoding(committed, this_run), nbits, retrain,
                              drop_vectors)
    if reason is not None:
        from tokembed.search.plaid.codec import require_kmeans

        require_kmeans(f"{folder}: {reason}")


def _training_reason(committed: dict | None, same_encoding: bool, nbits: int | None, retrain: bool,
                     drop_vectors: bool) -> str | None:
    """Why ``run_structure`` will train centroids whatever drift says (None: it keeps the committed ones, or
    builds no structure)."""
    from tokembed.search.plaid.codec import needs_vector_norms

    structure = (committed or {}).get(SEARCH)
    if structure is None:
        built = nbits is not None or drop_vectors or (committed or {}).get(SEARCH_SETTINGS)
        return "a new search structure" if built else None
    if not same_encoding:
        return "the model or an encoding setting changed: the search structure needs new centroids"
    if needs_vector_norms(committed) and not structure.get("vector_norms"):
        return "the codes of an earlier release keep no vector lengths: the search structure needs new centroids"
    return _retrain_asked(structure, nbits, retrain)


def _retrain_asked(structure: dict, nbits: int | None, retrain: bool) -> str | None:
    """``--retrain``, or an ``--nbits`` other than ``structure``'s, as the reason for new centroids (None: neither)."""
    from tokembed.search.plaid.retrain import StructureOptions, drift_only, retrain_reason

    nbits, options = nbits or structure["nbits"], StructureOptions(nbits, retrain=retrain)
    return None if drift_only(structure, nbits, options) else retrain_reason(structure, nbits, options)


def check_before_carrying(index) -> None:
    """Every shard and structure file against its sha256 in the manifest (each hashed once per change of its stat
    key, ``index.verified``): an incremental run copies its rows and codes byte for byte into a generation whose
    manifest gives them fresh checksums, so a damaged row carried would be vouched for from then on."""
    from tokembed.errors import IndexCorruptError
    from tokembed.search.plaid.files import verify_files

    try:
        for shard in index.shards:
            index.verify_shard(shard, checksum=True, remembered=True)
        structure = index.manifest.get(SEARCH)
        if structure:
            verify_files(index.folder, [structure["codec"], *structure["shards"]], checksum=True)
    except IndexCorruptError as exc:
        exc.hint = "its rows cannot be carried over: tokembed encode --full rebuilds the index from the corpus"
        raise


def open_writer(folder: Path, dim: int, store_dtype: str, shard_rows: int, previous) -> IndexWriter:
    if isinstance(previous, CodedPrevious):
        return CodedWriter(folder, dim, store_dtype, shard_rows, previous)
    return IndexWriter(folder, dim, store_dtype, shard_rows=shard_rows)


def run_structure(folder: Path, manifest: dict, committed: dict | None, previous, writer, nbits: int | None,
                  retrain: bool, drop_vectors: bool, log, replaced=None) -> dict:
    """The new generation's manifest with its search structure (if the index has one, or ``nbits`` or
    ``drop_vectors`` asks for one), without vectors when the index was compressed-only or ``drop_vectors``.
    ``committed``: the manifest of the generation this run replaces, None where there is none or a full rebuild
    could not read it (``--full`` is how a damaged index is rebuilt: its structure then comes back with ``--nbits``);
    ``replaced``: its ``PreviousIndex``, whose rows a full rebuild codes to the same codes again count as carried
    (a compressed-only index's shards are written anew, so no shard keeps its code file by name)."""
    from tokembed.search.plaid.build import DEFAULT_NBITS, StructureOptions, centroids_choice, refresh_structure
    from tokembed.search.plaid.drop import drop_vectors as without_vectors

    remembered = (committed or {}).get(SEARCH_SETTINGS) or {}
    drop = drop_vectors or vectors_dropped(committed) or bool(remembered.get("drop_vectors"))
    if manifest["totals"]["tokens"] == 0 and (nbits is not None or (committed or {}).get(SEARCH) or remembered):
        # nothing to train on; centroids of rows that are gone would be kept for the next rows: none are
        settings = {"nbits": nbits or ((committed or {}).get(SEARCH) or remembered)["nbits"], "drop_vectors": drop}
        asked = centroids_choice(committed)  # a --centroids choice applies again once rows come back
        if asked is not None:
            settings["centroids_asked"] = asked
        log("the index holds no tokens: no search structure until a run brings rows, which builds it again")
        return {**{key: value for key, value in manifest.items() if key != SEARCH}, SEARCH_SETTINGS: settings}
    nbits = nbits or remembered.get("nbits")
    if nbits is None and drop and not (committed or {}).get(SEARCH):
        nbits = DEFAULT_NBITS  # codes are all a compressed-only index has
    if nbits is None and not (folder / "plaid").is_dir():
        return manifest
    if nbits is None and committed is None and (folder / MANIFEST).exists():  # --full over a damaged one
        log("the index this run replaces could not be read: its search structure is not rebuilt "
            "(tokembed compress, or --nbits, builds one)")
        return manifest
    written = writer.stats if isinstance(writer, CodedWriter) else None
    manifest = refresh_structure(folder, manifest, committed, StructureOptions(nbits, retrain=retrain), previous, log,
                                 written, replaced=replaced)
    if drop and manifest.get(SEARCH) and not vectors_dropped(manifest):
        from tokembed.search.plaid.compress import forget_interrupted_encode

        forget_interrupted_encode(folder)  # its shards are this run's, now dropped: nothing to resume
        manifest = without_vectors(folder, manifest, log)
    return manifest


class CodedPrevious(PreviousIndex):
    """A compressed-only committed index: ``carried_row`` gives (``CodedRow``, token ids)."""

    def __init__(self, index) -> None:
        from tokembed.search.plaid.build import load_codec

        super().__init__(index)
        structure = index.manifest[SEARCH]
        check_structure_lists_shards(index.folder, index.manifest)
        self.codec = load_codec(index.folder, structure, index)
        self.codec_sha = structure["codec"]["sha256"]
        self.codes = StoredCodes(index.folder, structure["shards"])

    def carried_row(self, row: int) -> tuple:
        return CodedRow(*self.codes.row_codes(row), self.codes.row_norms(row)), self.token_ids(row)


class CodedWriter(IndexWriter):
    """Shards without vectors, each with its code file (see the module docstring)."""

    def __init__(self, folder: Path, dim: int, store_dtype: str, shard_rows: int, previous: CodedPrevious) -> None:
        from tokembed.index.format import vectorless_schema

        super().__init__(folder, dim, store_dtype, shard_rows=shard_rows)
        self.schema = vectorless_schema(self.schema)
        self.store_dtype = np.dtype(store_dtype)
        self.codec, self.codec_sha = previous.codec, previous.codec_sha
        self.committed_codes = {entry["file"] for entry in previous.index.manifest[SEARCH]["shards"]}  # checked before carrying
        self.replacing = committed_generation(folder)
        self.stats = CodingStats()  # the run's, shard by shard as each closes
        self._shard = CodingStats()  # the open shard's
        self._parts = CodeParts()
        self._code_files: list[Path] = []

    def write(self, ids, vectors, token_ids, hashes, source_files=None, pages=None):
        if ids:
            self._code(vectors)  # before the write: it may close the shard, which needs these codes
        return super().write(ids, vectors, token_ids, hashes, source_files, pages)

    def _code(self, rows: list) -> None:
        """Append the codes of ``rows`` (each a ``CodedRow`` or a [n, D] matrix) to the open shard's."""
        lengths = np.fromiter((len(row) for row in rows), dtype=np.int64, count=len(rows))
        starts = np.concatenate([[0], np.cumsum(lengths)])
        ids = np.empty(int(starts[-1]), np.uint16)
        residuals = np.empty((int(starts[-1]), self.codec.code_bytes), np.uint8)
        lengths_kept = np.empty(int(starts[-1]), np.float16) if self.codec.vector_norms else None
        fresh = []
        for row, start, end in zip(rows, starts[:-1], starts[1:]):
            if isinstance(row, CodedRow):
                ids[start:end], residuals[start:end] = row.centroid_ids, row.residuals
                if lengths_kept is not None:
                    lengths_kept[start:end] = row.norms  # the previous codec kept them too (the same codec)
            elif end > start:
                fresh.append((start, end, row))
        if fresh:
            where = np.concatenate([np.arange(start, end) for start, end, _ in fresh])
            stored = np.concatenate([np.asarray(row, self.store_dtype) for _, _, row in fresh])  # as a shard holds it
            ids[where], residuals[where], norms = self.codec.encode(stored)
            if lengths_kept is not None:
                lengths_kept[where] = vector_lengths(stored)
            self._shard.coded_tokens += len(where)
            self._shard.residual_norm_sum += float(norms.sum(dtype=np.float64))
        self._shard.carried_tokens += int(starts[-1]) - sum(end - start for start, end, _ in fresh)
        self._parts.lengths.append(lengths)
        self._parts.ids.append(ids)
        self._parts.residuals.append(residuals)
        if lengths_kept is not None:
            self._parts.norms.append(lengths_kept)

    def close_shard(self):
        info = super().close_shard()
        if info is not None:
            name = codes_name(info.sha256, self.codec_sha)
            if name not in self.committed_codes and written_whole(self.folder, name, self.replacing) is None:  # else: these codes already
                path = self.folder / name
                entry = assemble(self._parts, self.codec).write(path)
                write_coding_figures(path, self._shard.coded_tokens, self._shard.residual_norm_sum, entry, self.replacing)
                self._code_files.append(path)
            self.stats.add(self._shard)
            self._parts, self._shard = CodeParts(), CodingStats()
        return info

    def abort(self, keep_finished: bool = False) -> None:
        super().abort(keep_finished)
        if not keep_finished:  # kept, a finished shard keeps its code file: a resumed run needs both
            for path in self._code_files:
                remove_unused(path)
                remove_unused(coding_figures_path(path))
        self._code_files.clear()
