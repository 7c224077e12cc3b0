"""colpali-engine's own checkpoint layouts (``ColPali``, ``ColQwen2``, ``ColQwen2_5``, ``ColIdefics3``; ``ColQwen3``
through ``colqwen3_engine.py``), read natively.

Stage: models. colpali-engine saves its models as a bare transformers backbone plus a projection, under
``architectures`` naming its own class and the backbone's ``model_type``. The families (``colpali.py``,
``colqwen2.py``, ``colidefics3.py``) build the same modules as colpali-engine 0.3.18 and its processors'
prompts; this file holds what they share:

* ``EngineProcessor``  colpali-engine 0.3.18's ``process_images`` / ``process_queries`` over the backbone's
                       transformers processor (``convert("RGB")`` first, as colpali-engine: it would drop alpha,
                       but tokembed's image reader has composited transparency on white already).
* ``TensorNames``      the tensor names each layout has been saved under, as ordered regex renamings onto the
                       modules tokembed builds: the published bases (older transformers), the module names
                       colpali-engine 0.3.18 uses, and the names it writes under transformers 5 (a reversed
                       ``key_mapping`` whose regex escapes stay in: ``model\\.layers.0...``), read as the names
                       they mean. The same renamings place a PEFT adapter's tensors (``adapters.py``).
* ``load_engine_model`` loads through ``loading.from_pretrained_checked``: every parameter from the file,
                       every tensor used (language-model heads excepted).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokembed.errors import ModelError
from tokembed.models.base import LoadOptions, torch_dtype

ENGINE_ARCHITECTURES = ("ColPali", "ColQwen2", "ColQwen2_5", "ColIdefics3")
# Names saved with their regex escapes (colpali-engine 0.3.18 + transformers 5 save_pretrained), then the
# prefix peft puts before every name. Each renaming replaces its first match, as transformers' key_mapping does.
_UNESCAPE = ((r"^base_model\\\.model\\\.", ""), (r"\\\.", "."), (r"^base_model\.model\.", ""))


@dataclass(frozen=True)
class TensorNames:
    """Ordered ``(pattern, replacement)`` renamings from any saved name onto tokembed's module names."""

    renamings: tuple[tuple[str, str], ...]
    ignorable: tuple[str, ...] = ()  # saved tensors no forward uses (language-model heads), after renaming

    def key_mapping(self) -> dict[str, str]:
        return dict(_UNESCAPE + self.renamings)

    def rename(self, name: str) -> str:
        """The module path a saved name means (in order, first match each, as transformers' ``key_mapping`` does)."""
        from tokembed.models.loading import renamed

        return renamed(name, self.key_mapping())


class EngineProcessor:
    """colpali-engine 0.3.18's processor methods over a transformers processor (one item at a time here).

    ``query_format``: ``"processor"`` calls the processor on ``query + augmentation x 10`` (ColQwen2,
    ColIdefics3); ``"bos"`` calls the tokenizer on ``<bos> + query + <pad> x 10`` without token type ids
    (ColPali). ``split_pixels``: ColQwen2's ``process_images`` re-batches the patch rows per image.
    """

    def __init__(self, processor: Any, visual_prompt: str, augmentation: str | None, query_format: str = "processor",
                 split_pixels: bool = False) -> None:
        self.processor = processor
        self.visual_prompt = visual_prompt
        self.augmentation = augmentation if augmentation is not None else processor.tokenizer.pad_token
        self.query_format = query_format
        self.split_pixels = split_pixels

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    def process_images(self, images: list) -> Any:
        import torch

        images = [image.convert("RGB") for image in images]
        batch = self.processor(text=[self.visual_prompt] * len(images), images=images, padding="longest", return_tensors="pt")
        if self.split_pixels:
            offsets = batch["image_grid_thw"][:, 1] * batch["image_grid_thw"][:, 2]
            pieces = list(torch.split(batch["pixel_values"], offsets.tolist()))
            batch["pixel_values"] = torch.nn.utils.rnn.pad_sequence(pieces, batch_first=True)
        return batch

    def process_queries(self, queries: list[str]) -> Any:
        texts = [query + self.augmentation * 10 for query in queries]
        if self.query_format == "bos":
            tokenizer = self.processor.tokenizer
            return tokenizer([tokenizer.bos_token + text for text in texts], text_pair=None,
                             return_token_type_ids=False, return_tensors="pt", padding="longest")
        return self.processor(text=texts, return_tensors="pt", padding="longest")


def load_engine_model(
    family: str,
    path: Path,
    options: LoadOptions,
    model_class: Any,
    names: TensorNames,
    processor: EngineProcessor,
    projection: str,
):
    """Load a colpali-engine layout (``model_class`` built from the checkpoint's own config) and wrap it."""
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    from tokembed.models.loading import HEAD_NAMES, from_pretrained_checked
    from tokembed.models.base import position_limit
    from tokembed.models.vision import VisionModel
    from tokembed.models.vision_check import check_processor_fits

    hf_logging.disable_progress_bar()
    try:
        config = AutoConfig.from_pretrained(path)
        check_processor_fits(path, processor, config, options.processor_path)
        model = from_pretrained_checked(
            model_class, path, ignore_unused=HEAD_NAMES + names.ignorable, config=config,
            key_mapping=names.key_mapping(), dtype=torch_dtype(options.dtype),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{path}: cannot load the colpali-engine checkpoint: {exc}") from exc
    model.eval()
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    limit = position_limit(text_config)
    return VisionModel(
        family=family,
        path=path,
        architecture=(getattr(config, "architectures", None) or [family])[0],
        model=model,
        processor=processor,
        embedding_dim=int(model.get_submodule(projection).out_features),
        projection=projection,
        max_length=limit,
        position_limit=limit,
        extra={"tensor_names": names},
    )


def load_processor(path: Path, processor_class: Any, defaults: dict | None = None) -> Any:
    """The backbone's transformers processor, built from the folder's image processor and tokenizer files.

    ``processor_class`` is the transformers class colpali-engine's processor extends (its own name in the
    files is one transformers lacks, or has with other prompts); ``defaults``: its init settings colpali-engine
    sets, overridden by ``processor_config.json`` (as ``from_pretrained`` does).
    """
    from transformers import AutoImageProcessor, AutoTokenizer

    from tokembed.models.base import read_json

    defaults = defaults or {}
    saved = read_json(Path(path) / "processor_config.json") or {}
    extra = {**defaults, **{key: value for key, value in saved.items() if key in defaults}}
    try:
        image_processor = AutoImageProcessor.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        return processor_class(image_processor=image_processor, tokenizer=tokenizer, **extra)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{path}: cannot load the {processor_class.__name__} files: {exc}") from exc


def qwen2vl_processor_class() -> Any:
    """``Qwen2VLProcessor`` without its video processor (which needs torchvision; documents are images)."""
    from transformers import Qwen2VLProcessor

    class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
        def __init__(self, image_processor=None, tokenizer=None, **kwargs) -> None:
            super().__init__(image_processor=image_processor, tokenizer=tokenizer, video_processor=None, **kwargs)

        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor" and argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    return ImageOnlyQwen2VLProcessor
