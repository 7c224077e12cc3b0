"""The model-owning service behind ``tokembed serve``: pooling, score and rerank, transport-free.

    request (validated schema) -> check -> tokenize (a lane's thread) -> DynamicBatcher (engine, one worker
    thread) -> per-request finishing (dimensions, normalization, encoding) -> response dict

One checkpoint is loaded once (``Embedder``) and read through up to three *profiles* that share its
weights: ``raw`` (vLLM's ``token_embed``: default special tokens, every token, projection) and, for a
checkpoint with ColBERT settings, ``query`` and ``document`` (PyLate semantics: prefix, expansion,
lengths, skiplist). Every profile computes float32, unnormalized, full-dimension vectors, so requests
with different ``dimensions`` / ``use_activation`` / ``embed_dtype`` still share batches; those options
are applied per request afterwards, in the order ``TextEncoder.finish`` applies them (cut, normalize).

Scores are MaxSim, sum over query tokens of the max over document tokens of the dot product, in float32.
``/score`` and ``/rerank`` encode queries and documents with the query/document profiles when the
checkpoint has ColBERT settings, else raw.

Errors a client causes raise ``schemas.APIError`` (HTTP status, vLLM error type, offending parameter).
"""

from __future__ import annotations

import asyncio
import copy
import time
import uuid
from dataclasses import replace

import numpy as np

from tokembed.errors import UsageError
from tokembed.serve.batcher import DynamicBatcher
from tokembed.serve.input_checks import refuse_too_many_inputs
from tokembed.serve.lora import attach_adapters as _attach_adapters
from tokembed.serve.lora import batch_key as _batch_key
from tokembed.serve.options import Profile, ServeOptions, own_tokenizer_view, profile_flags
from tokembed.serve.schemas import APIError, PoolingRequest, RerankRequest, ScoreRequest
from tokembed.serve.tokenizing import Lane, TokenizeLanes
from tokembed.serve.truncation import checked_truncation, check_length, colbert_length, raw_length, token_id_cut
from tokembed.serve.vectors import encode_base64, finish, finite, maxsim, pair_scores, refuse_non_finite_rows
from tokembed.settings import EncodeFlags, resolve
from tokembed.sources.base import unicode_problem

SUPPORTED_TASKS = ("token_embed",)


