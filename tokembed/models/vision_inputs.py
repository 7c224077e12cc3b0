"""Per-input refusals of a vision processor: a page or video it cannot take is a bad row, not a crash.

Qwen-VL families' ``smart_resize`` refuses an image (or video frame) whose long side is more than 200 times its
short side (a 2000x3 sliver); other families' processors resize anything. ``processed`` turns such a refusal into
``BadInputError`` naming the input's size, and ``unusual_shape`` says which documents ``VisionEncoder.input_problem``
tries through the processor where rows are planned (the refusals are about shape). A processor that can tell its
refusal from an image's size alone (``image_refusal``: tokembed's Qwen-VL processor, with ``qwen_image_tokens``;
Nemotron's ``p_max_length``) is asked about every image instead, without processing its pixels a second time.

Queries: a transformers processor refuses a text holding its image or video placeholder (``<image>``,
``<|image_pad|>``, ``<|video_pad|>``: "Found 1 <image> tokens in the text but no images were passed").
``processed_query`` turns that refusal into ``BadInputError`` naming the placeholder; ``input_problem`` tries
every query (this refusal, and a query longer than the model's positions). A processor that takes the placeholder
as text (PaliGemma's, tokembed's Qwen-VL processor) keeps doing so: only the processor's own refusal is one.
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
        raise BadInputError(refusal_of(value, str(exc), architecture)) from exc


def processed_query(process: Any, text: str, processor: Any, architecture: str) -> Any:
    """``process([text])``; the processor refusing a placeholder the text holds raised as a bad input."""
    try:
        return process([text])
    except ValueError as exc:
        held = placeholders_held(text, processor)
        if not held:
            raise
        named = next((token for token in held if token in str(exc)), held[0])
        raise BadInputError(f"a query holding {named!r}, the {architecture} processor's image/video placeholder: the "
                            f"processor refuses it in a text without an image ({exc})",
                            hint="take the placeholder out of the query text") from exc


def placeholders_held(text: str, processor: Any) -> list[str]:
    """The processor's image / video placeholders that ``text`` holds."""
    return [token for token in placeholder_tokens(processor) if token in text]


def placeholder_tokens(processor: Any) -> list[str]:
    """The image / video placeholder strings of a transformers processor, or of the one a tokembed processor wraps
    (``engine_layout.EngineProcessor.processor``)."""
    tokens = []
    for candidate in (processor, getattr(processor, "processor", None)):
        for name in ("image_token", "video_token"):
            token = getattr(candidate, name, None)
            if isinstance(token, str) and token:
                tokens.append(token)
    return tokens


def refusal_of(value: Any, reason: str, architecture: str) -> str:
    """A processor's refusal of an image or video, worded as ``processed`` words it."""
    return f"{_shape_of(value)}: the {architecture} processor refuses it ({reason})"


def qwen_image_tokens(size: tuple[int, int], image_processor: Any) -> int:
    """The placeholder tokens a Qwen-VL image processor (``Qwen2VLImageProcessorPil``, as tokembed's Qwen-VL
    processor calls it) makes of a ``size`` (width, height) image, from the size alone. Raises ``ValueError`` where
    the processor fails: ``smart_resize``'s aspect ratio past 200, and, with ``do_resize`` false, a side that is not
    a multiple of patch_size x merge_size (its ``patchify`` cannot reshape the pixels)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    width, height = size
    patch, merge = int(image_processor.patch_size), int(image_processor.merge_size)
    factor = patch * merge
    if image_processor.do_resize:
        bounds = image_processor.size
        height, width = smart_resize(
            height, width, factor=factor, min_pixels=bounds["shortest_edge"], max_pixels=bounds["longest_edge"]
        )
    if height % factor or width % factor:
        raise ValueError(f"do_resize is false and its sides are not multiples of {factor} pixels (patch_size {patch} x "
                         f"merge_size {merge}): the pixels cannot be cut into merged patches")
    return (height // patch) * (width // patch) // merge**2


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
