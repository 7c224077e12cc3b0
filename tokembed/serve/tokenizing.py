"""Where ``tokembed serve`` tokenizes: two lanes, so that one huge request cannot stall every other.

HF tokenizers are not thread-safe, so each lane is one thread with tokenizers of its own. Requests whose texts
hold more than ``LARGE_REQUEST_CHARS`` characters go to the second lane: a text with no word break is tokenized
whole to be truncated exactly (``models/long_text.py``), which takes seconds at 15 MB, and ordinary requests
would otherwise queue behind it. Vision services keep one lane (their processors tokenize short queries).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from tokembed.serve.options import own_tokenizer_view

LARGE_REQUEST_CHARS = 1 << 20


class Lane:
    """One tokenizer thread and the encoders it tokenizes with (keyed by profile and truncation)."""

    def __init__(self, name: str, own_tokenizers: bool) -> None:
        self.thread = ThreadPoolExecutor(1, thread_name_prefix=f"tokembed-tokenize-{name}")
        self.encoders: dict[tuple[str, int | None], object] = {}
        self._own = own_tokenizers
        self._views: dict[str, object] = {}
        self._base: dict[str, object] = {}

    def view(self, key: str, profile):
        """The profile's model view, with this lane's own copy of its tokenizer where the lane needs one."""
        if not self._own:
            return profile.view
        if key not in self._views:
            self._views[key] = own_tokenizer_view(profile.view)
        return self._views[key]

    def base_encoder(self, key: str, profile):
        """The profile's encoder (its default lengths), over this lane's view."""
        if not self._own:
            return profile.encoder
        if key not in self._base:
            self._base[key] = type(profile.encoder)(self.view(key, profile), profile.encoder.settings)
        return self._base[key]

    def shutdown(self) -> None:
        self.thread.shutdown(wait=False, cancel_futures=True)


class TokenizeLanes:
    def __init__(self, vision: bool) -> None:
        self.ordinary = Lane("ordinary", own_tokenizers=False)
        self.large = None if vision else Lane("large", own_tokenizers=True)

    def for_texts(self, texts: list[str]) -> Lane:
        if self.large is not None and sum(len(text) for text in texts) > LARGE_REQUEST_CHARS:
            return self.large
        return self.ordinary

    def shutdown(self) -> None:
        for lane in (self.ordinary, self.large):
            if lane is not None:
                lane.shutdown()