class EmbeddingService:
    """Owns the model, the tokenizer thread and the batcher. ``await pool/score/rerank(request)`` -> dict."""

    def __init__(self, embedder, options: ServeOptions = ServeOptions(), adapters: dict | None = None, index=None) -> None:
        """``adapters``: LoRA name -> (adapter folder, backbone view with that adapter active), from ``load``;
        ``index``: the ``ServedIndex`` that ``/search`` answers from (its queries get a profile of their own)."""
        from tokembed.embedder import make_encoder
        from tokembed.engine.runner import BatchExecutor

        options.check()
        self.embedder = embedder
        self.options = options
        self.name = options.served_model_name or embedder.resolved.name
        self.created = int(time.time())
        model = embedder.model
        self.vocab_size = _vocab_size(model)
        self.max_model_len = self._max_model_len(options.max_model_len)
        self.vision = embedder.is_vision
        if self.vision:  # its documents are images, which serve does not take: text queries, the model's own processing
            flags = profile_flags("raw", "query", options.dtype)
            self.profiles = {"query": Profile("query", flags, model, make_encoder(model, flags, embedder.device)[1])}
        else:
            self.profiles = {"raw": Profile("raw", profile_flags("raw", None, options.dtype), model, embedder.encoder)}
        if model.colbert is not None:
            view = own_tokenizer_view(model)
            for kind in ("query", "document"):
                flags = profile_flags("colbert", kind, options.dtype)
                self.profiles[kind] = Profile(kind, flags, view, self._encoder(view, flags, None))
        self.index = index
        if index is not None:
            self.profiles["index"] = index.query_profile(model, embedder.device)
            index.watch()
        self._lanes = TokenizeLanes(model if self.vision else None)
        executors = {key: BatchExecutor(p.encoder, embedder.device) for key, p in self.profiles.items()}
        self.adapters = {name: path for name, (path, _) in (adapters or {}).items()}
        for name, (_, backbone) in (adapters or {}).items():  # same tokenization, own forward: batched per adapter
            for key, profile in self.profiles.items():
                view = copy.copy(profile.view)
                view.backbone = backbone
                encoder = type(profile.encoder)(view, profile.encoder.settings)
                executors[_batch_key(name, key)] = BatchExecutor(encoder, embedder.device)
        self.batcher = DynamicBatcher(executors, options.max_batch_tokens, options.batch_window_ms / 1000.0)
        self.requests: dict[str, int] = {"pooling": 0, "score": 0, "rerank": 0, "search": 0}

    @classmethod
    def load(
        cls,
        model: str | None,
        device: str = "cpu",
        options: ServeOptions = ServeOptions(),
        trust_remote_code: bool = False,
        index=None,
        base_model: str | None = None,
    ) -> "EmbeddingService":
        """``index``: an index folder to answer ``/search`` from; ``model`` then defaults to the index's, and
        must be the checkpoint it was built with. ``base_model``: the base of an adapter served as ``model`` (or
        the index's), as ``encode --base-model``."""
        from tokembed.embedder import Embedder, check_index_model
        from tokembed.errors import ModelMismatchError
        from tokembed.serve.index_search import ServedIndex

        options.check()
        flags, colbert, served = replace(profile_flags("raw", None, options.dtype), base_model=base_model), None, None
        if index is not None:
            served = ServedIndex(index)
            model, flags, colbert = served.load_plan(model, flags)
        embedder = Embedder.load(model, flags, device, trust_remote_code, colbert)
        if served is not None:
            try:
                check_index_model(served.manifest, embedder)
            except ModelMismatchError as exc:
                exc.hint = ("leave --model and --base-model out (the index's own), or pass the checkpoints the index "
                            "was built with")
                raise
            colbert.warn_of_documents_read_otherwise(embedder.model.reading, embedder.settings.dtype)
        adapters = _attach_adapters(embedder, options) if options.lora_modules else None
        return cls(embedder, options, adapters, served)

    def close(self, wait: float = 10.0) -> list[str]:
        """Stop the batcher and the tokenizer lanes, ``wait`` s at most in all: what still runs then, to abandon."""
        deadline = time.monotonic() + wait
        running = [] if self.batcher.close(wait) else ["a forward pass"]
        running += [] if self._lanes.stop(deadline) else ["a tokenization"]
        if self.index is not None:
            self.index.stop_watching()
        return running

    # -- endpoints ---------------------------------------------------------------------------------------
    async def pool(self, request: PoolingRequest) -> dict:
        self.requests["pooling"] += 1
        adapter = self._check_model(request.model)
        if request.task is not None and request.task not in SUPPORTED_TASKS:
            raise APIError(f"Unsupported task: {request.task!r} Supported tasks: {SUPPORTED_TASKS}", param="task")
        if not request.add_special_tokens:
            raise APIError("add_special_tokens=false is not supported; send token ids instead", param="add_special_tokens")
        key = request.input_type or "raw"
        if self.vision and key != "query":
            raise APIError(self._vision_refusal("/pooling takes its text queries, with \"input_type\": \"query\" (the model's "
                                                "own query processing)"), param="input_type")
        if key not in self.profiles:
            raise APIError(
                f"input_type={key!r} needs a ColBERT checkpoint (PyLate / Stanford settings); {self.name!r} has none",
                param="input_type",
            )
        texts, token_lists = request.split_input()
        self._check_count(len(texts) if texts is not None else len(token_lists), "input")
        self._check_dimensions(request.dimensions)
        truncate = self._truncation(request.truncate_prompt_tokens, (key,))
        if token_lists is not None:
            if key != "raw":
                raise APIError("input_type (ColBERT processing) needs text inputs; token ids are not supported", param="input")
            items = self._token_items(token_lists, truncate, "embedding generation")
        else:
            items = await self._tokenize(key, texts, truncate, "embedding generation")
        rows = await self.forward(key, items, adapter, "input")
        normalize = request.use_activation is not False
        return await asyncio.get_running_loop().run_in_executor(
            None, self._pooling_response, rows, items, request, normalize, adapter or self.name
        )

    async def score(self, request: ScoreRequest) -> dict:
        self.requests["score"] += 1
        adapter = self._check_model(request.model)
        queries, documents = request.pair()
        self._check_count(len(queries) + len(documents), "documents")
        q_vecs, d_vecs, tokens = await self._encode_pair(queries, documents, request, adapter, request.fields())
        pairs = [(0 if len(q_vecs) == 1 else i, i) for i in range(len(d_vecs))]
        scores = await asyncio.get_running_loop().run_in_executor(None, pair_scores, q_vecs, d_vecs, pairs)
        data = [{"index": i, "object": "score", "score": finite(s, f"score {i}")} for i, s in enumerate(scores)]
        return list_response("score", adapter or self.name, data, tokens)

    async def rerank(self, request: RerankRequest) -> dict:
        self.requests["rerank"] += 1
        adapter = self._check_model(request.model)
        if not request.documents:
            raise APIError("At least one document must be given", param="documents")
        self._check_count(1 + len(request.documents), "documents")
        q_vecs, d_vecs, tokens = await self._encode_pair([request.query], request.documents, request, adapter,
                                                         ("query", "documents"))
        scores = await asyncio.get_running_loop().run_in_executor(None, maxsim, q_vecs[0], d_vecs)
        order = np.argsort(-scores, kind="stable")  # best first; ties keep document order
        if request.top_n > 0:
            order = order[: request.top_n]
        results = [
            {"index": int(i), "document": {"text": request.documents[i]}, "relevance_score": finite(scores[i], f"documents {i}")}
            for i in order
        ]
        return {
            "id": f"rerank-{uuid.uuid4().hex}",
            "model": adapter or self.name,  # vLLM's model_name(lora_request): the adapter's name
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            "results": results,
        }

    async def search(self, request) -> dict:
        from tokembed.serve.index_search import answer_search

        self.requests["search"] += 1
        return await answer_search(self, request)

    def model_list(self) -> dict:
        return {
            "object": "list",
            "data": [
                {
                    "id": self.name,
                    "object": "model",
                    "created": self.created,
                    "owned_by": "tokembed",
                    "root": str(self.embedder.resolved.path),
                    "parent": None,
                    "max_model_len": self.max_model_len,
                    "permission": [],
                }
            ]
            + [  # LoRA adapters, as vLLM lists them: root is the adapter, parent the base model
                {"id": name, "object": "model", "created": self.created, "owned_by": "tokembed", "root": path,
                 "parent": self.name, "max_model_len": self.max_model_len, "permission": []}
                for name, path in self.adapters.items()
            ],
        }

    def stats(self) -> dict:
        return {"requests": dict(self.requests), "batcher": self.batcher.stats.to_json()}

    # -- steps -------------------------------------------------------------------------------------------
    async def _encode_pair(self, queries: list[str], documents: list[str], request, adapter: str | None,
                           fields: tuple[str, str]) -> tuple[list, list, int]:
        """Encode both sides concurrently (their batches may merge with other requests'), normalized unless
        ``use_activation`` is false. ``fields``: the request's names of the two sides, for its errors."""
        if self.vision:
            raise APIError(self._vision_refusal("its documents are images, so it scores and reranks none here"), param="model")
        colbert = "query" in self.profiles
        q_key, d_key = ("query", "document") if colbert else ("raw", "raw")
        truncate = self._truncation(request.truncate_prompt_tokens, (q_key, d_key))
        q_items = await self._tokenize(q_key, queries, truncate, "score", fields[0])
        d_items = await self._tokenize(d_key, documents, truncate, "score", fields[1])
        q_rows, d_rows = await asyncio.gather(
            self.forward(q_key, q_items, adapter, fields[0]), self.forward(d_key, d_items, adapter, fields[1])
        )
        normalize = request.use_activation is not False
        q_vecs = [finish(vectors, None, normalize) for vectors, _ in q_rows]
        d_vecs = [finish(vectors, None, normalize) for vectors, _ in d_rows]
        tokens = sum(len(item.ids) for item in q_items + d_items)
        return q_vecs, d_vecs, tokens

    async def forward(self, key: str, items: list, adapter: str | None, field: str) -> list:
        """The batcher's rows for ``items`` (the request's ``field``), refused when a vector value is NaN or inf."""
        rows = await self.batcher.submit(_batch_key(adapter, key), items)
        refuse_non_finite_rows(rows, field)
        return rows

    async def _tokenize(self, key: str, texts: list[str], truncate: int | None, operation: str, field: str = "input") -> list:
        """``field``: the request's field holding ``texts``, which an error names with the item's index."""
        for index, text in enumerate(texts):
            if problem := unicode_problem(text):  # no tokenizer takes it: the client's error, not a 500
                raise APIError(f"{field} {index}: {problem}", param=field)
        lane = self._lanes.for_texts(texts)
        return await lane.run(self._tokenize_now, key, texts, truncate, operation, lane, field)

    def _tokenize_now(self, key: str, texts: list[str], truncate: int | None, operation: str, lane: Lane, field: str) -> list:
        """Runs on the lane's tokenizer thread. Raw texts are tokenized to at most limit + 1 tokens so that an
        over-long input is refused (vLLM's behaviour) unless ``truncate_prompt_tokens`` asks to cut it."""
        items = self._tokenizing_encoder(key, truncate, lane).tokenize(texts)
        if key == "raw" and truncate is None:
            for item in items:  # tokenized to at most the limit + 1 tokens (a huge text is never tokenized whole)
                check_length(len(item.ids), self.max_model_len, operation, counted=False)
        for number, item in enumerate(items):
            if not len(item.ids):  # a tokenizer without special tokens (a decoder), an empty text: as vLLM, a 400
                raise APIError(f"{field} {number} is empty: it has no tokens to embed (the prompt cannot be empty)",
                               param=field)
        return items

    def _tokenizing_encoder(self, key: str, truncate: int | None, lane: Lane):
        cache_key = (key, truncate)
        encoder = lane.encoders.get(cache_key)
        if encoder is None:
            profile = self.profiles[key]
            view = lane.view(key, profile)
            if key == "raw":
                encoder = self._encoder(view, profile.flags, raw_length(truncate, self.max_model_len))
            elif (length := colbert_length(truncate, profile.encoder, self.vision)) is None:
                encoder = lane.base_encoder(key, profile)
            else:
                encoder = self._encoder(view, replace(profile.flags, max_length=length), None)
            if len(lane.encoders) > 64:
                lane.encoders.clear()
            lane.encoders[cache_key] = encoder
        return encoder

    def _encoder(self, view, flags: EncodeFlags, raw_length: int | None):
        from tokembed.models.steps import TextEncoder

        device_type = self.embedder.device.split(":")[0]
        settings = resolve(flags, view.colbert, view.max_length, device_type, view.position_limit)
        if raw_length is not None:
            settings = replace(settings, max_length=raw_length)
        return TextEncoder(view, settings)

    def _token_items(self, token_lists: list[list[int]], truncate: int | None, operation: str) -> list:
        """Token-id inputs go to the model as given (no special tokens added), as in vLLM."""
        from tokembed.models.steps import Tokenized

        side = getattr(self.embedder.model.tokenizer, "truncation_side", "right")
        cut = token_id_cut(truncate, self.max_model_len)
        items = []
        for ids in token_lists:
            if not ids:
                raise APIError("empty token list in input", param="input")
            if max(ids) >= self.vocab_size:
                raise APIError(f"token id {max(ids)} is out of vocabulary (size {self.vocab_size})", param="input")
            if cut is not None and len(ids) > cut:
                ids = ids[-cut:] if side == "left" else ids[:cut]
            check_length(len(ids), self.max_model_len, operation)
            items.append(Tokenized(np.asarray(ids, dtype=np.int64), len(ids)))
        return items

    def _pooling_response(self, rows, items, request: PoolingRequest, normalize: bool, model: str) -> dict:
        data = []
        for index, (vectors, _) in enumerate(rows):
            vectors = finish(vectors, request.dimensions, normalize)  # [n_tokens, D] float32
            if request.encoding_format == "base64":
                payload = encode_base64(vectors, request.embed_dtype, request.endianness, f"input {index}")
            else:
                payload = vectors.tolist()
            data.append({"index": index, "object": "pooling", "data": payload})
        return list_response("pool", model, data, sum(len(item.ids) for item in items))

    # -- checks ------------------------------------------------------------------------------------------
    def _check_model(self, name: str | None) -> str | None:
        """The LoRA adapter a request names (None: the base model, also for no name or "" as vLLM's
        ``_is_model_supported``); an unknown name is vLLM's 404."""
        if not name or name == self.name:
            return None
        if name in self.adapters:
            return name
        raise APIError(f"The model `{name}` does not exist.", status=404, type="NotFoundError", param="model")

    def _check_count(self, count: int, param: str) -> None:
        if count == 0:
            raise APIError("At least one input must be given", param=param)
        refuse_too_many_inputs(count, param, self.options.max_inputs)

    def _vision_refusal(self, what: str) -> str:
        return (f"{self.name!r} is a vision retrieval model: {what}; index its images or pages with tokembed encode "
                "and search them with tokembed serve --index")

    def _check_dimensions(self, dimensions: int | None) -> None:
        dim = self.embedder.output_dim
        if dimensions is not None and dimensions > dim:
            raise APIError(f"dimensions={dimensions} is larger than the model's output dimension {dim}", param="dimensions")

    def _truncation(self, value: int | None, keys: tuple[str, ...]) -> int | None:
        """``truncate_prompt_tokens`` checked, for texts read with the profiles ``keys`` (``truncation.py``)."""
        colbert = [] if self.vision else [self.profiles[key].encoder.settings.max_length for key in keys if key != "raw"]
        return checked_truncation(value, self.max_model_len, colbert)

    def _max_model_len(self, requested: int | None) -> int:
        default = self.embedder.settings.max_length
        if requested is None:
            return default
        limit = self.embedder.model.position_limit
        if requested > limit:
            raise UsageError(f"--max-model-len {requested} is more than the model's {limit} positions")
        return requested


# -- plain functions ---------------------------------------------------------------------------------------
def list_response(kind: str, model: str, data: list, tokens: int) -> dict:
    """vLLM's list envelope around a response's ``data``; ``tokens``: the prompt tokens encoded."""
    return {
        "id": f"{kind}-{uuid.uuid4().hex}",
        "object": "list",
        "created": int(time.time()),
        "model": model,
        "data": data,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0},
    }


def _vocab_size(model) -> int:
    try:
        return int(model.backbone.get_input_embeddings().num_embeddings)
    except (AttributeError, TypeError):
        return len(model.tokenizer)
