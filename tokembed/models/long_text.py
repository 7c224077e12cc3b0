"""Tokenize a long text only as far as truncation keeps: the same ids as tokenizing all of it, at the cost of
a window of it.

Why it is exact: a fast tokenizer normalizes, splits the text into words (pre-tokens, by regexes that look
at most a character past a match), then tokenizes each word on its own. Words that end well before the cut
of a window are therefore split and tokenized as in the whole text; only the last words of the window (a
word cut in half, a whitespace run whose lookahead changed, a character a normalizer would combine with the
next) can differ. So if the first ``max_length`` tokens all come from words before the window's last two
that end ``_MARGIN_CHARS`` before its cut, the window's truncated ids are the whole text's. One exception
reaches further back: an added token with ``lstrip`` (ModernBERT's ``[MASK]``, XLM-R's ``<mask>``) is matched
before the split and takes every whitespace character to its left, however many; past the cut (or cut in
half) it leaves that whitespace to become tokens. For such tokenizers the first non-whitespace character after
the kept tokens must also start early enough for any such token starting there to lie whole in the window. Otherwise the
window grows (x4) until they do, or until it is the whole text. And a window never ends inside an added token
(Qwen's ``<|object_ref_start|>``, 20 characters, which a cut splits into words of its own pieces): it ends after
it instead. That finds the exact spelling only: where the tokenizer has an added token longer than the margin,
the kept words must also end that token's length further back, so that none in any spelling its normalizer
matches is cut either (``_added_token_reach``). Slow (Python) tokenizers, left-side truncation and one-word
texts (no pre-tokenizer split) fall back to tokenizing the whole text.
"""

from __future__ import annotations

from tokembed.models.bert_tokenizer import truncated_encoding

_MARGIN_CHARS = 16  # normalizers (NFC/NFKC, SentencePiece's charsmap) change at most a few characters together
_GROWTH = 4


def window_chars(max_length: int) -> int:
    """First window: room for ``max_length`` tokens at 12 characters each (far more than any text needs)."""
    return max(1024, 12 * max_length)


def tokenize_long(
    tokenizer, text: str, max_length: int, first_window: int | None = None, prefix: str = ""
) -> list[int]:
    """``tokenizer(prefix + text, truncation=True, max_length=max_length)["input_ids"]``, reading only the
    start of ``text`` (``prefix`` is the ColBERT marker; it is joined to the window, never to the whole text)."""
    window = first_window or window_chars(max_length)
    if not _windowable(tokenizer):
        window = len(text)
    needed = max_length - tokenizer.num_special_tokens_to_add(pair=False)
    added = _added_tokens(tokenizer) if window < len(text) else []
    reach = _added_token_reach(added)
    while window < len(text):
        window = _past_added_tokens(text, window, added)
        if window >= len(text):
            break
        head = prefix + text[:window]
        if needed <= 0 or _prefix_decides(tokenizer, head, needed, reach):
            return _truncated_ids(tokenizer, head, max_length)
        window *= _GROWTH
    return _truncated_ids(tokenizer, prefix + text, max_length)


def _windowable(tokenizer) -> bool:
    return bool(getattr(tokenizer, "is_fast", False)) and getattr(tokenizer, "truncation_side", "right") == "right"


def _prefix_decides(tokenizer, prefix: str, needed: int, reach: int = 0) -> bool:
    """Whether the first ``needed`` content tokens of ``prefix`` are those of any text that starts with it
    (``reach``: ``_added_token_reach``)."""
    encoding = tokenizer(
        prefix, add_special_tokens=False, return_offsets_mapping=True,
        return_attention_mask=False, return_token_type_ids=False, verbose=False,  # no "longer than max" warning
    )
    if len(encoding["input_ids"]) <= needed:
        return False
    words, offsets = encoding.word_ids(), encoding["offset_mapping"]
    last_word = max(w for w in words if w is not None)
    word, (_, end) = words[needed - 1], offsets[needed - 1]
    longest = _longest_lstrip_token(tokenizer)
    if longest:
        rest = prefix[end:]
        after_whitespace = end + len(rest) - len(rest.lstrip())
        if after_whitespace + longest > len(prefix) - _MARGIN_CHARS:
            return False
    end = _word_end(words, offsets, needed - 1)  # the word's: see _added_token_reach
    return word is not None and word < last_word - 1 and end <= len(prefix) - _MARGIN_CHARS - reach


def _word_end(words: list[int | None], offsets: list[tuple[int, int]], index: int) -> int:
    """Where the word of token ``index`` ends (its last token's end)."""
    while index + 1 < len(words) and words[index] is not None and words[index + 1] == words[index]:
        index += 1
    return offsets[index][1]


def _added_tokens_decoder(tokenizer) -> dict:
    """Id -> ``AddedToken`` (content, ``lstrip``, ``normalized``) of every added token: transformers' fast
    tokenizers and the native BERT tokenizer both list them so."""
    return getattr(tokenizer, "added_tokens_decoder", None) or {}


def _added_tokens(tokenizer) -> list[str]:
    """The contents of the added tokens (matched in the text before it is split into words)."""
    return [token.content for token in _added_tokens_decoder(tokenizer).values() if token.content]


