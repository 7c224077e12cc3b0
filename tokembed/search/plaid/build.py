"""Building and refreshing the search structure of a generation, and committing it.

``compress_index`` (``tokembed compress``) adds or refreshes the structure of the committed index under the
writer lock and commits a new manifest. ``refresh_structure`` is the shared step, also called by ``encode``
between writing its shards and committing: it trains a codec (or keeps the previous one), then gives every
shard of the new generation its code file:

* a shard whose bytes did not change keeps its code file (same name, not rewritten);
* a new shard is coded row by row, copying the codes of rows the previous generation held unchanged
  (same id and content hash) and coding the others with the existing centroids; a full rebuild codes every
  row, and counts those it codes to the codes the replaced generation holds for them as carried (drift);
* a code file already on disk under its name is kept (resume) only when its ``.coded.json`` records the bytes and
  sha256 it was written with by a run that died before its commit (or this run's writer), replacing the generation
  still committed, and it still has them; any other file under that name (a committed one that a retrain's identical
  centroids name again, one left by a run killed after its commit, whose tokens the committed drift counts already,
  or one damaged since) is coded again.

Every shard read, to train or to code, is first checked against its sha256 in the manifest (once per change of
the file): the code files of a damaged shard would be committed under a manifest that vouches for them.

Training itself resumes too: the codec file and ``plaid/pending.json`` (which shards it was trained for)
are written before any code file, so a rerun over the same shards takes that codec instead of training
again. Files of the structure that the new manifest does not list are removed after the commit.

Drift, and when the centroids are trained again: ``retrain.py``.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np

from tokembed._testhooks import fault_point
from tokembed.errors import BadInputError, IndexCorruptError
from tokembed.index.atomic import atomic_write_bytes, remove_unused
from tokembed.index.format import SEARCH, SEARCH_KIND, SEARCH_SETTINGS, VECTORS, VECTORS_DROPPED, vectors_dropped
from tokembed.search.plaid import codec as codec_mod
from tokembed.search.plaid.codec import Codec
from tokembed.search.plaid.codes import CODES_DIR, CodingStats, StoredCodes, code_shard, codes_name, shard_codes_name
from tokembed.search.plaid.retrain import (RETRAIN_NORM_RATIO, RETRAIN_SHARE, StructureOptions, drift_only,
                                           keep_centroids_without_vectors, refuse_unit_codes_without_vectors,
                                           retrain_reason, same_encoding, update_drift)
from tokembed.search.plaid.files import (check_codec_agrees, check_structure_lists_shards, committed_generation,
                                         map_tensors, verify_file, verify_files, write_coding_figures, write_tensors,
                                         written_whole)

PENDING = f"{CODES_DIR}/pending.json"
DEFAULT_NBITS = 2


def refresh_structure(folder: Path, manifest: dict, committed: dict | None, options: StructureOptions, previous=None,
                      log=print, written: CodingStats | None = None, progress=None, replaced=None) -> dict:
    """The new generation's manifest with its ``search`` section; code files written, nothing committed.

    ``manifest`` lists the new generation's shards (already durable); ``committed``: the generation it replaces
    (None: none, or a full rebuild's over a manifest that could not be read); ``previous`` is the ``PreviousIndex``
    an incremental encode run carried rows from (None for ``compress`` and full rebuilds); ``replaced``, the
    ``PreviousIndex`` of ``committed`` that a full rebuild replaces: a row it codes to the very codes ``committed``
    holds for it (same id and content hash) counts as carried, not as coded since training. ``written``: the
    coding figures of an encode run that wrote vectorless shards and their code files itself
    (``coded.CodedWriter``). Without vectors (``written``, or a compressed-only ``manifest``) the centroids
    are kept: a retrain they would need is refused, one that drift calls for is only logged; so is one that
    drift calls for where faiss is not installed (a cron ``encode`` without the ``[search]`` extra).
    """
    old = (committed or {}).get(SEARCH)
    nbits = options.nbits or (old["nbits"] if old else None)
    if nbits is None:
        return manifest
    nbits = codec_mod.checked_nbits(nbits)
    index = open_generation(folder, manifest)
    if index.tokens == 0 and options.nbits is None:
        log("the index holds no tokens: no search structure (score scans exhaustively)")
        return {key: value for key, value in manifest.items() if key != SEARCH}
    if options.centroids is not None and index.tokens:  # even where the index already has that many
        codec_mod.resolve_centroids(options.centroids, index.tokens, str(folder))
    vectorless = written is not None or vectors_dropped(manifest)
    reusable = old is not None and same_encoding(committed, manifest)
    norms = codec_mod.needs_vector_norms(manifest)
    reason = retrain_reason(old, nbits, options) if reusable else "no centroids for these settings yet"
    drift_alone = reason is not None and reusable and drift_only(old, nbits, options)
    if reusable and norms and not old.get("vector_norms"):  # an earlier release's codes: unit length decoded
        refuse_unit_codes_without_vectors(folder, vectorless)
        reason, drift_alone = "the codes keep each vector's length now (this index's vectors are not unit length)", False
    if reason is not None and vectorless:
        keep_centroids_without_vectors(folder, reason, drift_alone, log)
        reason = None
    if reason is not None and drift_alone and not codec_mod.kmeans_installed():
        log(f"{reason}: new centroids are due, but faiss (k-means) is not installed: keeping the current ones; "
            f"`{codec_mod.KMEANS_EXTRA}` and the next run trains new ones")
        reason = None
    if reason is None:
        codec, codec_entry, drift = load_codec(folder, old, index), old["codec"], dict(old["drift"])
        training = _with_choice(old["training"], options.centroids)
    else:
        if old is not None:
            log(f"training new centroids: {reason}")
        codec, codec_entry, training = _trained_codec(folder, index, nbits, _centroids_asked(options, committed),
                                                      options.centroids is None, norms, log)
        drift, old, previous = None, None, None  # codes of other centroids cannot be carried
    stats, entries = CodingStats(), []
    carry = _CarryFromPrevious(folder, previous, old) if previous is not None and old is not None else None
    alike = _CodedBefore(folder, replaced, old) if carry is None and replaced is not None and old is not None else None
    listed = {shard_codes_name(entry): entry for entry in (old or {}).get("shards", [])}
    replacing = committed_generation(folder)
    if progress is not None:
        progress.start(index.rows, "coding")
    for number, shard in enumerate(index.shards):
        entries.append(_shard_codes(folder, index, shard, codec, codec_entry["sha256"], listed, carry, stats, alike,
                                    replacing))
        fault_point("codes", number + 1)
        if progress is not None:
            progress.advance(shard["rows"], shard["tokens"])
    drift = update_drift(drift, training, stats, index.tokens)
    structure = {
        "kind": SEARCH_KIND,
        "nbits": nbits,
        "centroids": codec.k,
        "dim": codec.dim,
        "codec": codec_entry,
        **({"vector_norms": True} if codec.vector_norms else {}),
        "training": training,
        "drift": drift,
        "retrain_when": {"share_coded_since_training_above": RETRAIN_SHARE, "residual_norm_ratio_above": RETRAIN_NORM_RATIO},
        "shards": entries,
        "bytes": codec_entry["bytes"] + sum(entry["bytes"] for entry in entries),
        "last_run": {"coded_tokens": stats.coded_tokens, "carried_tokens": stats.carried_tokens},
    }
    if vectorless:
        structure[VECTORS] = VECTORS_DROPPED
    return {**manifest, SEARCH: structure}


# ---------------------------------------------------------------------------------------------- codec


def load_codec(folder: Path, structure: dict, index) -> Codec:
    """The codec ``structure`` lists, refused unless it has the sha256, nbits, centroids and dim it says (``index``'s)."""
    verify_file(folder, structure["codec"], checksum=True)
    path = folder / structure["codec"]["file"]
    tensors, metadata = map_tensors(path)
    check_codec_agrees(path, tensors, metadata, structure, index)
    return _in_memory(tensors, metadata)


def read_codec(path: Path) -> Codec:
    """A codec file's codec, copied into memory (no checksum: ``load_codec`` checks the manifest's)."""
    return _in_memory(*map_tensors(path))


def _in_memory(tensors: dict, metadata: dict) -> Codec:
    return Codec.from_tensors({k: np.array(v) for k, v in tensors.items()}, metadata)


def _centroids_asked(options: StructureOptions, committed: dict | None) -> int | None:
    """The centroid count asked for, recorded as ``training.centroids_asked``: ``--centroids`` if given, else the
    one an earlier run was asked for (``centroids_choice``: a cron run's retrain keeps a chosen count), else None
    (the default for the index's size)."""
    if options.centroids is not None:
        return options.centroids
    return centroids_choice(committed)


def centroids_choice(committed: dict | None) -> int | None:
    """The centroid count ``--centroids`` last asked for on the index whose manifest is ``committed`` (None: none
    was): its structure's ``training.centroids_asked``, or where an empty generation has no structure, its
    ``search_settings``' (kept for the next run with rows)."""
    structure = (committed or {}).get(SEARCH)
    if structure:
        return (structure.get("training") or {}).get("centroids_asked")
    return ((committed or {}).get(SEARCH_SETTINGS) or {}).get("centroids_asked")


def _with_choice(training: dict, centroids: int | None) -> dict:
    """The kept centroids' training record, with an explicit ``--centroids`` (equal to their count) recorded as the
    choice later retrains train again."""
    return training if centroids is None else {**training, "centroids_asked": centroids}


def _trained_codec(folder: Path, index, nbits: int, asked: int | None, remembered: bool, norms: bool,
                   log=print) -> tuple[Codec, dict, dict]:
    """A codec trained with ``asked`` centroids. A ``remembered`` count (not on this command line) is capped at
    one per token for this training only: the record keeps the choice for when the index grows back."""
    requested = min(asked, index.tokens) if remembered and asked and index.tokens else asked
    k = codec_mod.resolve_centroids(requested, index.tokens, str(folder))
    key = {"shards": [shard["sha256"] for shard in index.shards], "nbits": nbits, "centroids": k,
           **({"vector_norms": True} if norms else {})}
    pending = _read_pending(folder)
    if pending is not None and pending.get("key") == key:
        try:  # a run over the same shards died after training: take its codec, its code files follow
            structure = {"codec": pending["codec"], "nbits": nbits, "centroids": pending.get("centroids", k)}
            return load_codec(folder, structure, index), pending["codec"], {**pending["training"], "centroids_asked": asked}
        except Exception:  # unreadable leftovers: train again
            pass
    n = codec_mod.sample_size(k, index.tokens)
    log(f"k-means: {k:,} centroids on {n:,} of {index.tokens:,} token vectors ({index.dim}-d, "
        f"{codec_mod.KMEANS_ITERATIONS} iterations; its time grows with centroids x vectors x width)")
    codec = replace(codec_mod.train(_sample_tokens(index, n), k, nbits), vector_norms=norms)
    if codec.k < k:
        log(f"k-means made {k - codec.k:,} centroids identical to others (the sample repeats vectors): keeping "
            f"the {codec.k:,} distinct ones")
    data = codec.to_bytes()
    entry = {"file": f"{CODES_DIR}/codec-{codec_mod.codec_id(data)[:16]}.safetensors"}
    entry.update(write_tensors(folder / entry["file"], codec.tensors(), codec.metadata()))
    training = {"sample_tokens": n, "index_tokens": index.tokens, "kmeans_iterations": codec_mod.KMEANS_ITERATIONS,
                "seed": codec_mod.KMEANS_SEED, "library": "faiss", "kmeans_centroids": k, "centroids_asked": asked}
    atomic_write_bytes(folder / PENDING, json.dumps({"key": key, "codec": entry, "centroids": codec.k, "training": training}).encode())
    return codec, entry, training


def _read_pending(folder: Path) -> dict | None:
    try:
        return json.loads((folder / PENDING).read_text())
    except (OSError, ValueError):
        return None


def _sample_tokens(index, n: int) -> np.ndarray:
    """``n`` token vectors drawn uniformly without replacement, read in one streaming pass."""
    from tokembed.search.maxsim import batch_arrays

    rng = np.random.default_rng(codec_mod.KMEANS_SEED)
    wanted = np.sort(rng.choice(index.tokens, size=n, replace=False))
    out = np.empty((n, index.dim), np.float32)
    seen = filled = 0
    for shard in index.shards:
        for batch in _verified_batches(index, shard):
            _, vectors, _ = batch_arrays(batch, index.dim, str(index.shard_path(shard)))
            lo, hi = np.searchsorted(wanted, [seen, seen + len(vectors)])
            out[filled : filled + hi - lo] = vectors[wanted[lo:hi] - seen]
            filled += hi - lo
            seen += len(vectors)
    return out


# ---------------------------------------------------------------------------------------------- code files


def _shard_codes(folder, index, shard, codec, codec_sha, listed, carry, stats: CodingStats, alike,
                 replacing: str | None) -> dict:
    name = codes_name(shard["sha256"], codec_sha)
    base = {"shard": shard["file"], "file": name, "rows": shard["rows"], "tokens": shard["tokens"]}
    if name in listed:  # the shard did not change: its code file stays as it is (under its own name)
        committed = listed[name]
        try:
            verify_files(folder, [committed], checksum=True)  # once per change of the file (``index.verified``)
            stats.carried_tokens += shard["tokens"]
            return {**base, "file": committed["file"], "bytes": committed["bytes"], "sha256": committed["sha256"]}
        except IndexCorruptError as exc:  # missing, or damaged since its commit: coded again (as --full would)
            _refuse_without_vectors(index, exc)  # the committed file stays until the new one replaces it whole
    figures = written_whole(folder, name, replacing)
    if figures is not None:  # written whole, and unchanged since, by a run that died before its commit or this run's writer
        stats.add(CodingStats(figures["coded_tokens"], shard["tokens"] - figures["coded_tokens"], figures["residual_norm_sum"]))
        return {**base, "bytes": figures["bytes"], "sha256": figures["sha256"]}
    mine = CodingStats()
    codes = code_shard(codec, _verified_batches(index, shard), carry, mine, shard["tokens"], str(index.shard_path(shard)),
                       alike)
    for lookup in (carry, alike):
        if lookup is not None:
            lookup.release()
    entry = codes.write(folder / name)
    write_coding_figures(folder / name, mine.coded_tokens, mine.residual_norm_sum, entry, replacing)
    stats.add(mine)
    return {**base, **entry}


def _verified_batches(index, shard: dict):
    """The record batches of ``shard``, its sha256 checked against the manifest first (hashed once per change of
    the file, ``index.verified``): a damaged shard's vectors must be neither trained on nor coded into files that
    the new manifest vouches for."""
    from tokembed.search.maxsim import shard_batches

    try:
        index.verify_shard(shard, checksum=True, remembered=True)
    except IndexCorruptError as exc:
        exc.hint = exc.hint or "its vectors cannot be coded: tokembed encode CORPUS -o INDEX --full rebuilds the index from the corpus"
        raise
    return shard_batches(index, shard, verify=False)


def _refuse_without_vectors(index, damage: IndexCorruptError) -> None:
    """A missing or damaged code file of a compressed-only index cannot be coded again: its shard holds no vectors."""
    from tokembed.index.format import vectors_dropped

    if vectors_dropped(index.manifest):
        raise IndexCorruptError(f"{damage}; this index holds no vectors (--drop-vectors) to code the shard again",
                                hint="re-encode the index from its source: tokembed encode ... --full") from None


class _CarryFromPrevious:
    """Codes of the previous generation's rows, looked up by id and content hash."""

    def __init__(self, folder: Path, previous, structure: dict) -> None:
        self.previous = previous
        self.codes = StoredCodes(folder, structure["shards"])

    def __call__(self, ids: list[str], hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from tokembed.index.keys import id_keys

        rows = self.previous.find(ids, id_keys(ids))
        carried = np.flatnonzero(self.previous.unchanged(rows, hashes))
        return carried, np.array([rows[i] for i in carried.tolist()], np.int64)

    def release(self) -> None:
        self.previous.release_pages()


class _CodedBefore(_CarryFromPrevious):
    """A full rebuild's view of the generation it replaces, coded with the centroids it keeps: its unchanged rows
    and their codes (``code_shard``'s ``alike``), once its code files match the manifest (sha256, hashed once per
    change of a file). Where they do not (``--full`` is how a damaged index is rebuilt), no row is found: every
    row counts as coded, as it did before."""

    def __init__(self, folder: Path, replaced, structure: dict) -> None:
        super().__init__(folder, replaced, structure)
        self.usable: bool | None = None  # checked on first use: a rebuild that codes no shard hashes nothing

    def __call__(self, ids: list[str], hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.usable is None:
            self.usable = self._codes_match()
        if not self.usable:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return super().__call__(ids, hashes)

    def _codes_match(self) -> bool:
        try:
            check_structure_lists_shards(self.codes.folder, self.previous.index.manifest)
            verify_files(self.codes.folder, self.codes.entries, checksum=True)
        except IndexCorruptError:
            return False
        return True


# ---------------------------------------------------------------------------------------------- generation


def open_generation(folder: Path, manifest: dict):
    """An ``Index`` over the shards ``manifest`` lists (committed or not), memory-mapped."""
    import pyarrow as pa

    from tokembed.index.reader import Index

    maps = {shard["file"]: pa.memory_map(str(folder / shard["file"]), "r") for shard in manifest["shards"]}
    return Index(folder, manifest, maps)


def commit_manifest(folder: Path, manifest: dict) -> None:
    from tokembed.index.format import MANIFEST, manifest_bytes

    atomic_write_bytes(folder / MANIFEST, manifest_bytes(manifest), commit="the new index was committed")


def remove_unlisted_files(folder: Path, manifest: dict) -> None:
    """After a commit: structure files (and a pending training) that no manifest lists any more. Only names
    tokembed writes in ``plaid/`` (``is_structure_file``): any other file there is someone else's."""
    plaid = folder / CODES_DIR
    if not plaid.is_dir():
        return
    structure = manifest.get(SEARCH) or {}
    listed = {Path(entry["file"]).name for entry in structure.get("shards", [])}
    if structure:
        listed.add(Path(structure["codec"]["file"]).name)
    for path in plaid.iterdir():
        if path.name not in listed and is_structure_file(path.name):
            remove_unused(path)


# codec-, codes- (a compressed-only shard's with its own sha256), their .coded.json figures, the pending records, and
# the temp names ``atomic.temp_beside`` gives any of them (``.NAME.tmp-PID-THREAD``; an earlier release's without THREAD),
# and the one safetensors' ``save_file`` writes through before its rename (Rust tempfile's ``.tmpXXXXXX``)
_OWN = r"(?:codec-[0-9a-f]{16}\.safetensors|codes-[0-9a-f]{24}-[0-9a-f]{12}(?:-[0-9a-f]{12})?\.safetensors(?:\.coded\.json)?" \
       r"|pending\.json|drop-pending\.json)"
_STRUCTURE_FILE = re.compile(rf"^(?:{_OWN}|\.{_OWN}\.tmp-\d+(?:-\d+)?|\.tmp[A-Za-z0-9]{{6}})$")


def is_structure_file(name: str) -> bool:
    """Whether ``name`` is one that tokembed writes in ``plaid/`` (``codes_name``, ``_trained_codec``, ``drop``)."""
    return _STRUCTURE_FILE.match(name) is not None


def check_compressible(index) -> None:
    if index.rows == 0 or index.tokens == 0:
        raise BadInputError(f"{index.folder}: the index holds {index.rows} rows and {index.tokens} tokens, nothing to compress")
