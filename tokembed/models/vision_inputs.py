"""Per-input refusals of a vision processor: a page or video it cannot take is a bad row, not a crash.

Qwen-VL families' ``smart_resize`` refuses an image (or video frame) whose long side is more than 200 times its
short side (a 2000x3 sliver); other families' processors resize anything. ``processed`` turns such a refusal into
``BadInputError`` naming the input's size, and ``unusual_shape`` says which documents ``VisionEncoder.input_problem``
tries through the processor where rows are planned (the refusals are about shape).
"""

from __future__ import annotations

from typing import Any

from tokembed.errors import BadInputError

UNUSUAL_ASPECT = 50  # long side / short side past which a document is tried
UNUSUAL_SIDE = 32  # pixels: a shorter side than this is tried too


def processed(process: Any, value: Any, architecture: str) -> Any:
    """``process([value])``, a ``ValueError`` (the processor refusing this input: Qwen-VL's ``smart_resize`` takes
    no aspect ratio past 200) raised as a bad input that names the input's size."""
    try:
        return process([value])
    except ValueError as exc:
        raise BadInputError(f"{_shape_of(value)}: the {architecture} processor refuses it ({exc})") from exc


def unusual_shape(value: Any) -> bool:
    """An image or video whose long side is ``UNUSUAL_ASPECT`` times its short side, or whose short side is
    under ``UNUSUAL_SIDE`` pixels."""
    size = _size_of(value)
    if size is None:
        return False
    short, long = min(size), max(size)
    return short < UNUSUAL_SIDE or long > UNUSUAL_ASPECT * short


def _size_of(value: Any) -> tuple[int, int] | None:
    """(width, height) of a PIL image or a ``sources.video.Video``, else None."""
    if getattr(value, "fps", None) is not None:
        width, height = getattr(value, "width", None), getattr(value, "height", None)
        return (int(width), int(height)) if width is not None and height is not None else None
    size = getattr(value, "size", None)
    return (int(size[0]), int(size[1])) if isinstance(size, tuple) and len(size) == 2 else None


def _shape_of(value: Any) -> str:
    size = _size_of(value)
    what = "a video" if getattr(value, "fps", None) is not None else "an image"
    return f"{what} of {size[0]}x{size[1]} pixels" if size is not None else what
