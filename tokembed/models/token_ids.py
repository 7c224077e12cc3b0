"""Token ids past the rows of the model's input embeddings: a forward holding one fails (an ``IndexError`` on the
CPU, a device-side assert on CUDA), so tokembed refuses it first (exit 4, a model problem, never a bad row).

* ``check_token_ids_fit`` (at load): refused where every row, or a predictable set of rows, would hold one: a base
  vocabulary larger than the rows (any text may produce those ids), or an added token the pipeline writes itself
  (a special token it pads or frames rows with, a ColBERT marker, a vision family's image/video placeholder).
* ``TokenIdGuard`` (where input ids are built): any other added token past the rows is emitted only by a text
  holding its literal content (a later fine-tune's tokenizer.json), so such a checkpoint encodes every row without
  one; the first row holding one raises ``TokenPastEmbeddingsError``, which callers re-raise naming the row
  (``rows_named``, ``TokenPastEmbeddingsError.naming``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from tokembed.errors import ModelError

# Tokenizer settings naming a token the pipeline writes into rows (padding, framing, unknown characters).
_PIPELINE_SETTINGS = ("pad_token", "cls_token", "sep_token", "bos_token", "eos_token", "unk_token")
_HINT = ("resize the model's embeddings to its tokenizer (resize_token_embeddings) and save it again, or use the "
         "tokenizer it was trained with")


class TokenPastEmbeddingsError(ModelError):
    """An input holding a token past the embeddings. ``position``: its index among the inputs tokenized together;
    ``digest``: its text's ``text_digest`` (None for an image), so that a caller can tell which row it was."""

    def __init__(self, message: str, hint: str | None = None, position: int = 0, digest: str | None = None) -> None:
        super().__init__(message, hint)
        self.position, self.digest = position, digest

    def naming(self, row: str | None) -> ModelError:
        """The same refusal, naming ``row`` (``row 'z'``, ``query 'q1'``) as the input holding the token."""
        if row is None:
            return self
        return ModelError(str(self).replace(": an input holds it", f": {row} holds it", 1), hint=self.hint)


def check_token_ids_fit(model) -> None:
    """Refuse at load a tokenizer whose ids past the embeddings every row (or a predictable set) would hold."""
    rows = embedding_rows(model)
    if rows is None:
        return
    tokenizer = model.tokenizer
    base, past = _ids_past(tokenizer, rows)
    if base <= rows and not past:
        return
    file = tokenizer_file(model)
    if base > rows:
        raise ModelError(f"{file}: token {_token_of(tokenizer, rows, past)!r} is id {rows}, past the {rows} rows of the "
                         f"model's input embeddings ({base - rows + len(past)} token(s) of this tokenizer are; its "
                         f"vocabulary alone has {base}): any text may hold one", hint=_HINT)
    roles_by_id, roles_by_token = _pipeline_tokens(model)
    for token_id, token in sorted(past.items()):
        role = roles_by_id.get(token_id) or roles_by_token.get(token)
        if role in _PIPELINE_SETTINGS:  # a special token its config names but its vocabulary lacks: transformers added it
            raise ModelError(f"{Path(file).parent / 'tokenizer_config.json'}: {role} {token!r} is token id {token_id}, "
                             f"past the {rows} rows of the model's input embeddings (not in its vocabulary)")
        if role is not None:
            raise ModelError(f"{file}: {role} {token!r} is id {token_id}, past the {rows} rows of the model's input "
                             f"embeddings ({len(past)} token(s) of this tokenizer are): tokembed writes it into rows "
                             "itself, so they cannot be encoded", hint=_HINT)


class TokenIdGuard:
    """Checks the ids of each batch where they are built: cheap (one ``max`` per input), and nothing at all where no
    id of the tokenizer is past the embeddings (the common case)."""

    def __init__(self, model) -> None:
        rows = embedding_rows(model)
        self.past = {} if rows is None else _ids_past(model.tokenizer, rows)[1]
        self.rows = rows if self.past else None
        self.file = tokenizer_file(model) if self.past else None
        self.tokenizer = model.tokenizer

    def check(self, ids_of_inputs: Iterable[np.ndarray], inputs: list) -> None:
        if self.rows is None:
            return
        for position, ids in enumerate(ids_of_inputs):
            if len(ids) and int(ids.max()) >= self.rows:
                token_id = int(ids[ids >= self.rows][0])
                raise TokenPastEmbeddingsError(
                    f"{self.file}: token {_token_of(self.tokenizer, token_id, self.past)!r} is id {token_id}, past the "
                    f"{self.rows} rows of the model's input embeddings: an input holds it, and cannot be encoded",
                    hint=_HINT, position=position, digest=text_digest(inputs[position]),
                )


