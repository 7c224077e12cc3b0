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

from tokembed.models.bert_tokenizer import BertTokenizer, truncated_encoding

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
    windowed = window < len(text)
    added = _added_tokens(tokenizer) if windowed else []
    reach = _added_token_reach(added)
    longest_lstrip = _longest_lstrip_token(tokenizer) if windowed else 0

    def checked(head: str, needed: int, window: int) -> list[int] | None:
        if needed <= 0:
            return _truncated_ids(tokenizer, head, max_length)
        if not _prefix_decides(tokenizer, head, needed, longest_lstrip, reach):
            return None
        ids = _truncated_ids(tokenizer, head, max_length)
        return ids if ids == _truncated_ids(tokenizer, prefix + text[: 2 * window], max_length) else None  # the
        # window twice as long: the whole text if that is shorter

    return _read_by_windows(tokenizer, text, max_length, prefix, window, added, checked)


def _read_by_windows(tokenizer, text: str, max_length: int, prefix: str, window: int, added: list[str], read):
    """The ids ``read`` gives for the first window (moved past exact spellings of ``added``, grown x4) it accepts
    (it is given the window's text, the content tokens needed and the window; None: not accepted), else the whole
    text's truncated ids."""
    needed = max_length - tokenizer.num_special_tokens_to_add(pair=False)
    while window < len(text):
        window = _past_added_tokens(text, window, added)
        if window >= len(text):
            break
        ids = read(prefix + text[:window], needed, window)
        if ids is not None:
            return ids
        window *= _GROWTH
    return _truncated_ids(tokenizer, prefix + text, max_length)


def _windowable(tokenizer) -> bool:
    return bool(getattr(tokenizer, "is_fast", False)) and getattr(tokenizer, "truncation_side", "right") == "right"


def _prefix_decides(tokenizer, prefix: str, needed: int, longest_lstrip: int, reach: int = 0, by_word: bool = True) -> bool:
    """Whether the first ``needed`` content tokens of ``prefix`` are those of any text that starts with it
    (``longest_lstrip``: ``_longest_lstrip_token``; ``reach``: ``_added_token_reach``; ``by_word`` False: the
    release before's rule, the ``needed``-th token's end rather than its word's, no reach)."""
    encoding = _with_offsets(tokenizer, prefix)
    if len(encoding["input_ids"]) <= needed:
        return False
    words, offsets = encoding.word_ids(), encoding["offset_mapping"]
    last_word = max(w for w in words if w is not None)
    word, (_, end) = words[needed - 1], offsets[needed - 1]
    if longest_lstrip:
        rest = prefix[end:]
        after_whitespace = end + len(rest) - len(rest.lstrip())
        if after_whitespace + longest_lstrip > len(prefix) - _MARGIN_CHARS:
            return False
    if by_word:
        end = _word_end(words, offsets, needed - 1)  # the word's: see _added_token_reach
    return word is not None and word < last_word - 1 and end <= len(prefix) - _MARGIN_CHARS - reach


def _with_offsets(tokenizer, text: str):
    return tokenizer(
        text, add_special_tokens=False, return_offsets_mapping=True,
        return_attention_mask=False, return_token_type_ids=False, verbose=False,  # no "longer than max" warning
    )


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
    return _contents(_added_tokens_decoder(tokenizer))


def _contents(decoder: dict) -> list[str]:
    return [token.content for token in decoder.values() if token.content]


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


def _cut_an_added_token(text: str, max_length: int, added: list[str]) -> bool:
    """Whether a window of releases before the rule above ended inside an added token long enough to matter
    (pieces past ``_MARGIN_CHARS`` before the cut could be kept)."""
    long = [token for token in added if len(token) > _MARGIN_CHARS]
    window = window_chars(max_length)
    while long and window < len(text):
        if _past_added_tokens(text, window, long) != window:
            return True
        window *= _GROWTH
    return False


def _added_tokens_seen_before(tokenizer) -> dict:
    """``_added_tokens_decoder`` as releases before this one read it: empty for the native BERT tokenizer, which
    did not list its added tokens then (their rules saw neither its added nor its ``lstrip`` tokens)."""
    return {} if isinstance(tokenizer, BertTokenizer) else _added_tokens_decoder(tokenizer)


