"""Where tokembed keeps per-user state that can always be rebuilt: ``$TOKEMBED_CACHE``, default ``~/.cache/tokembed``."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("TOKEMBED_CACHE") or Path.home() / ".cache" / "tokembed")
