"""``tokembed serve --index DIR``: ``POST /search`` answers queries against an index as ``tokembed score`` does.

    request -> the index's query profile (its model, ColBERT settings, lengths, dimensions, float32 out:
    ``Embedder.for_index``'s flags, as a view on the served weights) -> the batcher -> ``search_opened``
    (the structure's candidate search, or the exhaustive scan where ``exact`` or the index has none) -> hits

The opened generation is kept across requests (its structure's joined lists, mapped files, verified hashes)
and opened again when the manifest changes, so a cron job that re-encodes the index is picked up by the next
request; a request sees one generation from start to end. While the folder holds no complete generation (a
blue/green deploy's ``mv X X.old; cp -a new X``: no manifest yet, or one whose files are still being copied, or
not yet readable: ``cp -a`` makes folders 0700 and files 0600 until their modes are set),
requests are answered from the generation held, and the next request tries again; with none held yet they get
a 503. A new generation built with another model or other encoding settings is refused (the served query profile
would no longer match it): restart the server. A replaced generation is let go within ``WATCH_SECONDS`` even while
no request comes: its open files would keep the replaced shards' disk space (a whole index's worth after
`encode --full`) held.
"""

from __future__ import annotations

import logging
import threading
import weakref
from dataclasses import dataclass, replace
from pathlib import Path

from tokembed.errors import (
    IndexCorruptError,
    IndexNotFoundError,
    IndexReplacedError,
    IndexUnavailableError,
    IndexUnreadableError,
    ModelMismatchError,
    TokembedError,
    UsageError,
)

WATCH_SECONDS = 5.0
log = logging.getLogger("tokembed.serve")


@dataclass(frozen=True)
class _Generation:
    key: tuple  # the manifest file's (inode, size, mtime, ctime) when it was read
    index: object
    structure: object
    damaged: TokembedError | None = None  # why its structure did not open (corrupt, unreadable): the exact scan still answers
    copying: bool = False  # a structure file is missing, short or unreadable: a copy under way, unless no other generation is held

    @property
    def complete(self) -> bool:
        return self.damaged is None


