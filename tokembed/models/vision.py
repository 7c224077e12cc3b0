"""Vision retrieval models: ColPali, ColQwen2/2.5, ColModernVBert and remote-code ColVision families.

Stage: models. In: PIL images (documents) or strings (queries). Out: per item (vectors [n, D] in the store
dtype, token ids int32). The checkpoint's own processor prepares every item (``process_images``: the
visual prompt and the image placeholder tokens; ``process_queries``: the query prefix and the query
augmentation tokens) and the model's own forward gives the embeddings (projection with its bias,
L2-normalized, multiplied by the attention mask), so each item's vectors are those of
``model(**processor.process_images([image])).embeddings`` (resp. ``process_queries``) at every attended
position, as colpali-engine and the transformers model cards use them.

* ``VisionModel``   what a vision family's ``load()`` returns (the counterpart of ``TokenModel``); its
                    ``make_encoder(settings)`` gives the encoder for one kind.
* ``VisionEncoder`` the shape of ``steps.TextEncoder``: ``tokenize -> collate -> embed -> finish``.
* ``Prepared``      one processed item: ``ids`` (its sequence, image placeholders included; ``len(ids)`` is
                    the length batching uses) and ``payload`` (its pixel values, image grid, ...).

Items are processed one at a time, so the processor never pads and every position is attended; batches
are right-padded by ``collate`` (PaliGemma and ColQwen2 number positions without looking at the
attention mask, so left padding would change the vectors).
"""

from __future__ import annotations

import copy
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from torch import nn

from tokembed.errors import BadInputError, ModelError, UsageError
from tokembed.models.base import LoadOptions, position_limit, torch_dtype
from tokembed.models.steps import OutputShape
from tokembed.models.token_ids import TokenIdGuard
from tokembed.models.vision_inputs import processed, processed_query, refusal_of, unusual_shape
from tokembed.settings import EncodeSettings
from tokembed.sources.video import is_video

VIDEO_HINT = "tokembed models lists the families that take videos (ColQwen3.5); keep videos out of this model's input"
PREPARE_THREADS = 4  # threads that run the processor over a chunk of documents (VisionEncoder.tokenize): each holds a
# copy of the processor (~60 MB with a 256k-token vocabulary; 7 MB with a 30k one), and four process ~4x the
# 50-80 Letter pages/s of one thread measured on the CI box
# Processor outputs that are not model inputs (training labels, bookkeeping).
_NOT_INPUTS = ("labels", "text_replacement_offsets")


@dataclass
class Prepared:
    """One item after the processor: what batching measures and what the forward needs."""

    ids: np.ndarray  # [n_tokens] int64: the processed sequence, prompt and image placeholder tokens included
    n_attend: int  # attended positions: all of them (a single item is never padded)
    payload: dict[str, torch.Tensor] = field(default_factory=dict)  # other model inputs, batch dim removed


@dataclass
class VisionModel:
    """A loaded ``*ForRetrieval`` model and its processor."""

    family: str
    path: Path
    architecture: str
    model: nn.Module
    processor: Any
    embedding_dim: int
    projection: str | None  # submodule whose output is the projection before normalization (--no-normalize)
    max_length: int
    position_limit: int
    colbert: None = None  # vision models carry no ColBERT settings: prefixes are the processor's
    extra: dict = field(default_factory=dict)
    reading: tuple[str, ...] = ()  # readings of its files earlier releases did not make (models.readings)

    @property
    def output_dim(self) -> int:
        return self.embedding_dim

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str) -> "VisionModel":
        self.model.to(device)
        return self

    def make_encoder(self, settings: EncodeSettings) -> "VisionEncoder":
        return VisionEncoder(self, settings)

    @torch.inference_mode()
    def embed(self, inputs: dict[str, torch.Tensor], normalized: bool = True) -> torch.Tensor:
        """Model inputs -> [B, T, D] float32: the model's ``embeddings`` output, or (``normalized=False``)
        the projection's output before the model normalizes it."""
        device = self.device
        inputs = {key: value.to(device) for key, value in inputs.items()}
        if normalized:
            return embeddings_of(self.model(**inputs)).float()
        captured: list[torch.Tensor] = []
        module = self.model.get_submodule(self.projection)
        handle = module.register_forward_hook(lambda _module, _args, output: captured.append(output))
        try:
            self.model(**inputs)
        finally:
            handle.remove()
        return captured[-1].float()


