"""The encoding steps shared by every family: prefix -> tokenize/truncate -> expand -> (forward ->
project, in ``TokenModel.embed``) -> mask -> cut dimensions -> normalize.

``TextEncoder`` binds a ``TokenModel`` to one kind's ``EncodeSettings``. Its steps reproduce
sentence-transformers' ``MultiVectorEncoder`` (hence PyLate) in colbert mode, and vLLM's ``token_embed``
in raw mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tokembed.errors import ModelError
from tokembed.models.base import TokenModel, read_json
from tokembed.models.long_text import (
    lstrip_tokens_seen_before, read_otherwise_before_added_token_fix, read_otherwise_before_lstrip_fix,
    read_otherwise_by_unchecked_windows, tokenize_long, truncated_ids, window_chars,
)
from tokembed.models.token_ids import TokenIdGuard, TokenPastEmbeddingsError, embedding_rows
from tokembed.settings import EncodeSettings

# Families whose ColBERT markers are colbert-ai's artifact.metadata tokens (default [unused0]/[unused1]).
MARKER_FAMILIES = ("HF_ColBERT", "jina-colbert")
# Texts a marker form must read as colbert-ai inserts it. Words only: on a SentencePiece tokenizer "[m] " (what every
# release wrote, in the settings fingerprint) differs from the insertion on an empty text or leading spaces alone,
# and changing the form there would make every such index (jina-colbert-v2) one to encode again (README: known)
MARKER_PROBES = ("hello", "the capital of france")


@dataclass
class Tokenized:
    """One item's tokens: ``ids`` go through the model; ``n_attend`` of them from ``start`` are attended fully."""

    ids: np.ndarray  # [n_tokens] int64
    n_attend: int
    start: int = 0  # the expansion tokens before a left-expanded query


class OutputShape:
    """What every encoder's rows look like: the stored dtype and dim (``--dimensions`` applied)."""

    model: object
    settings: EncodeSettings

    @property
    def store_dtype(self) -> np.dtype:
        return np.dtype(np.float16 if self.settings.store_dtype == "float16" else np.float32)

    @property
    def output_dim(self) -> int:
        dim = self.model.output_dim
        return min(dim, self.settings.dimensions) if self.settings.dimensions else dim