class ServedIndex:
    """One index folder, its generation opened on first use and again whenever its manifest changes."""

    def __init__(self, folder) -> None:
        from tokembed.index.reader import index_path_kind, read_manifest
        from tokembed.path_kind import FOLDER

        self.folder = Path(folder)
        manifest = read_manifest(self.folder) if index_path_kind(self.folder) == FOLDER else None
        if manifest is None:
            raise IndexNotFoundError(f"--index {folder}: not a tokembed index (no manifest.json)", hint="build one with tokembed encode")
        self.manifest = manifest  # the generation the query profile was built for
        self._lock = threading.Lock()
        self._generation: _Generation | None = None
        self._warned: tuple | None = None  # (manifest key,) of the last "kept the held generation" warning
        self._stop = threading.Event()

    def watch(self, interval: float | None = None) -> None:
        """Let a replaced generation go every ``interval`` seconds, from a daemon thread, until ``stop_watching``."""
        threading.Thread(target=_watch, args=(weakref.ref(self), self._stop, interval or WATCH_SECONDS), daemon=True,
                         name="tokembed-index-watch").start()

    def stop_watching(self) -> None:
        self._stop.set()

    def release_if_replaced(self) -> None:
        """Hold the committed generation in place of the one held, if another was committed since (the replaced
        one's files close with the last request still using it); keep the held one while none is complete."""
        with self._lock:
            if self._generation is None or self._generation.key == self._manifest_key():
                return
            try:
                self._current()
            except TokembedError:  # the next request answers with it
                pass

    def load_plan(self, model: str | None, raw_flags):
        """(checkpoint to load, raw flags carrying the index's revision, base model and dtype, ColBERT settings as a
        function of the checkpoint's own, ``index_colbert``);
        ``raw_flags.base_model``: ``--base-model``, where the index's adapter's base is."""
        from tokembed.embedder import index_checkpoint
        from tokembed.index_colbert import IndexColbert

        where, query = index_checkpoint(self.manifest, "query", model, raw_flags.base_model)
        if raw_flags.dtype not in ("auto", query.dtype):
            raise UsageError(f"--dtype {raw_flags.dtype}: the index's queries are encoded with --dtype {query.dtype}",
                             hint="leave --dtype out with --index")
        flags = replace(raw_flags, dtype=query.dtype, revision=query.revision, base_model=query.base_model,
                        base_revision=query.base_revision)
        return where, flags, IndexColbert(self.manifest)

    def query_profile(self, model, device: str):
        """The ``Profile`` that encodes queries for this index (``Embedder.for_index``'s), sharing ``model``'s weights."""
        from tokembed.embedder import index_flags, make_encoder
        from tokembed.serve.options import Profile, own_tokenizer_view

        flags = index_flags(self.manifest, "query")
        view = own_tokenizer_view(model)
        return Profile("index", flags, view, make_encoder(view, flags, device)[1])

    def opened(self) -> _Generation:
        """The generation to answer from: the committed one (opened again if the manifest changed since the last
        request), or the one held while the folder has no complete generation (a deploy swapping it)."""
        with self._lock:
            return self._current()

    def search(self, queries: list, top_k: int, exact: bool, probe: int | None, candidates: int | None, device: str) -> list:
        from tokembed.search.api import search_opened

        generation = self.opened()
        if exact:  # the scan reads the vectors alone: a damaged structure must not stop it (as score --exact)
            from tokembed.index.format import require_vectors

            require_vectors(generation.index, 'an exact search ("exact": true)')
            return search_opened(generation.index, None, queries, top_k, True, device=device)
        if not generation.complete:
            raise type(generation.damaged)(str(generation.damaged), hint=generation.damaged.hint)
        return search_opened(generation.index, generation.structure, queries, top_k, exact, probe, candidates, device=device)

    def _current(self) -> _Generation:
        """``opened``'s answer, under the lock. The generation held while its manifest is the folder's (a damaged
        one too: it is not opened, and hashed, again per request); another is opened once all its files are there
        at their sizes. Until then (a copy under way: ``cp -a`` writes the manifest before the shards and code
        files) the held one answers. A generation that is whole but damaged (a checksum, an unreadable structure)
        replaces it: exact searches answer from it, searches through its structure say what is damaged."""
        held, key = self._generation, self._manifest_key()
        if held is not None and held.key == key and not (held.copying and _structure_file_not_whole(held.index) is None):
            return held  # (one held while its structure was being copied is opened again once it is all there)
        try:
            fresh = self._open(key)
        except ModelMismatchError:
            self._generation = None  # refused until a restart (its files let go meanwhile)
            raise
        except (IndexNotFoundError, IndexCorruptError, IndexReplacedError, IndexUnreadableError) as exc:  # no manifest,
            # shards not (all) there or readable yet: a copy under way (cp -a lets others read a file once it is
            # written), or commits faster than it could open one
            if held is None:
                raise IndexUnavailableError(f"{self.folder}: no complete index to search yet ({exc}); it is being "
                                            "replaced or is not there: retry shortly") from exc
            self._warn_kept(key, exc)
            return held
        if fresh.copying and held is not None:  # with none held, its shards answer exact searches (as score --exact)
            self._warn_kept(key, fresh.damaged)
            return held
        self._generation = fresh
        return fresh

    def _open(self, key: tuple | None) -> _Generation:
        from tokembed.index.reader import open_index
        from tokembed.search.plaid.search import open_searchable

        try:
            index, structure = open_searchable(self.folder)
            damaged = None
        except (IndexCorruptError, IndexUnreadableError) as exc:  # a damaged or unreadable structure, or the shards
            index, structure = open_index(self.folder, structure=False), None  # themselves: opening them alone tells
            damaged = type(exc)(str(exc), hint=exc.hint)  # no traceback: its frames would hold generations
        _require_whole_shards(index)
        self._check_same_encoding(index.manifest)
        missing = _structure_file_not_whole(index)
        if missing is not None:
            return _Generation(key, index, None, missing, copying=True)
        if isinstance(damaged, IndexUnreadableError):  # cp -a sets a file's mode after writing it: not yet whole
            return _Generation(key, index, None, damaged, copying=True)
        return _Generation(key, index, structure, damaged)

    def _warn_kept(self, key: tuple | None, exc: Exception) -> None:
        """Once per manifest: a copy under way gives another reason (a shard's size) at every request."""
        reason = str(exc)  # not the exception: a log record keeping it would keep its frames' generations
        if (key,) != self._warned:  # (None,): no manifest, which a first warning names too
            self._warned = (key,)
            log.warning("%s; answering from the index generation opened before until a complete one is there", reason)

    def _manifest_key(self) -> tuple | None:
        """None when there is no manifest. The ctime too: ``cp -a`` keeps a copied manifest's mtime, and its size
        and a recycled inode number may be those of the generation held."""
        try:
            stat = (self.folder / "manifest.json").stat()
        except OSError:  # none, or none this user may read yet (cp -a makes the folder 0700 until it is done):
            return None  # the opening that follows names why
        return stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns

    def _check_same_encoding(self, manifest: dict) -> None:
        from tokembed.models.resolve import weights_agree

        weights = [entry["model"].get("weights_sha256") for entry in (manifest, self.manifest)]
        if _encoding(manifest) != _encoding(self.manifest) or not weights_agree(*weights):
            raise ModelMismatchError(f"{self.folder} was rebuilt with another model or other encoding settings since this "
                                     "server started, and its queries are encoded for the old ones: restart tokembed serve")


