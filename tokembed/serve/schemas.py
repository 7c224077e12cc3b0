"""Request and response bodies of ``tokembed serve``, shaped like vLLM's pooling API.

Requests are validated here (types, choices, ranges); everything that needs the model (token counts,
the vocabulary, the output dimension) is checked by the service. Field names and defaults follow vLLM
(``vllm/entrypoints/pooling/{base,pooling,scoring}/protocol.py``):

* ``PoolingRequest``  -> ``/pooling``: ``input`` (text, texts, token ids, lists of token ids), ``task``,
  ``encoding_format``, ``embed_dtype``, ``endianness``, ``truncate_prompt_tokens``, ``use_activation``,
  ``dimensions``; tokembed's extension ``input_type`` ("query" | "document") selects ColBERT processing.
* ``ScoreRequest``    -> ``/score``: ``queries``/``documents`` (or ``queries``/``items``, ``text_1``/``text_2``,
  ``data_1``/``data_2``).
* ``RerankRequest``   -> ``/rerank``: ``query``, ``documents``, ``top_n``.
* ``SearchRequest``   -> ``/search`` (tokembed's, with ``serve --index``): ``query``, ``top_k``, ``exact``,
  ``probe``, ``candidates``; ``truncate_prompt_tokens`` cuts the queries as ``/pooling``'s query input, and
  ``use_activation`` can only be the index's own normalization.

Unknown fields are ignored, as vLLM does (clients send ``user``, ``priority``, ``request_id``...), but for the
three that would change the vectors: ``normalize`` (refused as vLLM refuses it), ``truncation_side: "left"`` and
``padding: "max_length"``. Types are
strict: ``"8"`` is not an integer and ``1`` is not a string. The inputs (``input``, ``queries``, ``documents``,
``query``...) are checked by the validators of ``input_checks.py``, not by pydantic's unions: those recorded an error
per item for every form that failed (a 6 MiB body of a million one-text lists took the event loop 15-35 s and GBs),
and their count is refused before any item is checked. Responses are built as plain dicts by the
service (a pydantic model per float would be slow); the models below document them in the OpenAPI schema.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, WrapValidator, model_validator

from tokembed.serve.input_checks import (
    APIError,
    checked_pooling_input,
    checked_text_inputs,
    checked_texts,
    refuse_too_many_inputs,
)

TokenIds = list[Annotated[int, Field(ge=0)]]
PoolingInput = Annotated[str | list[str] | TokenIds | list[TokenIds], WrapValidator(checked_pooling_input)]
TextInputs = Annotated[str | list[str], WrapValidator(checked_text_inputs)]
Texts = Annotated[list[str], WrapValidator(checked_texts)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _refuse_fields_that_would_change_the_output(cls, data):
        """Ignored unknown fields must not be ones whose value changes the vectors: refused instead of answered
        as if they were absent (``normalize``: vLLM's own refusal since it became ``use_activation``)."""
        if isinstance(data, dict):
            if "normalize" in data:
                raise ValueError("Parameter `normalize` was removed; use `use_activation`")
            if data.get("truncation_side") not in (None, "right"):
                raise ValueError(f"truncation_side {data['truncation_side']!r}: tokembed keeps the first tokens "
                                 "(right-side truncation) only")
            if data.get("padding") not in (None, "do_not_pad"):
                raise ValueError(f"padding {data['padding']!r}: tokembed does not pad prompts (a pad token would "
                                 "be embedded as a token); leave it out or use 'do_not_pad'")
            refuse_too_many_inputs(cls._input_count(data), cls.counted_field)
        return data

    counted_field: ClassVar[str] = "input"

    @classmethod
    def _input_count(cls, data: dict) -> int:
        """The request's inputs, as the service counts them (before any of them is validated)."""
        return 0

    model: str | None = None
    truncate_prompt_tokens: Annotated[int, Field(ge=-1)] | None = None
    use_activation: bool | None = Field(
        default=None, description="L2-normalize every token vector (vLLM's activation for token_embed). Default true."
    )


class PoolingRequest(_Request):
    input: PoolingInput
    task: str | None = Field(default=None, description='Only "token_embed" (the default) is served.')
    encoding_format: Literal["float", "base64"] = "float"
    embed_dtype: Literal["float32", "float16", "bfloat16"] = Field(
        default="float32", description="dtype of base64 output (float output is always float32 values)."
    )
    endianness: Literal["native", "big", "little"] = "native"
    dimensions: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="Keep the first N dimensions of every vector, then re-normalize."
    )
    add_special_tokens: bool = True
    input_type: Literal["query", "document"] | None = Field(
        default=None,
        description="tokembed extension: encode as a ColBERT query or document (prefix, expansion, skiplist, "
        "lengths of the checkpoint). Absent: raw token embeddings, as vLLM returns them.",
    )

    @classmethod
    def _input_count(cls, data: dict) -> int:
        value = data.get("input")
        return len(value) if isinstance(value, list) and value and isinstance(value[0], (str, list)) else 1

    def split_input(self) -> tuple[list[str] | None, list[list[int]] | None]:
        """vLLM's four input forms -> (texts, None) or (None, token id lists)."""
        value = self.input
        if isinstance(value, str):
            return [value], None
        if not value:
            return [], None
        if isinstance(value[0], str):
            return list(value), None
        if isinstance(value[0], int):
            return None, [list(value)]
        return None, [list(ids) for ids in value]