def _longest_lstrip_token(tokenizer) -> int:
    """Characters of the longest added token that matches with ``lstrip`` (0: none does)."""
    return max(map(len, lstrip_tokens(tokenizer)), default=0)


def lstrip_tokens(tokenizer) -> list[str]:
    """The added tokens that match with ``lstrip`` (take the whitespace to their left)."""
    return _lstrip(_added_tokens_decoder(tokenizer))


def lstrip_tokens_seen_before(tokenizer) -> list[str]:
    """``lstrip_tokens`` as releases before this one saw them (``read_otherwise_before_lstrip_fix``)."""
    return _lstrip(_added_tokens_seen_before(tokenizer))


def _lstrip(decoder: dict) -> list[str]:
    return [token.content for token in decoder.values() if getattr(token, "lstrip", False)]


def read_otherwise_before_lstrip_fix(tokenizer, lstrip: list[str], text: str, max_length: int) -> bool:
    """Whether releases before the lstrip rule above may have given this text other ids: a text tokenized by
    windows (longer than the first, a fast tokenizer cutting on the right) that holds an ``lstrip`` token."""
    return bool(lstrip) and len(text) > window_chars(max_length) and _windowable(tokenizer) and any(token in text for token in lstrip)


def read_otherwise_before_added_token_fix(tokenizer, text: str, max_length: int) -> bool:
    """Whether releases before the added-token rule above may have given this text other ids: a window of theirs
    (a fast tokenizer cutting on the right) ended inside the exact spelling of a long added token they saw. The
    mark the release before gave, unchanged: its rows keep their hash (``read_otherwise_by_unchecked_windows``
    marks those it read wrong otherwise)."""
    return len(text) > window_chars(max_length) and _windowable(tokenizer) and _cut_an_added_token(
        text, max_length, _contents(_added_tokens_seen_before(tokenizer)))


def read_otherwise_by_unchecked_windows(tokenizer, text: str, max_length: int, prefix: str = "") -> bool:
    """Whether the release before gave this text other ids than ``tokenize_long`` does: it kept the first window
    its rules accepted, unchecked (``_ids_of_unchecked_windows``). Read only where those rules could miss (an
    added token it saw spelled otherwise or not at all: ``_unchecked_windows_may_miss``) and the text is read by
    windows; every other row, and every row it read right, keeps its hash."""
    if len(text) <= window_chars(max_length) or not _windowable(tokenizer):
        return False
    if not _unchecked_windows_may_miss(tokenizer):
        return False
    before = _ids_of_unchecked_windows(tokenizer, text, max_length, prefix)
    return before != tokenize_long(tokenizer, text, max_length, prefix=prefix)


def _unchecked_windows_may_miss(tokenizer) -> bool:
    """An added token matched after normalizing (spelled otherwise than the cut looked for), one longer than the
    margin (unseen with the native BERT tokenizer), or an ``lstrip`` token it did not see."""
    seen = _added_tokens_seen_before(tokenizer)
    return any(
        getattr(token, "normalized", False) or len(token.content) > _MARGIN_CHARS
        or (getattr(token, "lstrip", False) and token_id not in seen)
        for token_id, token in _added_tokens_decoder(tokenizer).items()
    )


def _ids_of_unchecked_windows(tokenizer, text: str, max_length: int, prefix: str) -> list[int]:
    """The ids the release before gave a text longer than the first window: the first window (moved past the
    exact spellings of the added tokens it saw, grown x4) whose kept tokens end ``_MARGIN_CHARS`` before its
    cut, a token's end and not its word's, no reach; its truncated ids, never checked against a longer window."""
    seen = _added_tokens_seen_before(tokenizer)
    longest_lstrip = max(map(len, _lstrip(seen)), default=0)

    def unchecked(head: str, needed: int, _window: int) -> list[int] | None:
        if needed > 0 and not _prefix_decides(tokenizer, head, needed, longest_lstrip, by_word=False):
            return None
        return _truncated_ids(tokenizer, head, max_length)

    return _read_by_windows(tokenizer, text, max_length, prefix, window_chars(max_length), _contents(seen), unchecked)


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