def _added_token_reach(added: list[str]) -> int:
    """How much further than ``_MARGIN_CHARS`` before the cut the kept tokens' last word must end: the longest
    added token's length where one is longer than the margin (0 otherwise: the margin covers those too).

    Why that is enough whatever the spelling (``_past_added_tokens`` finds only the exact one; a ``normalized``
    token also matches ``[entity_marker_start]`` under lowercasing, full-width or accented letters under NFKC
    or accent stripping): added tokens are matched leftmost-longest, before the split into words, so the
    window's matches are the whole text's up to the first match the cut changes. That match reaches past the
    cut less the margin (the normalizer's look-ahead), so it starts after cut - margin - longest (its spelling
    is the token's length, plus any characters the normalizer drops: few, within the margin). The words that
    end before it are the whole text's words. A word, not a token: the word glued to such a match's start
    ends there in the whole text but runs on into the match's pieces in the window."""
    longest = max(map(len, added), default=0)
    return longest if longest > _MARGIN_CHARS else 0


def _past_added_tokens(text: str, cut: int, added: list[str]) -> int:
    """``cut``, moved to the end of any added token it would split (again while the new cut splits another)."""
    moved = True
    while moved:
        moved = False
        for token in added:
            start = text.find(token, max(0, cut - len(token) + 1), cut + len(token) - 1)
            if start != -1 and start < cut:  # starts before the cut, ends after it
                cut, moved = start + len(token), True
    return cut


def _cut_an_added_token(tokenizer, text: str, max_length: int) -> bool:
    """Whether a window of releases before the rules above ended inside an added token long enough to matter
    (pieces past ``_MARGIN_CHARS`` before the cut could be kept), spelled exactly or otherwise."""
    added = _added_tokens_decoder(tokenizer).items()
    long = {token_id: token.content for token_id, token in added if len(token.content) > _MARGIN_CHARS}
    window = window_chars(max_length)
    while long and window < len(text):
        cut_exact = _past_added_tokens(text, window, [*long.values()]) != window
        if cut_exact or _matched_across(tokenizer, text, window, long):
            return True
        window *= _GROWTH
    return False


def _matched_across(tokenizer, text: str, cut: int, long: dict[int, str]) -> bool:
    """Whether the tokenizer matches one of the ``long`` added tokens (id -> content) across ``cut``, in any
    spelling its normalizer allows: read from the text around the cut alone."""
    reach = max(map(len, long.values())) + _MARGIN_CHARS
    start = max(0, cut - reach)
    around = tokenizer(
        text[start : cut + reach], add_special_tokens=False, return_offsets_mapping=True,
        return_attention_mask=False, return_token_type_ids=False,
    )
    spans = zip(around["input_ids"], around["offset_mapping"])
    return any(token_id in long and begin < cut - start < end for token_id, (begin, end) in spans)


def _longest_lstrip_token(tokenizer) -> int:
    """Characters of the longest added token that matches with ``lstrip`` (0: none does)."""
    return max(map(len, lstrip_tokens(tokenizer)), default=0)


def lstrip_tokens(tokenizer) -> list[str]:
    """The added tokens that match with ``lstrip`` (take the whitespace to their left)."""
    return [token.content for token in _added_tokens_decoder(tokenizer).values() if getattr(token, "lstrip", False)]


def read_otherwise_before_lstrip_fix(tokenizer, lstrip: list[str], text: str, max_length: int) -> bool:
    """Whether releases before the lstrip rule above may have given this text other ids: a text tokenized by
    windows (longer than the first, a fast tokenizer cutting on the right) that holds an ``lstrip`` token."""
    return bool(lstrip) and len(text) > window_chars(max_length) and _windowable(tokenizer) and any(token in text for token in lstrip)


def read_otherwise_before_added_token_fix(tokenizer, text: str, max_length: int) -> bool:
    """Whether releases before the added-token rule above may have given this text other ids: a window of theirs
    (a fast tokenizer cutting on the right) ended inside a long added token. Those that did not find its
    spelling (any but the exact one, and every one with the native BERT tokenizer, whose added tokens they did
    not read) are marked here for the first time, so their rows are encoded again once."""
    return len(text) > window_chars(max_length) and _windowable(tokenizer) and _cut_an_added_token(
        tokenizer, text, max_length)


def _truncated_ids(tokenizer, text: str, max_length: int) -> list[int]:
    return truncated_ids(tokenizer, [text], max_length)[0]


def truncated_ids(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """``tokenizer(texts, add_special_tokens=True, truncation=True, max_length=max_length)["input_ids"]``.

    A transformers fast tokenizer truncates by reconfiguring its backend for the call (and back for the next
    call that does not truncate: ``_prefix_decides``), which another thread's encode in flight then reads (one
    loaded model tokenizes from several threads): so it tokenizes whole here and the same cut is made per text.
    The native BERT tokenizer cuts that way itself; a slow tokenizer truncates in Python, sharing nothing."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    whole = None
    if backend is not None and hasattr(tokenizer, "set_truncation_and_padding"):
        whole = tokenizer(
            texts, add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False,
            verbose=False,  # no "longer than max" warning: the cut comes next
        ).encodings
    if whole is None:  # these, or a remote-code tokenizer that returns no backend encodings
        return tokenizer(
            texts, add_special_tokens=True, truncation=True, max_length=max_length,
            return_attention_mask=False, return_token_type_ids=False,
        )["input_ids"]
    side = tokenizer.truncation_side
    return [truncated_encoding(backend, encoding, max_length, side, True).ids for encoding in whole]