class ScoreRequest(_Request):
    queries: TextInputs | None = None
    documents: TextInputs | None = None
    items: TextInputs | None = None
    text_1: TextInputs | None = None
    text_2: TextInputs | None = None
    data_1: TextInputs | None = None
    data_2: TextInputs | None = None

    counted_field: ClassVar[str] = "documents"

    @classmethod
    def _input_count(cls, data: dict) -> int:
        sides = ("queries", "documents", "items", "text_1", "text_2", "data_1", "data_2")
        return sum(_texts_count(data.get(name)) for name in sides)

    def fields(self) -> tuple[str, str]:
        """The names of the pair the request used, of vLLM's four spellings."""
        spellings = [("queries", "documents"), ("queries", "items"), ("text_1", "text_2"), ("data_1", "data_2")]
        firsts = [name for name in ("queries", "text_1", "data_1") if getattr(self, name) is not None]
        seconds = [name for name in ("documents", "items", "text_2", "data_2") if getattr(self, name) is not None]
        if len(firsts) != 1 or len(seconds) != 1 or (firsts[0], seconds[0]) not in spellings:
            raise APIError("give exactly one pair of inputs: queries and documents (or queries and items, text_1 "
                           "and text_2, data_1 and data_2)", param="queries")
        return firsts[0], seconds[0]

    def pair(self) -> tuple[list[str], list[str]]:
        """(queries, documents) from whichever of vLLM's four spellings was used; 1:1, 1:N or N:N."""
        first, second = ([value] if isinstance(value, str) else list(value)
                         for value in (getattr(self, name) for name in self.fields()))
        if len(first) > 1 and len(first) != len(second):
            raise APIError("Input lengths must be either 1:1, 1:N or N:N", param="queries")
        if not first:
            raise APIError("At least one text element must be given", param="queries")
        if not second:
            raise APIError("At least one text_pair element must be given", param="documents")
        return first, second


class RerankRequest(_Request):
    query: str
    documents: Texts
    top_n: int = Field(default=0, description="Results to return, best first; 0 (default) returns all.")

    counted_field: ClassVar[str] = "documents"

    @classmethod
    def _input_count(cls, data: dict) -> int:
        return 1 + _texts_count(data.get("documents"))


class SearchRequest(_Request):
    """tokembed extension (``serve --index``): each query's best documents of the served index."""

    query: TextInputs
    top_k: Annotated[int, Field(ge=1)] = Field(default=10, description="Documents to return per query, best first.")
    exact: bool = Field(default=False, description="Scan every stored token (as score --exact) rather than use the search structure.")
    probe: Annotated[int, Field(ge=1)] | None = Field(default=None, description="Centroids probed per query token (score --probe).")
    candidates: Annotated[int, Field(ge=1)] | None = Field(default=None, description="Documents re-ranked exactly (score --candidates).")
    use_activation: bool | None = Field(
        default=None, description="The index's own: true unless it was built with --no-normalize; another value is a 400."
    )

    counted_field: ClassVar[str] = "query"

    @classmethod
    def _input_count(cls, data: dict) -> int:
        return _texts_count(data.get("query"))


def _texts_count(value) -> int:
    return len(value) if isinstance(value, list) else int(value is not None)


# -- responses (documentation; the service returns dicts of exactly these shapes) -----------------------


class UsageInfo(BaseModel):
    prompt_tokens: int
    total_tokens: int
    completion_tokens: int | None = 0


class PoolingResponseData(BaseModel):
    index: int
    object: str = "pooling"
    data: list[list[float]] | str = Field(description="[n_tokens][dim] floats, or base64 of the flattened array")


class PoolingResponse(BaseModel):
    id: str
    object: str = "list"
    created: int
    model: str
    data: list[PoolingResponseData]
    usage: UsageInfo


class ScoreResponseData(BaseModel):
    index: int
    object: str = "score"
    score: float | None = Field(description="MaxSim; null only for a document left with no token")


class ScoreResponse(BaseModel):
    id: str
    object: str = "list"
    created: int
    model: str
    data: list[ScoreResponseData]
    usage: UsageInfo


class RerankDocument(BaseModel):
    text: str


class RerankResult(BaseModel):
    index: int
    document: RerankDocument
    relevance_score: float | None


class RerankUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class RerankResponse(BaseModel):
    id: str
    model: str
    usage: RerankUsage
    results: list[RerankResult]


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int


class ErrorResponse(BaseModel):
    """vLLM's error envelope: ``{"error": {"message", "type", "param", "code"}}``."""

    error: ErrorInfo