class VisionEncoder(OutputShape):
    """``VisionModel`` bound to one kind: documents are images, queries are text."""

    takes_videos = False  # documents may also be videos (sources.video.Video): ColQwen3.5's encoder

    def __init__(self, model: VisionModel, settings: EncodeSettings) -> None:
        self.model = model
        self.settings = settings
        if not settings.normalize and model.projection is None:
            raise UsageError(
                f"--no-normalize: cannot find the projection of {model.architecture} before it normalizes",
                hint="encode with normalization (the model's own convention)",
            )
        pad_id = getattr(model.tokenizer, "pad_token_id", None)
        self.pad_id = int(pad_id) if pad_id is not None else 0
        self._local = threading.local()  # a preparing thread's own processor
        self._pool: ThreadPoolExecutor | None = None
        self._pool_threads = 0
        self._copyable = True
        self.id_guard = TokenIdGuard(model)

    # -- before the forward pass -------------------------------------------------------------
    def tokenize(self, inputs: list) -> list[Prepared]:
        """Images (documents) or strings (queries) -> one ``Prepared`` per input, through the processor.

        A chunk of documents is processed by threads (torch's thread count, at most ``PREPARE_THREADS``), each
        with its own deep copy of the processor (HF tokenizers are not thread-safe). Pillow and NumPy release the
        GIL while they resize and normalize, and one thread at ~20 ms a page would hold a GPU to ~50 pages/s.
        Each item is processed alone, so the result does not depend on the thread count."""
        pool = self._preparing_pool() if self.settings.kind == "document" and len(inputs) > 1 else None
        items = [self._prepare(value) for value in inputs] if pool is None else list(pool.map(self._prepare, inputs))
        self.id_guard.check((item.ids for item in items), inputs)
        return items

    @property
    def processor(self) -> Any:
        """The processor for the calling thread: a preparing thread's copy, else the model's."""
        own = getattr(self._local, "processor", None)
        return self.model.processor if own is None else own

    def _preparing_pool(self) -> ThreadPoolExecutor | None:
        threads = min(PREPARE_THREADS, torch.get_num_threads())
        if threads < 2 or not self._copyable:
            return None
        if self._pool is None or self._pool_threads != threads:
            try:
                copy.deepcopy(self.model.processor)
            except Exception:  # a remote-code processor that cannot be copied: one thread, as before
                self._copyable = False
                return None
            if self._pool is not None:
                self._pool.shutdown(wait=False)
            self._pool = ThreadPoolExecutor(threads, thread_name_prefix="tokembed-prepare", initializer=self._copy_processor)
            self._pool_threads = threads
        return self._pool

    def _copy_processor(self) -> None:
        self._local.processor = copy.deepcopy(self.model.processor)

    def input_problem(self, value: Any) -> str | None:
        """Why the processor refuses this document or query, or None. Asked where rows are planned (``plan.py``, in
        the main process whatever the engine), so that an input the processor refuses is a bad row under
        ``--on-error``, not a crash of the run. Every query is tried (tokenizing a query costs little beside its
        forward pass). An image is asked of the processor's ``image_refusal`` where it has one (told from the size:
        Qwen-VL families); otherwise only documents of an unusual shape are tried (processed once more here): those
        processors' per-image refusals are about shape, and a second pass over every page would cost the main
        process what the encode costs. A video is refused where the family has no video path (``video_refusal``)."""
        if self.settings.kind == "document" and is_video(value) and (refusal := self.video_refusal()) is not None:
            return refusal
        if self.settings.kind == "document":
            refusal = getattr(self.processor, "image_refusal", None)
            if refusal is not None and isinstance(value, PIL.Image.Image):
                reason = refusal(value)
                return None if reason is None else refusal_of(value, reason, self.model.architecture)
            if not unusual_shape(value):
                return None
        try:
            self._prepare(value)
        except BadInputError as exc:
            return str(exc)
        return None

    def video_refusal(self) -> str | None:
        """Why this model's documents are no videos, or None where they may be (``takes_videos``)."""
        return None if self.takes_videos else f"{self.model.architecture} does not encode videos"

    def _prepare(self, value: Any) -> Prepared:
        processor = self.processor
        if self.settings.kind == "query":
            if not isinstance(value, str):
                raise BadInputError(f"{self.model.architecture} queries are text; got {type(value).__name__}")
            queried = processed_query(processor.process_queries, value, processor, self.model.architecture)
            prepared = prepared_from(queried)
            if len(prepared.ids) > self.model.max_length:  # the processor does not truncate, as colpali-engine's does not
                raise BadInputError(f"a query of {len(prepared.ids)} tokens: more than this model's {self.model.max_length} "
                                    "positions (its vectors would come from positions it never learned, and one such "
                                    "query took a server's whole memory)")
            return prepared
        if isinstance(value, str):
            raise BadInputError(
                f"{self.model.architecture} encodes documents as images; got text",
                hint="give a folder of images or an image column; text is encoded with --kind query",
            )
        if is_video(value) and (refusal := self.video_refusal()) is not None:  # input_problem made it a bad row
            raise BadInputError(f"{getattr(value, 'name', 'a video')}: {refusal}", hint=VIDEO_HINT)
        return prepared_from(processed(processor.process_images, value, self.model.architecture))

    def collate(self, batch: list[Prepared]) -> dict[str, torch.Tensor]:
        """Right-pad ids and attention; zero-pad every payload tensor to the largest item and stack it.

        Right padding matters: PaliGemma and ColQwen2's language model number positions 0..T-1 whatever
        the attention mask says, so a left-padded item would not get the vectors it gets alone. Zero
        padding of pixel tensors is what the processors do themselves when they batch (ColQwen2's patch
        rows, Idefics3's images and pixel masks), and the models drop it.
        """
        width = max(len(item.ids) for item in batch)
        input_ids = np.full((len(batch), width), self.pad_id, dtype=np.int64)
        attention = np.zeros((len(batch), width), dtype=np.int64)
        for row, item in enumerate(batch):
            input_ids[row, : len(item.ids)] = item.ids
            attention[row, : item.n_attend] = 1
        collated = {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(attention)}
        keys = set(batch[0].payload)
        if any(set(item.payload) != keys for item in batch):
            raise ModelError("items of one batch were processed differently (images and text mixed?)")
        for key in batch[0].payload:
            collated[key] = pad_stack([item.payload[key] for item in batch])
        return collated

    # -- the forward pass --------------------------------------------------------------------
    def embed(self, collated: dict[str, torch.Tensor]) -> torch.Tensor:
        """[B, T, D] float32, the model's own embeddings (moved to the model's device here)."""
        return self.model.embed(collated, normalized=self.settings.normalize)

    # -- after the forward pass --------------------------------------------------------------
    def finish(self, vectors: torch.Tensor, batch: list[Prepared]) -> list[tuple[np.ndarray, np.ndarray]]:
        """[B, T, D] -> per item (vectors [n_attend, D] in the store dtype, token ids [n_attend] int32).

        Every attended position is kept (prompt, image placeholders, query prefix and augmentation
        tokens), as the models' ``embeddings`` output and colpali-engine's scoring use them. The model
        already normalized each vector; ``--dimensions`` cuts and re-normalizes.
        """
        settings = self.settings
        if settings.dimensions is not None and settings.dimensions < vectors.shape[-1]:
            vectors = vectors[..., : settings.dimensions]
            if settings.normalize:
                vectors = torch.nn.functional.normalize(vectors, p=2, dim=-1)
        store = torch.float16 if settings.store_dtype == "float16" else torch.float32
        if settings.pool_factor > 1:  # documents only: pooled in float32 (tokembed.models.pooling), then cast
            from tokembed.models.pooling import pool_rows

            rows = [(vectors[row, : item.n_attend].float().cpu(), item.ids[: item.n_attend]) for row, item in enumerate(batch)]
            return pool_rows(rows, settings.pool_factor, store)
        array = vectors.to(store).cpu().numpy()
        return [(array[row, : item.n_attend], item.ids[: item.n_attend].astype(np.int32)) for row, item in enumerate(batch)]


