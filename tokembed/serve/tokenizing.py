"""Where ``tokembed serve`` tokenizes: two lanes, so that one huge request cannot stall every other.

HF tokenizers are not thread-safe, so each lane is one thread with tokenizers of its own. Requests whose texts
hold more than ``LARGE_REQUEST_CHARS`` characters go to the second lane: a text with no word break is tokenized
whole to be truncated exactly (``models/long_text.py``), which takes seconds at 15 MB, and ordinary requests
would otherwise queue behind it. Vision services have both lanes too: their processors tokenize a query whole
before its length is checked (20-25 s for 15 MB of text), and the large lane tokenizes with a copy of the processor
(none where the processor cannot be copied, a remote-code one: one lane then).

At shutdown the queued tokenizations are dropped and the running ones waited for until a deadline: a thread
still inside the tokenizer then cannot be stopped (``run_server`` abandons it as it abandons a forward pass).
"""

from __future__ import annotations

import asyncio
import copy
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from tokembed.serve.options import own_tokenizer_view

LARGE_REQUEST_CHARS = 1 << 20


class LaneThread(ThreadPoolExecutor):
    """A lane's one thread, counting the calls handed to it that have not ended (queued or running)."""

    def __init__(self, name: str) -> None:
        super().__init__(1, thread_name_prefix=f"tokembed-tokenize-{name}")
        self._unfinished = 0
        self._ended = threading.Condition()

    def submit(self, fn, /, *args, **kwargs):
        future = super().submit(fn, *args, **kwargs)
        with self._ended:
            self._unfinished += 1
        future.add_done_callback(self._end)  # also called for a queued call cancelled by ``stop``
        return future

    def _end(self, future) -> None:
        with self._ended:
            self._unfinished -= 1
            self._ended.notify_all()

    def stop(self, deadline: float) -> bool:
        """Drop the queued calls and wait for the running one until ``deadline`` (``time.monotonic``). False when it
        is still running then: a tokenizer call cannot be interrupted."""
        self.shutdown(wait=False, cancel_futures=True)
        with self._ended:
            return self._ended.wait_for(lambda: self._unfinished == 0, max(0.0, deadline - time.monotonic()))


class Lane:
    """One tokenizer thread and the encoders it tokenizes with (keyed by profile and truncation)."""

    def __init__(self, name: str, own_tokenizers: bool) -> None:
        self.thread = LaneThread(name)
        self.encoders: dict[tuple[str, int | None], object] = {}
        self._own = own_tokenizers
        self._views: dict[str, object] = {}
        self._base: dict[str, object] = {}

    def view(self, key: str, profile):
        """The profile's model view, with this lane's own copy of its tokenizer where the lane needs one."""
        if not self._own:
            return profile.view
        if key not in self._views:
            self._views[key] = _own_processor_view(profile.view) if _is_vision(profile.view) else own_tokenizer_view(profile.view)
        return self._views[key]

    def base_encoder(self, key: str, profile):
        """The profile's encoder (its default lengths), over this lane's view."""
        if not self._own:
            return profile.encoder
        if key not in self._base:
            self._base[key] = type(profile.encoder)(self.view(key, profile), profile.encoder.settings)
        return self._base[key]

    async def run(self, fn, *args):
        """``fn(*args)`` on this lane's thread."""
        return await asyncio.get_running_loop().run_in_executor(self.thread, fn, *args)


class TokenizeLanes:
    def __init__(self, vision_model=None) -> None:
        """``vision_model``: the served vision model, for a service that has one."""
        self.ordinary = Lane("ordinary", own_tokenizers=False)
        two = vision_model is None or _copyable(vision_model.processor)
        self.large = Lane("large", own_tokenizers=True) if two else None

    def for_texts(self, texts: list[str]) -> Lane:
        if self.large is not None and sum(len(text) for text in texts) > LARGE_REQUEST_CHARS:
            return self.large
        return self.ordinary

    def stop(self, deadline: float) -> bool:
        """Drop the queued tokenizations; False when one still runs at ``deadline`` (``LaneThread.stop``)."""
        return all([lane.thread.stop(deadline) for lane in (self.ordinary, self.large) if lane is not None])


def _is_vision(model) -> bool:
    return hasattr(model, "make_encoder")


def _own_processor_view(model):
    """A vision model sharing ``model``'s weights, with a processor of its own (HF tokenizers are not thread-safe)."""
    view = copy.copy(model)
    view.processor = copy.deepcopy(model.processor)
    return view


def _copyable(processor) -> bool:
    try:
        copy.deepcopy(processor)
    except Exception:  # noqa: BLE001 - a remote-code processor that cannot be copied
        return False
    return True
