"""Whether torch is imported already: the search runs its products and casts in torch only then (never importing it).

``sys.modules`` holds a module from the start of its import, so while another thread imports torch (a model
loading lazily) ``sys.modules["torch"]`` lacks most of its attributes: a search there failed with "partially
initialized module 'torch' has no attribute 'from_numpy'", and the centroids' packing was marked unusable for good.
The import machinery sets ``__spec__._initializing`` until the module's code has run (CPython's own test, in
``importlib._bootstrap``, of whether to wait for the module's lock): until then torch counts as not imported.
"""

from __future__ import annotations

import sys


def imported_torch():
    """The torch module where it is fully imported, else None (not imported, or still being imported)."""
    torch = sys.modules.get("torch")
    if torch is None or getattr(getattr(torch, "__spec__", None), "_initializing", False):
        return None
    return torch