def prepared_from(output: Any) -> Prepared:
    """A processor's output for one item (batch of 1) -> ``Prepared``."""
    data = {key: _as_tensor(value) for key, value in dict(output).items() if key not in _NOT_INPUTS}
    ids = data.pop("input_ids", None)
    if ids is None or ids.ndim != 2 or ids.shape[0] != 1:
        raise ModelError("the processor did not return input_ids for one item")
    attention = data.pop("attention_mask", None)
    if attention is not None and not bool(attention.bool().all()):
        raise ModelError("the processor padded a single item; tokembed expects unpadded items")
    payload = {key: value[0] for key, value in data.items() if isinstance(value, torch.Tensor) and value.ndim >= 1}
    ids_array = ids[0].cpu().numpy().astype(np.int64)
    return Prepared(ids_array, len(ids_array), payload)


def pad_stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Stack tensors of equal rank, zero-padding each dimension at the end to the largest size."""
    first = tensors[0]
    if all(t.shape == first.shape for t in tensors):
        return torch.stack(tensors)
    shape = [max(t.shape[d] for t in tensors) for d in range(first.ndim)]
    out = first.new_zeros((len(tensors), *shape))
    for row, tensor in enumerate(tensors):
        out[(row, *(slice(0, size) for size in tensor.shape))] = tensor
    return out


def embeddings_of(output: Any) -> torch.Tensor:
    """The embeddings a retrieval model returns: a tensor (colpali-engine), ``.embeddings`` (transformers)."""
    if isinstance(output, torch.Tensor):
        return output
    embeddings = getattr(output, "embeddings", None)
    if isinstance(embeddings, torch.Tensor):
        return embeddings
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise ModelError(f"the model returned {type(output).__name__}, not token embeddings")


def _as_tensor(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    return value


# -- loading -----------------------------------------------------------------------------------------


# The language-model head of the VLM under a -hf retrieval class: transformers 4.x built its ``vlm`` as an
# ``AutoModelForImageTextToText`` and saved the head of an untied base (ColPali's 4.x name under language_model);
# transformers 5 loads such a folder to the parameters of one without it.
VLM_HEAD_NAMES = (r"vlm\.(?:language_model\.)?lm_head\.",)


def load_vision_model(
    family: str,
    path: Path,
    options: LoadOptions,
    model_class: Any,
    projection: tuple[str, ...] = ("embedding_proj_layer",),
    ignore_unused: tuple[str, ...] = (),
    processor: Any = None,
    key_mapping: dict[str, str] | None = None,
    check_processor: bool = True,
) -> VisionModel:
    """Load ``model_class`` (a transformers class, or ``AutoModel`` for remote code) and ``AutoProcessor``
    (or the ``processor`` a family built itself).

    ``projection``: names the projection may have; the first ``nn.Linear`` found is the one whose output
    ``--no-normalize`` stores. ``key_mapping``: transformers' ``from_pretrained(key_mapping=...)`` (regex ->
    replacement), for checkpoints saved under other tensor names; the completeness check sees the renamed names.
    ``check_processor``: refuse processor settings that contradict the vision config (``vision_check``; off for
    remote code, whose processor is its own).

    Every weight must come from the checkpoint, and every checkpoint tensor must land but for language-model
    heads and ``ignore_unused`` (``loading.from_pretrained_checked``): a missing one (such as a projection
    bias a converter dropped) would be initialized at random and silently change the vectors.
    """
    from transformers import AutoProcessor
    from transformers.utils import logging as hf_logging

    from tokembed.models.loading import HEAD_NAMES, from_pretrained_checked, missing_package_error
    from tokembed.models.vision_check import check_processor_fits

    hf_logging.disable_progress_bar()
    remote = {"trust_remote_code": options.trust_remote_code}
    try:
        if processor is None:
            processor = AutoProcessor.from_pretrained(options.processor_path or path, **remote)
        model = from_pretrained_checked(
            model_class, path, ignore_unused=HEAD_NAMES + VLM_HEAD_NAMES + tuple(ignore_unused),
            dtype=torch_dtype(options.dtype), **remote,
            **({"key_mapping": key_mapping} if key_mapping else {}),
        )
    except ImportError as exc:
        raise missing_package_error(path, exc) from exc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{path}: cannot load the vision retrieval model: {exc}") from exc
    for method in ("process_images", "process_queries"):
        if not callable(getattr(processor, method, None)):
            raise ModelError(f"{path}: the processor {type(processor).__name__} has no {method}()")
    model.eval()
    config = model.config
    if check_processor:
        check_processor_fits(path, processor, config, options.processor_path)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    found = next((name for name in projection if isinstance(_submodule(model, name), nn.Linear)), None)
    limit = position_limit(text_config)
    return VisionModel(
        family=family,
        path=path,
        architecture=(getattr(config, "architectures", None) or [type(model).__name__])[0],
        model=model,
        processor=processor,
        embedding_dim=_embedding_dim(model, found),
        projection=found,
        max_length=limit,
        position_limit=limit,
    )


def _submodule(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def _embedding_dim(model: nn.Module, projection: str | None) -> int:
    dim = getattr(model.config, "embedding_dim", None) or getattr(model.config, "dim", None)
    if dim:
        return int(dim)
    if projection is not None:
        module = model.get_submodule(projection)
        if isinstance(module, nn.Linear):
            return int(module.out_features)
    raise ModelError(f"cannot tell the embedding size of {type(model).__name__} (no embedding_dim in its config)")
