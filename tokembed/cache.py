"""Where tokembed keeps per-user state that can always be rebuilt: ``$TOKEMBED_CACHE``, default ``~/.cache/tokembed``."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path | None:
    """``$TOKEMBED_CACHE`` (``~`` expanded, as cron and systemd pass it unexpanded), else ``~/.cache/tokembed``;
    None where neither is known (no ``HOME`` and no passwd entry, as for a container's arbitrary user): then
    nothing is cached, every run does its work again."""
    configured = os.environ.get("TOKEMBED_CACHE")
    if configured:
        return Path(configured).expanduser()
    try:
        return Path.home() / ".cache" / "tokembed"
    except (RuntimeError, KeyError):  # Path.home(): "Could not determine home directory"
        return None