def rows_named(results: Iterator, pending: Iterable, input_of: Callable) -> Iterator:
    """``results`` of a runner, a ``TokenPastEmbeddingsError`` re-raised naming its row: the item at its position
    among the inputs of a pending chunk (``encode.PlannedChunk``) whose input is the text it was raised for."""
    try:
        yield from results
    except TokenPastEmbeddingsError as exc:
        held = (chunk.items[chunk.to_encode[exc.position]] for chunk in pending if exc.position < len(chunk.to_encode))
        item = next((item for item in held if exc.digest is not None and text_digest(input_of(item)) == exc.digest), None)
        raise exc.naming(None if item is None else f"row {item.id!r}") from None


def text_digest(value) -> str | None:
    if not isinstance(value, str):
        return None
    return hashlib.blake2b(value.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def embedding_rows(model) -> int | None:
    """The rows of the model's input embeddings, or None where they cannot be read."""
    backbone = model.backbone if hasattr(model, "backbone") else getattr(model, "model", None)
    rows = getattr(backbone, "embedding_rows", None)  # OpenVINO keeps no torch embeddings, only their count
    if rows is not None:
        return int(rows)
    try:
        return int(backbone.get_input_embeddings().num_embeddings)
    except (AttributeError, TypeError, NotImplementedError):
        return None


def tokenizer_file(model) -> Path:
    """The tokenizer file the model reads: a vision adapter's own where it ships one (vision families read their
    processor from ``processor_overlay``; text families read the base's tokenizer), else the checkpoint's."""
    from tokembed.models.processor_overlay import ships_tokenizer

    adapter = (getattr(model, "extra", None) or {}).get("adapter")
    from_adapter = adapter and hasattr(model, "processor") and ships_tokenizer(Path(adapter))
    folder = Path(adapter) if from_adapter else Path(model.path)
    return folder / "tokenizer.json" if (folder / "tokenizer.json").is_file() else folder


def _ids_past(tokenizer, rows: int) -> tuple[int, dict[int, str]]:
    """(the size of the base vocabulary, {id: token} of the added tokens at or past ``rows``)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # get_vocab() would build a dict of the whole vocabulary (~1 s for 250k tokens)
        base = backend.get_vocab_size(with_added_tokens=False)  # the model's own ids: 0 .. base - 1
        added = {int(i): token.content for i, token in backend.get_added_tokens_decoder().items()}
    else:  # a Python tokenizer
        base = int(getattr(tokenizer, "vocab_size", 0) or 0)
        added = {int(i): token for token, i in (getattr(tokenizer, "added_tokens_encoder", None) or {}).items()}
    return base, {i: token for i, token in added.items() if i >= rows}


def _token_of(tokenizer, token_id: int, past: dict[int, str]) -> str | None:
    if token_id in past:
        return past[token_id]
    try:
        return tokenizer.convert_ids_to_tokens(token_id)
    except Exception:  # noqa: BLE001 - only the message's wording depends on it
        return None


def _pipeline_tokens(model) -> tuple[dict[int, str], dict[str, str]]:
    """({id: role}, {token: role}) of the tokens tokembed writes into rows itself."""
    from tokembed.models.vision_inputs import placeholder_tokens

    tokenizer, by_id, by_token = model.tokenizer, {}, {}
    for setting in _PIPELINE_SETTINGS:
        token, token_id = getattr(tokenizer, setting, None), getattr(tokenizer, f"{setting}_id", None)
        if isinstance(token, str):
            by_token.setdefault(token, setting)
        if isinstance(token_id, int):
            by_id.setdefault(token_id, setting)
    colbert = getattr(model, "colbert", None)
    for role, value in (("query marker", getattr(colbert, "query_prefix", "")),
                        ("document marker", getattr(colbert, "document_prefix", ""))):
        if value and value.split():  # PyLate's "[Q] " is one added token, colbert-ai's "[unused0]" the first word
            by_token.setdefault(value, f"the ColBERT {role}")
            by_token.setdefault(value.split()[0], f"the ColBERT {role}")
    processor = getattr(model, "processor", None)
    if processor is not None:
        for token in placeholder_tokens(processor):
            by_token.setdefault(token, "the processor's image/video placeholder")
        for name in ("image_token_id", "video_token_id"):
            if isinstance(token_id := getattr(processor, name, None), int):
                by_id.setdefault(token_id, "the processor's image/video placeholder")
    return by_id, by_token
