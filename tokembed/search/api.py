"""The search stage's public functions: ``search`` (texts in), ``search_vectors`` (vectors in), ``load_document``.

``search`` encodes the queries with the model and every setting recorded in the index manifest, the ColBERT
settings only queries read as this release reads the checkpoint (``Embedder.for_index``, kind=query), then
runs the exact MaxSim scan of ``maxsim.scan`` or, when the index has a search structure (``tokembed compress``)
and ``exact`` is false, the candidate search of ``plaid.search`` (probed centroids -> candidates -> exact MaxSim
re-rank of the best ``candidates``).
On a compressed-only index (``compress --drop-vectors``) the re-rank uses the decoded codes, and what needs
the stored vectors (``exact``, ``load_document``) raises ``VectorsDroppedError``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tokembed.errors import BadInputError, UsageError
from tokembed.index.format import require_vectors, vectors_dropped
from tokembed.index.reader import Index, require_index_path
from tokembed.search.maxsim import DEFAULT_BLOCK_TOKENS, NumpyScorer, TorchScorer, batch_arrays, scan, shard_batches
from tokembed.search.queries import as_queries
from tokembed.sources.base import unicode_problem


@dataclass(frozen=True)
class Hit:
    id: str  # the document id
    score: float  # MaxSim score; -inf for a document with no tokens
    rank: int  # 1 = best


def search(
    index_path,
    queries: list[str] | dict,
    top_k: int = 10,
    model: str | os.PathLike | None = None,
    device: str = "auto",
    block_tokens: int = DEFAULT_BLOCK_TOKENS,
    allow_model_mismatch: bool = False,
    trust_remote_code: bool = False,
    progress=None,
    exact: bool = False,
    probe: int | None = None,
    candidates: int | None = None,
    timings: dict | None = None,
    base_model: str | os.PathLike | None = None,
) -> list[list[Hit]]:
    """Top-``top_k`` documents of the index at ``index_path`` for each query text, in query order.

    ``queries`` is a list of texts or a dict id -> text. ``model`` overrides where the index's checkpoint
    is, ``base_model`` where an adapter's base is (``--base-model``); a different checkpoint raises
    ``ModelMismatchError`` unless ``allow_model_mismatch``.
    ``exact`` scans exhaustively even when the index has a search structure; ``probe`` and ``candidates``
    tune the structure's search (defaults ``plaid.DEFAULT_PROBE`` / ``DEFAULT_CANDIDATES``).
    ``timings``, if given, receives ``load_seconds`` (checks, imports, index open + model load), ``query_seconds``
    (encoding the queries), ``search_seconds`` (the scan or the structure's search), which add up to the call's
    time, and ``searched_with`` (``"structure"`` or ``"exhaustive scan"``).
    """
    started = time.perf_counter()  # before the imports and checks: every part of the call falls in one of the three
    from tokembed.index.reader import open_index
    from tokembed.search.plaid.search import open_searchable

    _check_model_and_device(model, device, base_model)
    index_path = require_index_path(index_path, "index_path")
    _check_options(top_k, block_tokens, probe, candidates)
    _check_switches(exact=exact, allow_model_mismatch=allow_model_mismatch, trust_remote_code=trust_remote_code)
    _check_timings_and_progress(timings, progress)
    asked = as_queries(queries)
    timings = {} if timings is None else timings
    if exact:  # the scan reads the vectors alone: a damaged structure must not stop it (its errors say --exact)
        index, structure = open_index(index_path, structure=False), None
    else:
        index, structure = open_searchable(index_path)  # code files: sizes and sha256 checked
    index.verify(checksums=False)  # missing or truncated shards fail before the model loads
    if exact:
        require_vectors(index, "an exact search (score --exact)")
    warn_of_unused_structure_options(structure, exact, probe, candidates)
    compute = _resolve_device(device)
    opened = time.perf_counter()
    vectors = encode_queries(index, asked.texts, model, compute, allow_model_mismatch, trust_remote_code, timings,
                             asked.ids, base_model)
    timings["load_seconds"] += opened - started
    searched = time.perf_counter()
    hits = search_opened(index, structure, vectors, top_k, exact, probe, candidates, block_tokens, compute, progress)
    timings["search_seconds"] = time.perf_counter() - searched
    timings["searched_with"] = "structure" if _uses_structure(structure, exact) else "exhaustive scan"
    return hits


def search_opened(index, structure, query_matrices: list[np.ndarray], top_k: int = 10, exact: bool = False,
                  probe: int | None = None, candidates: int | None = None, block_tokens: int = DEFAULT_BLOCK_TOKENS,
                  device: str = "cpu", progress=None) -> list[list[Hit]]:
    """Hits for encoded queries on an index ``open_searchable`` opened (``structure`` may be None): the
    structure's search, or the exhaustive scan where ``exact`` or the index has no structure. ``serve
    --index`` keeps one opened generation for many requests."""
    if _uses_structure(structure, exact):
        return _structure_search(index, structure, query_matrices, top_k, probe, candidates, progress, device)
    return search_vectors(index, query_matrices, top_k, block_tokens, device=device, progress=progress, exact=True)


def _uses_structure(structure, exact: bool) -> bool:
    """Whether ``search_opened`` answers with the structure's search rather than the exhaustive scan."""
    return structure is not None and not exact


def encode_queries(
    index,
    texts: list[str],
    model: str | os.PathLike | None = None,
    device: str = "cpu",
    allow_model_mismatch: bool = False,
    trust_remote_code: bool = False,
    timings: dict | None = None,
    ids: list[str] | None = None,
    base_model: str | os.PathLike | None = None,
) -> list[np.ndarray]:
    """Query texts -> float32 token matrices [n_tokens, D], encoded as the index's manifest prescribes (kind=query;
    not rounded to its store dtype).

    ``index`` is an ``Index`` (``open_index``) or its folder; ``texts`` are checked as ``search``'s queries are
    (a list, not one string; every query a string); ``device`` is ``search``'s. ``timings``, if given, receives ``load_seconds``
    (checks, imports, model load) and ``query_seconds`` (encoding), which add up to the call's time. A query the model's
    processor refuses (``input_problem``) is a ``BadInputError`` naming its id (``ids``; else q1, q2, ...).
    """
    started = time.perf_counter()  # before the imports: importing the embedder (torch) is part of the load
    from tokembed.embedder import Embedder, refuse_non_finite
    from tokembed.index import open_index
    from tokembed.models.token_ids import TokenPastEmbeddingsError

    _check_model_and_device(model, device, base_model)
    _check_switches(allow_model_mismatch=allow_model_mismatch, trust_remote_code=trust_remote_code)
    _check_timings_and_progress(timings, None)
    index = _checked_index(index)
    asked = as_queries(texts, ids)
    texts, ids = asked.texts, asked.ids
    device = _resolve_device(device)  # as search() resolves it: "auto", "cuda" with none visible, "cpu:2" said
    index = index if isinstance(index, Index) else open_index(index, structure=False)
    embedder = Embedder.for_index(
        index.manifest, kind="query", model=model, device=device,
        allow_mismatch=allow_model_mismatch, trust_remote_code=trust_remote_code, base_model=base_model,
    )
    loaded = time.perf_counter()
    _refuse_queries_the_model_refuses(embedder.encoder, texts, ids)
    try:
        vectors = [vectors for vectors, _ in embedder.embed(texts)]
    except TokenPastEmbeddingsError as exc:
        raise exc.naming(f"query {ids[exc.position]!r}") from None
    for qid, matrix in zip(ids, vectors):
        refuse_non_finite(f"query {qid!r}", matrix)
    if timings is not None:
        timings["load_seconds"], timings["query_seconds"] = loaded - started, time.perf_counter() - loaded
    return vectors


def _refuse_queries_the_model_refuses(encoder, texts: list[str], ids: list[str]) -> None:
    problem_of = getattr(encoder, "input_problem", None)  # a vision processor's refusals (an image placeholder)
    if problem_of is None:
        return
    for qid, text in zip(ids, texts):
        if problem := problem_of(text):
            raise BadInputError(f"query {qid!r}: {problem}")


def search_vectors(
    index,
    query_matrices: list[np.ndarray],
    top_k: int = 10,
    block_tokens: int = DEFAULT_BLOCK_TOKENS,
    device: str = "cpu",
    progress=None,
    exact: bool = False,
    probe: int | None = None,
    candidates: int | None = None,
) -> list[list[Hit]]:
    """MaxSim top-k for already-encoded queries (a list, one ``[n_tokens, D]`` matrix of finite values per query);
    ``index`` is a path or an ``Index``.

    Exhaustive (every shard's sha256 checked against the manifest before it is scanned) when ``exact`` or
    when the index has no search structure; else the structure's candidate search with exact re-rank.
    """
    from tokembed.index import open_index
    from tokembed.search.plaid.search import has_structure, open_searchable, open_structure

    _check_options(top_k, block_tokens, probe, candidates)
    _check_switches(exact=exact)
    _check_timings_and_progress(None, progress)
    index, query_matrices = _checked_index(index), _checked_query_matrices(query_matrices)
    if not isinstance(index, Index):
        index, structure = open_searchable(index) if not exact else (open_index(index, structure=False), None)
    else:
        structure = open_structure(index) if has_structure(index) and not exact else None
    if exact:
        require_vectors(index, "an exact search (score --exact)")
    warn_of_unused_structure_options(structure, exact, probe, candidates)
    if not len(query_matrices):
        return []
    compute = _resolve_device(device)
    if structure is not None:
        return _structure_search(index, structure, query_matrices, top_k, probe, candidates, progress, compute)
    scorer = NumpyScorer() if compute == "cpu" else TorchScorer(compute, index.manifest.get("embedding_dtype", "float16"))
    results, _ = scan(index, query_matrices, top_k, block_tokens, scorer, progress)
    return [[Hit(doc_id, score, rank) for rank, (doc_id, score) in enumerate(hits, start=1)] for hits in results]


def warn_of_unused_structure_options(structure, exact: bool, probe: int | None, candidates: int | None) -> None:
    """One logged warning where ``probe`` or ``candidates`` was given and the scan answers: they tune the structure's
    search alone. Not an error: a cron line passes them whether or not the index was compressed yet."""
    given = [flag for flag, value in (("--probe", probe), ("--candidates", candidates)) if value is not None]
    if not given or _uses_structure(structure, exact):
        return
    why = ("--exact scans every document" if exact
           else "the index has no search structure (tokembed compress builds one); every document is scanned")
    logging.getLogger("tokembed").warning("%s not used: %s", " and ".join(given), why)


def _structure_search(index, structure, query_matrices, top_k, probe, candidates, progress, device: str = "cpu") -> list[list[Hit]]:
    """The structure's search; on a GPU ``device`` its candidate stages run there (``plaid.on_device``)."""
    from tokembed.search.plaid.search import DEFAULT_CANDIDATES, DEFAULT_PROBE, plaid_search

    if progress is not None:
        progress.start(index.rows)
    results = plaid_search(index, structure, [np.asarray(q) for q in query_matrices], top_k,
                           DEFAULT_PROBE if probe is None else probe, DEFAULT_CANDIDATES if candidates is None else candidates,
                           rerank="codes" if vectors_dropped(index.manifest) else "vectors",
                           device=None if device == "cpu" else device)
    if progress is not None:
        progress.advance(index.rows, index.tokens)
    return [[Hit(doc_id, score, rank) for rank, (doc_id, score) in enumerate(hits, start=1)] for hits in results]


def load_document(index_path, doc_id: str) -> tuple[np.ndarray, np.ndarray]:
    """(vectors [n_tokens, D] in the stored dtype, token ids [n_tokens] int32) of one document; ``index_path`` is
    the index folder or an ``Index``.

    Reads the id column shard by shard (memory-mapped) and copies out only the matching row.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    from tokembed.index import open_index

    if not isinstance(doc_id, str):
        raise UsageError(f"load_document: a document id is a string (ids are stored as text), got {doc_id!r}")
    if problem := unicode_problem(doc_id, f"document id {doc_id!r}"):  # Arrow takes no lone surrogate
        raise BadInputError(f"load_document: {problem}")
    index = _checked_index(index_path, "index_path")
    index = index if isinstance(index, Index) else open_index(index, structure=False)
    require_vectors(index, "load_document")
    wanted = pa.scalar(doc_id, pa.string())
    for shard in index.shards:
        index.verify_shard(shard, checksum=False)
        for batch in shard_batches(index, shard, verify=False):
            position = pc.index(batch.column(batch.schema.get_field_index("id")), wanted).as_py()
            if position >= 0:
                return _copy_row(batch.slice(position, 1), index.dim, str(index.shard_path(shard)))
    raise BadInputError(f"{index.folder}: no document with id {doc_id!r}")


def _copy_row(row, dim: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    from tokembed.index.arrays import numpy_view

    offsets, vectors, _ = batch_arrays(row, dim, where)
    token_ids = row.column(row.schema.get_field_index("token_ids"))
    ids = numpy_view(token_ids.values)[token_ids.offsets[0].as_py() : token_ids.offsets[1].as_py()]
    return vectors[offsets[0] : offsets[1]].copy(), ids.astype(np.int32, copy=True)


_OPENED_HINT = "or pass the index opened: tokembed.index.open_index(path)"
_WRAP_HINT = "search_vectors takes a list of query matrices: wrap a single one in a list, search_vectors(index, [matrix])"


def _checked_index(index, argument: str = "index") -> Index | Path:
    """An ``Index`` as is, else the index folder's path; a caller's None or number is a ``UsageError`` naming it."""
    return index if isinstance(index, Index) else require_index_path(index, argument, hint=_OPENED_HINT)


def _checked_query_matrices(query_matrices) -> list[np.ndarray]:
    """``search_vectors``' queries as arrays, each [n_tokens, D] of finite numbers. A bare matrix would be read as
    one query per row, and a NaN scores null and ranks anywhere (hits in index order): both are refused."""
    shape = getattr(query_matrices, "shape", None)  # a numpy array or a torch tensor: 3-D is a batch of queries
    if (shape is not None and len(shape) < 3) or isinstance(query_matrices, str) or not isinstance(query_matrices, Iterable):
        got = f"an array of shape {tuple(shape)}" if shape is not None else type(query_matrices).__name__
        raise UsageError(f"query_matrices: expected a list of [tokens, dim] matrices, one per query, got {got}",
                         hint=_WRAP_HINT)
    return [_checked_matrix(f"query_matrices[{i}]", q) for i, q in enumerate(query_matrices)]


def _checked_matrix(what: str, query) -> np.ndarray:
    if callable(getattr(query, "detach", None)):  # a torch tensor straight from a model: numpy refuses one with grad
        query = query.detach()
    try:
        matrix = np.asarray(query)
    except (TypeError, ValueError) as exc:  # a ragged nested list, a CUDA tensor
        raise UsageError(f"{what}: not an array of numbers ({exc})") from exc
    if matrix.ndim != 2:
        raise UsageError(f"{what}: an array of shape {matrix.shape}, expected a [tokens, dim] matrix")
    if matrix.dtype.kind not in "fiu":
        raise UsageError(f"{what}: holds {matrix.dtype} values, expected numbers")
    if not np.isfinite(matrix).all():
        bad = int(np.count_nonzero(~np.isfinite(matrix)))
        raise UsageError(f"{what}: {bad} of its {matrix.size} vector values are NaN or inf; nothing is scored with them")
    return matrix


def _check_options(top_k: int, block_tokens: int, probe: int | None = None, candidates: int | None = None) -> None:
    """Every option checked whatever the index holds (the structure's two too, though a scan ignores them): the
    same command line must not pass on one index and fail on another."""
    given = [("--top-k", top_k), ("--block-tokens", block_tokens)]
    given += [(flag, value) for flag, value in (("--probe", probe), ("--candidates", candidates)) if value is not None]
    for flag, value in given:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise UsageError(f"{flag} {value!r}: must be a whole number")
        if value < 1:
            raise UsageError(f"{flag} {value}: must be at least 1")


def _check_switches(**switches) -> None:
    """``exact``, ``allow_model_mismatch``, ``trust_remote_code``: True or False, as ``EncodeFlags``' are; a "no" would
    count as True without a word."""
    for name, value in switches.items():
        if not isinstance(value, bool):
            raise UsageError(f"{name}={value!r}: must be True or False")


def _check_timings_and_progress(timings, progress) -> None:
    """Checked before the index is opened and the model loads, not a TypeError or AttributeError once the queries were
    encoded."""
    if timings is not None and not isinstance(timings, MutableMapping):
        raise UsageError(f"timings: expected a dict to fill in (or None), got {type(timings).__name__}")
    if progress is not None and not all(callable(getattr(progress, name, None)) for name in ("start", "advance")):
        raise UsageError(f"progress: expected an object with start(total_rows) and advance(rows, tokens) (or None), "
                         f"got {type(progress).__name__}")


def _check_model_and_device(model, device, base_model=None) -> None:
    """A caller's bytes or number as ``model``, ``base_model`` or ``device`` is a ``UsageError`` naming it before the
    index is opened, not a TypeError from pathlib while the index's checkpoint is looked up, nor an AttributeError
    from the device's."""
    for flag, value in (("--model", model), ("--base-model", base_model)):
        if value is not None and not isinstance(value, (str, os.PathLike)):
            raise UsageError(f"{flag}: expected a checkpoint folder (str or Path) or a hub id, got {type(value).__name__}")
    if device is not None and not isinstance(device, str):
        raise UsageError(f"--device: expected auto, cpu, cuda or cuda:N (a str), got {type(device).__name__}")


def _resolve_device(spec: str) -> str:
    if spec == "cpu":  # a CPU scan never imports torch (hundreds of MB of shared libraries)
        return "cpu"
    from tokembed.engine.device import resolve_one_device

    return resolve_one_device(spec, "--device", "score")
