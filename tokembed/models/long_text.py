"""Tokenize a long text only as far as truncation keeps: the same ids as tokenizing all of it, at the cost of
a few windows of it.

Why it is exact: a fast tokenizer normalizes, matches its added tokens, splits the text into words (pre-tokens,
by regexes that look at most a character past a match), then tokenizes each word on its own. Cutting the text
changes only what lies near the cut: the last words of the window (a word cut in half, whose pieces depend on
all of it; a whitespace run whose lookahead changed) and whatever the normalizer or an added token's match joins
across the cut (a character combined with the next; an added token in any spelling its normalizer matches, as
long as that spelling is: ``new     york     city`` where runs of spaces collapse, soft hyphens that are deleted).
So a window is kept only when the first ``max_length`` tokens come from words before its last two, and its
truncated ids are those of the window twice as long (the whole text's, where that is shorter): anything that
acts across fewer characters than the window (1,024 or more) and changed the kept tokens at the first cut does
not reach them from the second, so the two differ. One exception reaches further back: an added token with
``lstrip`` (ModernBERT's ``[MASK]``, XLM-R's ``<mask>``) takes every whitespace character to its left, however
many; past the cut it leaves that whitespace to become tokens. For such tokenizers the first non-whitespace
character after the kept tokens must also start early enough for any such token starting there to lie whole in
the window. The rules of the release before come first, as they cost one tokenizing of the window: the kept
words end ``_MARGIN_CHARS`` before the cut (and an added token's length further, ``_added_token_reach``), and a
window never ends inside an added token's exact spelling (Qwen's ``<|object_ref_start|>``, which a cut splits
into words of its own pieces) but after it. Otherwise the window grows (x4) until it passes, or until it is the
whole text. Slow (Python) tokenizers, left-side truncation and one-word texts (no pre-tokenizer split) fall back
to tokenizing the whole text.
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
    return _read_by_windows(tokenizer, text, max_length, first_window, prefix)[0]


def _read_by_windows(
    tokenizer, text: str, max_length: int, first_window: int | None = None, prefix: str = ""
) -> tuple[list[int], list[list[int]]]:
    """The ids ``tokenize_long`` gives, and those of the windows the word rules accepted but the stability check
    turned down (the release before the check gave the first of them: ``read_otherwise_before_stability_check``)."""
    window = first_window or window_chars(max_length)
    if not _windowable(tokenizer):
        window = len(text)
    needed = max_length - tokenizer.num_special_tokens_to_add(pair=False)
    added = _added_tokens(tokenizer) if window < len(text) else []
    reach = _added_token_reach(added)
    unstable = []
    while window < len(text):
        window = _past_added_tokens(text, window, added)
        if window >= len(text):
            break
        head = prefix + text[:window]
        if needed <= 0 or _prefix_decides(tokenizer, head, needed, reach):
            ids = _truncated_ids(tokenizer, head, max_length)
            if ids == _truncated_ids(tokenizer, prefix + text[: 2 * window], max_length):  # whole text if shorter
                return ids, unstable
            unstable.append(ids)
        window *= _GROWTH
    return _truncated_ids(tokenizer, prefix + text, max_length), unstable


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
    added token's length where one is longer than the margin (0 otherwise).

    The release before's bound on a ``normalized`` token's spelling, which the cut cannot find (lowercased,
    full-width, accented): a match across the cut starts after cut - margin - longest where its spelling is the
    token's length, give or take the margin. A word, not a token: the word glued to such a match's start ends
    there in the whole text but runs on into the match's pieces in the window. Spellings longer than that (runs
    of spaces a normalizer collapses, soft hyphens it deletes) are left to the stability check."""
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


def read_otherwise_before_stability_check(tokenizer, text: str, max_length: int, prefix: str = "") -> bool:
    """Whether the release before the stability check gave this text other ids: it kept the first window its
    rules (those before the check here) accepted, which the check turns down where that window's ids are not the
    text's. Read only where the tokenizer has an added token matched after normalizing (``normalized``), whose
    spelling may be longer than those rules allowed for; elsewhere they covered every cut but those of normalizers
    acting across more than ``_MARGIN_CHARS`` (listed as not covered then), and every other row keeps its hash."""
    if len(text) <= window_chars(max_length) or not _windowable(tokenizer) or not _normalized_added_tokens(tokenizer):
        return False
    ids, unstable = _read_by_windows(tokenizer, text, max_length, prefix=prefix)
    return bool(unstable) and unstable[0] != ids


def _normalized_added_tokens(tokenizer) -> list[str]:
    """The added tokens matched in the normalized text: spelled otherwise in the raw one (soft hyphens, runs of
    spaces a normalizer collapses), maybe longer than the token."""
    return [token.content for token in _added_tokens_decoder(tokenizer).values() if getattr(token, "normalized", False)]


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