def _require_whole_shards(index) -> None:
    """A shard shorter than the manifest says is still being copied (``cp -a`` under way); checksums are the searches'
    to check."""
    for shard in index.shards:
        size = index.shard_file(shard)[0].size()
        if size != shard["bytes"]:
            raise IndexCorruptError(f"{index.shard_path(shard)}: {size} bytes on disk, manifest says {shard['bytes']}")


def _structure_file_not_whole(index) -> IndexCorruptError | None:
    """Why the structure is not all there (a file missing or of another size than the manifest says), or None. The
    files the index holds open where it holds them (``open_searchable``'s): a commit since may have removed those at
    their paths, and its generation is whole all the same; by path for one opened without them (its structure did
    not open), to see a copy's files arrive."""
    from tokembed.search.plaid.files import verify_files

    structure = index.manifest.get("search")
    if not structure:
        return None
    entries = [structure["codec"], *structure["shards"]]
    try:
        verify_files(index.folder, entries, checksum=False, opened=index.structure_files(entries))
    except IndexCorruptError as exc:  # a fresh one: the traceback's frames would hold the generation
        return IndexCorruptError(str(exc), hint=exc.hint)
    return None


def _watch(served: weakref.ref, stop: threading.Event, interval: float) -> None:
    while not stop.wait(interval):
        index = served()
        if index is None:  # the server was let go without stop_watching
            return
        try:
            index.release_if_replaced()
        except Exception as exc:  # the thread must outlive it: the next pass, or the next request, tries again
            log.warning("%s: could not check for a new index generation (%s)", index.folder, exc)
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
    truncate = service._truncation(request.truncate_prompt_tokens, ("index",))  # as /pooling's "input_type": "query"
    _check_activation(request.use_activation, service.profiles["index"].encoder.settings.normalize)
    items = await service._tokenize("index", texts, truncate, "search", "query")
    rows = await service.forward("index", items, None, "query")
    queries = [vectors for vectors, _ in rows]
    hits = await asyncio.get_running_loop().run_in_executor(
        None, service.index.search, queries, request.top_k, request.exact, request.probe, request.candidates,
        service.embedder.device)  # the served device: on a GPU the structure's candidate stages run there too
    data = [{"index": i, "object": "search",
             "results": [{"rank": h.rank, "id": h.id, "score": finite(h.score, f"query {i} rank {h.rank}")} for h in found]}
            for i, found in enumerate(hits)]
    return list_response("search", service.name, data, sum(len(item.ids) for item in items))


def _check_activation(asked: bool | None, normalized: bool) -> None:
    """``use_activation`` (vLLM's L2 normalization of token vectors) is the index's to decide: its documents' vectors
    were stored so, and query vectors normalized otherwise would score on another scale than ``tokembed score``'s."""
    from tokembed.serve.schemas import APIError

    if asked is not None and asked != normalized:
        state = "L2-normalized" if normalized else "not normalized (--no-normalize)"
        raise APIError(f"use_activation={str(asked).lower()}: this index's vectors are {state}, and its queries are "
                       f"encoded the same way; leave use_activation out (or send {str(normalized).lower()})",
                       param="use_activation")