class TextEncoder(OutputShape):
    def __init__(self, model: TokenModel, settings: EncodeSettings) -> None:
        self.model = model
        self.settings = settings
        tokenizer = model.tokenizer
        if settings.mode == "colbert" and model.family in MARKER_FAMILIES:
            refuse_unknown_markers(model)
        elif settings.mode == "colbert" and settings.register_prefix_tokens and model.colbert is not None:
            refuse_unknown_prefixes(model)
        if settings.mode == "colbert" and settings.register_prefix_tokens and model.colbert is not None:
            register_prefix_tokens(tokenizer, (model.colbert.query_prefix, model.colbert.document_prefix))
        if settings.mode == "colbert" and model.family in MARKER_FAMILIES:
            refuse_marker_forms(model)
        if settings.mode == "colbert" and settings.kind == "query":
            refuse_queries_past_positions(model)
        pad = _pad_token(tokenizer)
        check_embedding_row(model, *pad)
        self.pad_id = 0 if pad[2] is None else pad[2]
        expansion_id = _expansion_token(tokenizer, settings.expansion_token)[2]
        self.expansion_id = self.pad_id if expansion_id is None else expansion_id
        if settings.mode == "colbert" and model.colbert is not None and model.colbert.expand_queries:
            refuse_left_expansion(model)  # for documents too: an index whose queries cannot be encoded is no use
            check_embedding_row(model, *_expansion_token(tokenizer, model.colbert.expansion_token))
        self.skip_ids = skiplist_ids(tokenizer, settings.skiplist_words)
        self.keep_only_ids = np.asarray(settings.keep_only_ids or (), dtype=np.int64)
        self.first_token_dropped = model.first_token_dropped
        self.lstrip_tokens_seen_before = lstrip_tokens_seen_before(tokenizer)  # for the mark of that fix
        self.id_guard = TokenIdGuard(model)  # after register_prefix_tokens, which may add tokens
        self._refuse_prefix_past_embeddings()
        self.least_length = self._least_length()  # after register_prefix_tokens, which makes a marker one token

    def _refuse_prefix_past_embeddings(self) -> None:
        """Every input starts with the prefix (a ColBERT marker, maybe more words): a token of it past the
        embeddings would fail the first row read, blaming that row; refused at load, naming the prefix."""
        prefix = self.settings.prefix
        if not prefix:
            return
        try:
            self.id_guard.check([np.asarray(self._token_ids([""], prefix)[0])], [""])
        except TokenPastEmbeddingsError as exc:
            raise exc.naming(f"the {self.settings.kind} prefix {prefix!r}") from None

    def _least_length(self) -> int:
        """Tokens every input holds whatever its text: the special tokens and the prefix (a ColBERT marker); 0
        without a prefix (raw mode). A shorter length cuts the prefix and keeps no token of the text."""
        prefix = self.settings.prefix
        if not prefix:
            return 0
        alone, stripped = truncated_ids(self.model.tokenizer, [prefix, prefix.rstrip() or prefix], self.model.position_limit)
        # A SentencePiece prefix's last space ("passage: ") is a token of its own alone, and joins the text's first
        # word ("▁hello") in an input: where the prefix without it tokenizes as the start of the prefix with it,
        # that token is not needed. (A marker that holds the space, PyLate's "[D] ", tokenizes otherwise without.)
        ends = next((n for n, (a, b) in enumerate(zip(alone[::-1], stripped[::-1])) if a != b), 0)  # [SEP], </s>
        body, body_stripped = alone[: len(alone) - ends], stripped[: len(stripped) - ends]
        return len(stripped) if body[: len(body_stripped)] == body_stripped else len(alone)

    def content_mark(self, text: str | None) -> str:
        """Added to a row's content hash where this release reads the text otherwise than an earlier one did, so
        that an incremental run encodes the row again as a rebuild does (``plan.content_hash``); "" elsewhere."""
        tokenizer, max_length = self.model.tokenizer, self.settings.max_length
        if not isinstance(text, str):
            return ""
        marks = []
        if read_otherwise_before_lstrip_fix(tokenizer, self.lstrip_tokens_seen_before, text, max_length):
            marks.append("lstrip tokens past a window")
        if read_otherwise_before_added_token_fix(tokenizer, text, max_length):
            marks.append("an added token cut by a window")
        if read_otherwise_by_unchecked_windows(tokenizer, text, max_length, self.settings.prefix or ""):
            marks.append("an unchecked window read otherwise than the text")
        return "; ".join(marks)

    # -- before the forward pass -------------------------------------------------------------
    def tokenize(self, texts: list[str]) -> list[Tokenized]:
        settings = self.settings
        encoded = self._token_ids(texts, settings.prefix or "")
        items = [Tokenized(np.asarray(ids, dtype=np.int64), len(ids)) for ids in encoded]
        self.id_guard.check((item.ids for item in items), texts)
        if settings.expand_to:
            items = [self._expand(item) for item in items]
        return items

    def _token_ids(self, texts: list[str], prefix: str) -> list[list[int]]:
        """Ids of ``prefix + text`` with special tokens, truncated to ``max_length``; a long text is tokenized
        only as far as that needs (``long_text``: the same ids), so a 100 MB row costs what a short one does."""
        tokenizer, max_length = self.model.tokenizer, self.settings.max_length
        window = window_chars(max_length)
        long = {i for i, text in enumerate(texts) if len(text) > window}
        short = [prefix + text for i, text in enumerate(texts) if i not in long]
        encoded = iter(truncated_ids(tokenizer, short, max_length) if short else [])
        return [
            tokenize_long(tokenizer, text, max_length, prefix=prefix) if i in long else next(encoded)
            for i, text in enumerate(texts)
        ]

    def _expand(self, item: Tokenized) -> Tokenized:
        """ColBERT query expansion: fill the query up to ``expand_to`` with the mask (expansion) token, after it
        or, where ``expansion_side`` is "left", before it (where MultiVectorEncoder puts them: its pad positions)."""
        missing = self.settings.expand_to - len(item.ids)
        if missing <= 0:
            return item
        filler = np.full(missing, self.expansion_id, dtype=np.int64)
        if self.settings.expansion_side == "left":
            return Tokenized(np.concatenate([filler, item.ids]), item.n_attend, start=missing)
        return Tokenized(np.concatenate([item.ids, filler]), item.n_attend)

    def collate(self, batch: list[Tokenized]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-pad a batch: [B, T] ids and attention (expansion tokens attended only if configured)."""
        width = max(len(item.ids) for item in batch)
        input_ids = np.full((len(batch), width), self.pad_id, dtype=np.int64)
        attention = np.zeros((len(batch), width), dtype=np.int64)
        attend_expansion = self.settings.attend_to_expansion_tokens
        for row, item in enumerate(batch):
            input_ids[row, : len(item.ids)] = item.ids
            if attend_expansion:
                attention[row, : len(item.ids)] = 1
            else:
                attention[row, item.start : item.start + item.n_attend] = 1
        return torch.from_numpy(input_ids), torch.from_numpy(attention)

    def embed(self, collated: tuple[torch.Tensor, torch.Tensor], device: str | None = None) -> torch.Tensor:
        """Collated (ids, attention) -> [B, T, D] float32 on ``device`` (the shape ``VisionEncoder`` has too)."""
        input_ids, attention = collated
        if device is not None:
            input_ids, attention = input_ids.to(device), attention.to(device)
        return self.model.embed(input_ids, attention)

    # -- after the forward pass --------------------------------------------------------------
    def finish(self, vectors: torch.Tensor, batch: list[Tokenized]) -> list[tuple[np.ndarray, np.ndarray]]:
        """[B, T, D] float32 -> per item (vectors [n_kept, D] in the store dtype, token ids [n_kept])."""
        settings = self.settings
        if settings.dimensions is not None:
            vectors = vectors[..., : settings.dimensions]
        if settings.normalize:
            vectors = torch.nn.functional.normalize(vectors, p=2, dim=-1)
        if settings.pool_factor > 1:  # documents only (settings.resolve): pooled in float32, then cast
            return self._pooled(vectors, batch)
        vectors = vectors.to(_store_dtype(settings.store_dtype)).cpu().numpy()
        results = []
        for row, item in enumerate(batch):
            keep = self.keep_mask(item.ids)
            results.append((vectors[row, : len(item.ids)][keep], item.ids[keep].astype(np.int32)))
        return results

    def _pooled(self, vectors: torch.Tensor, batch: list[Tokenized]) -> list[tuple[np.ndarray, np.ndarray]]:
        """``--pool-factor``: each item's kept vectors (skiplist out, as PyLate masks before pooling), pooled."""
        from tokembed.models.pooling import pool_rows

        rows = []
        for row, item in enumerate(batch):
            keep = self.keep_mask(item.ids)
            rows.append((vectors[row, : len(item.ids)].cpu()[torch.from_numpy(keep)], item.ids[keep]))
        return pool_rows(rows, self.settings.pool_factor, _store_dtype(self.settings.store_dtype))

    def keep_mask(self, ids: np.ndarray) -> np.ndarray:
        """Positions that reach the output: all but skiplisted tokens, and only allowlisted ones where the model
        keeps only some ids (padding is never there); not the first where the model drops its leading token."""
        keep = np.ones(len(ids), dtype=bool) if self.skip_ids.size == 0 else ~np.isin(ids, self.skip_ids)
        if self.keep_only_ids.size:
            keep &= np.isin(ids, self.keep_only_ids)
        if len(ids) and ids[0] == self.first_token_dropped:
            keep[0] = False
        return keep

def register_prefix_tokens(tokenizer, prefixes: tuple[str, ...]) -> None:
    """Make in-vocab legacy markers (``[unused0]``, ``[Q] ``) tokenize as one special piece."""
    to_register = prefix_tokens_to_register(tokenizer, prefixes)
    if to_register:
        tokenizer.add_special_tokens({"additional_special_tokens": to_register})


def prefix_tokens_to_register(tokenizer, prefixes: tuple[str, ...]) -> list:
    """The ``AddedToken`` s ``register_prefix_tokens`` adds. Same gates as sentence-transformers: a prefix the
    tokenizer does not know is left as plain text, and one it already emits whole needs nothing."""
    from tokenizers import AddedToken

    added = set(getattr(tokenizer, "added_tokens_encoder", None) or {})
    vocab = tokenizer.get_vocab()
    to_register = []
    for value in prefixes:
        if not value or not value.split():
            continue
        for prefix in (value, value.split(None, 1)[0]):
            if prefix not in added and prefix not in vocab:
                continue
            if tokenizer.tokenize(prefix) != [prefix]:
                to_register.append(AddedToken(prefix, normalized=False, special=True))
            break
    return to_register


def _known_tokens(tokenizer) -> set[str]:
    return set(tokenizer.get_vocab()) | set(getattr(tokenizer, "added_tokens_encoder", None) or {})


def refuse_unknown_prefixes(model: TokenModel) -> None:
    """A PyLate checkpoint's ``query_prefix`` / ``document_prefix`` must be a token of its tokenizer, whole (PyLate
    saves the tokenizer with them added). For one that is not, PyLate's ``ColBERT.__init__`` adds it as one new token
    (``add_tokens``) and resizes the embeddings: its vector comes from a row initialized at random, which no encoder
    can reproduce."""
    known, saved = _known_tokens(model.tokenizer), model.path / "config_sentence_transformers.json"
    settings = read_json(saved) or {}
    for setting in ("query_prefix", "document_prefix"):
        value = settings.get(setting)  # as saved: a prompt beside it is text, not part of the token
        if isinstance(value, str) and value and value not in known:  # PyLate looks the whole prefix up, as one token
            raise ModelError(
                f"{saved}: the PyLate {setting} {value!r} is not a token "
                "of this tokenizer; PyLate would add it as a new token with an untrained, "
                "randomly initialized embedding, so there is no vector to match",
                hint="use the tokenizer the checkpoint was saved with (its tokenizer.json holds the prefix tokens), "
                     "or encode with --mode raw")


def refuse_unknown_markers(model: TokenModel) -> None:
    """A Stanford or jina checkpoint's markers must be tokens of its tokenizer (``[unused0]``/``[unused1]`` are BERT's,
    jina-colbert-v2 names its ``[QueryMarker]``/``[DocumentMarker]``). For one that is not (colbert-ai's default over
    an XLM-R tokenizer included), the references disagree: colbert-ai writes the id ``convert_tokens_to_ids`` gives
    (``<unk>``) at position 1, PyLate adds an untrained token, sentence-transformers splits the marker into text
    pieces."""
    known = _known_tokens(model.tokenizer)
    metadata = read_json(model.path / "artifact.metadata") or {}
    for setting, value in (("query_token_id", model.colbert.query_prefix), ("doc_token_id", model.colbert.document_prefix)):
        words = value.split()
        if words and value not in known and words[0] not in known:
            origin = "" if metadata.get(setting) else ", colbert-ai's default: artifact.metadata does not set it"
            raise ModelError(
                f"{model.path / 'artifact.metadata'}: the ColBERT marker {words[0]!r} ({setting}{origin}) is not "
                "a token of this tokenizer; the references disagree on what to encode there (colbert-ai writes "
                "<unk>, PyLate adds an untrained token, sentence-transformers splits it into text pieces)",
                hint="name markers of the tokenizer's vocabulary in artifact.metadata (query_token_id, doc_token_id; "
                     "jina-colbert-v2 ships [QueryMarker] / [DocumentMarker]), or encode with --mode raw")


def marker_forms(prefix: str) -> tuple[str, ...]:
    """The text forms of a colbert-ai marker, the one tokembed always used first (``"[unused0] "``: WordPiece drops
    the space) then the marker alone (a byte-level BPE or SentencePiece tokenizer reads the space into the text).
    A prefix of several words (a marker then text) is no token colbert-ai could insert: kept as written."""
    marker = prefix.strip()
    return (marker + " ", marker) if len(marker.split()) == 1 else (prefix,)


def reads_as_inserted(tokenizer, prefix: str) -> bool:
    """Whether ``prefix + text`` tokenizes as colbert-ai's insertion: the text's own ids, the marker's id after the
    first (``[CLS] marker + ids(text)[1:]``), on every probe text. The markers must be registered already."""
    marker_id = tokenizer.convert_tokens_to_ids(prefix.strip())
    limit = 1 << 20
    alone = truncated_ids(tokenizer, list(MARKER_PROBES), limit)
    prefixed = truncated_ids(tokenizer, [prefix + text for text in MARKER_PROBES], limit)
    return all(list(got) == list(ids[:1]) + [marker_id] + list(ids[1:]) for ids, got in zip(alone, prefixed))


def refuse_marker_forms(model: TokenModel) -> None:
    """A Stanford or jina marker that no text form reads as colbert-ai's inserted id on plain words
    (``marker_forms``, ``MARKER_PROBES``): colbert-ai, PyLate and vLLM insert the id after the text's first token,
    sentence-transformers prepends the text."""
    for setting, prefix in (("query_token_id", model.colbert.query_prefix), ("doc_token_id", model.colbert.document_prefix)):
        if len(marker_forms(prefix)) > 1 and not reads_as_inserted(model.tokenizer, prefix):
            raise ModelError(
                f"{model.path}: the ColBERT marker {prefix.strip()!r} ({setting}) cannot be written as text before "
                f"a text so that {type(model.tokenizer).__name__} reads the text's own tokens after it, with or "
                "without a space: the references disagree on what to encode there (colbert-ai, PyLate and vLLM "
                "insert the marker's id after the text's first token, sentence-transformers prepends the marker "
                "as text)", hint="encode with --mode raw")


def refuse_queries_past_positions(model: TokenModel) -> None:
    """colbert-ai, PyLate and sentence-transformers pad every query to the query expansion width (Stanford and jina
    ``query_maxlen``, PyLate ``query_length``, a native ``query_expansion`` length): past the model's positions they
    fail on every query; tokembed refuses to encode colbert queries rather than expand them to fewer (documents and
    raw mode do not read it)."""
    if model.query_width_setting is None or model.colbert.query_length <= model.position_limit:
        return
    source, key = model.query_width_setting
    raise ModelError(
        f"{source}: {key} {model.colbert.query_length} is more than this model's {model.position_limit} positions; "
        "colbert-ai, PyLate and sentence-transformers pad every query to it (past a table of positions they fail)",
        hint=f"set {key} to {model.position_limit} or less in {source.name}")


def skiplist_ids(tokenizer, words: tuple[str, ...]) -> np.ndarray:
    """Token ids of the skiplist words; words that are not one vocab token are dropped (never [UNK])."""
    unk_id = getattr(tokenizer, "unk_token_id", None)
    unk_token = getattr(tokenizer, "unk_token", None)
    ids = []
    for word in words:
        token_id = tokenizer.convert_tokens_to_ids(word)
        if token_id is None or (unk_id is not None and token_id == unk_id and word != unk_token):
            continue
        ids.append(token_id)
    return np.asarray(sorted(set(ids)), dtype=np.int64)


def refuse_left_expansion(model: TokenModel) -> None:
    """``padding_side: "left"``: MultiVectorEncoder puts the expansion tokens before the query, while PyLate and
    colbert-ai write their marker at position 1 after padding, among the expansion tokens: the references disagree.
    A native save has MultiVectorEncoder only, whose side its config records (``expansion_side``)."""
    left = getattr(model.tokenizer, "padding_side", "right") == "left"
    if left and model.colbert.expansion_side != "left":
        raise ModelError(
            f"{model.path / 'tokenizer_config.json'}: padding_side 'left' with query expansion; the references "
            "disagree on where the expansion tokens and the query marker go (MultiVectorEncoder pads before the "
            "query, PyLate and colbert-ai write the marker at position 1 of the padded query)",
            hint='set "padding_side": "right" (what ColBERT checkpoints are trained with); a native sentence-transformers '
                 'save is encoded as MultiVectorEncoder pads it',
        )


def check_embedding_row(model: TokenModel, setting: str, token: str | None, token_id: int | None) -> None:
    """A token the encoder inserts itself (padding, query expansion) must be a row of the input embeddings, else
    the forward fails on the first batch that holds it."""
    rows = embedding_rows(model)
    if token_id is None or rows is None or 0 <= token_id < rows:
        return
    source = "sentence_bert_config.json" if setting == "query_expansion token" else "tokenizer_config.json"
    raise ModelError(f"{model.path / source}: {setting} {token!r} is token id {token_id}, past the {rows} rows of "
                     "the model's input embeddings (not in its vocabulary)")


def _special_token(tokenizer, names: tuple[str, ...]) -> tuple[str, str | None, int] | None:
    """(its setting, the token, its id) of the first of ``names`` the tokenizer has an id for."""
    for name in names:
        token_id = getattr(tokenizer, f"{name}_id", None)
        if token_id is not None:
            return name, getattr(tokenizer, name, None), int(token_id)
    return None


def _pad_token(tokenizer) -> tuple[str, str | None, int | None]:
    """(its setting, the token, its id): what batches are padded with (id None: neither, so id 0)."""
    return _special_token(tokenizer, ("pad_token", "eos_token")) or ("pad_token", None, None)


def _expansion_token(tokenizer, token: str | None) -> tuple[str, str | None, int | None]:
    """(its setting, the token, its id): what queries are expanded with (id None: the pad token)."""
    if token is not None:
        token_id = tokenizer.convert_tokens_to_ids(token)
        return "query_expansion token", token, None if token_id is None else int(token_id)
    return _special_token(tokenizer, ("mask_token", "eos_token")) or _pad_token(tokenizer)


def _store_dtype(name: str) -> torch.dtype:
    return torch.float16 if name == "float16" else torch.float32
