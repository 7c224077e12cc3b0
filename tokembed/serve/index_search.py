"""``tokembed serve --index DIR``: ``POST /search`` answers queries against an index as ``tokembed score`` does.

    request -> the index's query profile (its model, ColBERT settings, lengths, dimensions, float32 out:
    ``Embedder.for_index``'s flags, as a view on the served weights) -> the batcher -> ``search_opened``
    (the structure's candidate search, or the exhaustive scan where ``exact`` or the index has none) -> hits

The opened generation is kept across requests (its structure's joined lists, mapped files, verified hashes)
and opened again when the manifest changes, so a cron job that re-encodes the index is picked up by the next
request; a request sees one generation from start to end. A new generation built with another model or
other encoding settings is refused (the served query profile would no longer match it): restart the server.
A replaced generation is let go within ``WATCH_SECONDS`` even while no request comes (and by an exact search): its
open files would keep the replaced shards' disk space (a whole index's worth after `encode --full`) held.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, replace
from pathlib import Path

from tokembed.errors import IndexCorruptError, IndexNotFoundError, ModelMismatchError, UsageError

WATCH_SECONDS = 5.0


@dataclass(frozen=True)
class _Generation:
    key: tuple  # the manifest file's (inode, size, mtime) when it was read
    index: object
    structure: object


class ServedIndex:
    """One index folder, its generation opened on first use and again whenever its manifest changes."""

    def __init__(self, folder) -> None:
        from tokembed.index.reader import read_manifest

        self.folder = Path(folder)
        manifest = read_manifest(self.folder) if self.folder.is_dir() else None
        if manifest is None:
            raise IndexNotFoundError(f"--index {folder}: not a tokembed index (no manifest.json)", hint="build one with tokembed encode")
        self.manifest = manifest  # the generation the query profile was built for
        self._lock = threading.Lock()
        self._generation: _Generation | None = None
        self._stop = threading.Event()

    def watch(self, interval: float | None = None) -> None:
        """Let a replaced generation go every ``interval`` seconds, from a daemon thread, until ``stop_watching``."""
        threading.Thread(target=_watch, args=(weakref.ref(self), self._stop, interval or WATCH_SECONDS), daemon=True,
                         name="tokembed-index-watch").start()

    def stop_watching(self) -> None:
        self._stop.set()

    def release_if_replaced(self) -> None:
        """Forget the opened generation if another was committed since (its files close with the last request
        still using it)."""
        try:
            key = self._manifest_key()
        except IndexCorruptError:
            key = None
        with self._lock:
            if self._generation is not None and self._generation.key != key:
                self._generation = None

    def load_plan(self, model: str | None, raw_flags):
        """(checkpoint to load, raw flags carrying the index's revision, base model and dtype, ColBERT settings)."""
        from tokembed.embedder import index_checkpoint, index_colbert

        where, query = index_checkpoint(self.manifest, "query", model)
        if raw_flags.dtype not in ("auto", query.dtype):
            raise UsageError(f"--dtype {raw_flags.dtype}: the index's queries are encoded with --dtype {query.dtype}",
                             hint="leave --dtype out with --index")
        flags = replace(raw_flags, dtype=query.dtype, revision=query.revision, base_model=query.base_model,
                        base_revision=query.base_revision)
        return where, flags, index_colbert(self.manifest)

    def query_profile(self, model, device: str):
        """The ``Profile`` that encodes queries for this index (``Embedder.for_index``'s), sharing ``model``'s weights."""
        from tokembed.embedder import index_flags, make_encoder
        from tokembed.serve.options import Profile, own_tokenizer_view

        flags = index_flags(self.manifest, "query")
        view = own_tokenizer_view(model)
        return Profile("index", flags, view, make_encoder(view, flags, device)[1])

    def opened(self) -> _Generation:
        """The committed generation now (opened again if the manifest changed since the last request)."""
        from tokembed.search.plaid.search import open_searchable

        key = self._manifest_key()
        with self._lock:
            if self._generation is None or self._generation.key != key:
                index, structure = open_searchable(self.folder)
                self._check_same_encoding(index.manifest)
                self._generation = _Generation(key, index, structure)
            return self._generation

    def search(self, queries: list, top_k: int, exact: bool, probe: int | None, candidates: int | None, device: str) -> list:
        from tokembed.search.api import search_opened

        if exact:  # the scan reads the vectors alone: a damaged structure must not stop it (as score --exact)
            from tokembed.index.format import require_vectors
            from tokembed.index.reader import open_index

            self.release_if_replaced()
            index = open_index(self.folder)
            require_vectors(index, 'an exact search ("exact": true)')
            self._check_same_encoding(index.manifest)
            return search_opened(index, None, queries, top_k, True, device=device)
        generation = self.opened()
        return search_opened(generation.index, generation.structure, queries, top_k, exact, probe, candidates, device=device)

    def _manifest_key(self) -> tuple:
        try:
            stat = (self.folder / "manifest.json").stat()
        except FileNotFoundError as exc:
            raise IndexCorruptError(f"{self.folder}: its manifest.json is gone") from exc
        return stat.st_ino, stat.st_size, stat.st_mtime_ns

    def _check_same_encoding(self, manifest: dict) -> None:
        from tokembed.models.resolve import weights_agree

        weights = [entry["model"].get("weights_sha256") for entry in (manifest, self.manifest)]
        if _encoding(manifest) != _encoding(self.manifest) or not weights_agree(*weights):
            raise ModelMismatchError(f"{self.folder} was rebuilt with another model or other encoding settings since this "
                                     "server started, and its queries are encoded for the old ones: restart tokembed serve")


def _watch(served: weakref.ref, stop: threading.Event, interval: float) -> None:
    while not stop.wait(interval):
        index = served()
        if index is None:  # the server was let go without stop_watching
            return
        index.release_if_replaced()
        del index


def _encoding(manifest: dict) -> tuple:
    """What encoding queries for an index depends on, besides its weights' digest (compared where both generations
    record one): its model's fingerprint and its settings' fingerprint."""
    return manifest["model"]["fingerprint"], manifest.get("settings_fingerprint")


async def answer_search(service, request) -> dict:
    """``POST /search``: each query's best ``top_k`` documents of the served index."""
    import asyncio

    from tokembed.serve.schemas import APIError
    from tokembed.serve.service import list_response
    from tokembed.serve.vectors import finite

    if service.index is None:
        raise APIError("this server searches no index: start it with --index INDEX_DIR", status=404,
                       type="NotFoundError", param="query")
    if service._check_model(request.model) is not None:
        raise APIError("search encodes queries with the index's model; a LoRA adapter's vectors do not match it", param="model")
    texts = [request.query] if isinstance(request.query, str) else list(request.query)
    service._check_count(len(texts), "query")
    items = await service._tokenize("index", texts, None, "search", "query")
    rows = await service.batcher.submit("index", items)
    queries = [vectors for vectors, _ in rows]
    hits = await asyncio.get_running_loop().run_in_executor(
        None, service.index.search, queries, request.top_k, request.exact, request.probe, request.candidates,
        service.embedder.device)  # the served device: on a GPU the structure's candidate stages run there too
    data = [{"index": i, "object": "search", "results": [{"rank": h.rank, "id": h.id, "score": finite(h.score)} for h in found]}
            for i, found in enumerate(hits)]
    return list_response("search", service.name, data, sum(len(item.ids) for item in items))
