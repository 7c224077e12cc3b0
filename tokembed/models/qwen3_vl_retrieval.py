"""What the Qwen3-VL retrieval families share (Tomoro ColQwen3, Ops-ColQwen3, Nemotron ColEmbed): transformers'
``Qwen3VLModel`` run natively (no remote code), mounted under the checkpoint's own tensor names.

Stage: models. In: one image or one query string per item. Out: a ``vision.VisionModel`` whose module returns
[B, T, D] token vectors.

* ``Qwen3VLLayout``     where a family keeps its tensors: the backbone prefix (``vlm.model``, ``model`` or none),
                        its projection, the heads it never runs (``lm_head``).
* ``Qwen3VLRetriever``  the module: ``Qwen3VLModel`` mounted at that prefix, so its parameter names are the
                        checkpoint's and ``loading.load_state_checked`` can refuse any missing or unused tensor;
                        the family's ``head`` (projection, cut, normalization, mask) turns hidden states into vectors.
* ``build_processor``   the family's processor from its parts: ``qwen_vl_processor.QwenVLProcessor`` (tokenizer +
                        Qwen-VL image processor, PIL backend; transformers refuses the whole Qwen3-VL processor
                        without torchvision because of its video processor) with the family's prompts.
* ``load_qwen3_vl``     config -> module -> every tensor loaded and checked -> ``VisionModel``.

Positions are Qwen3-VL's M-RoPE, computed from the image placeholders of ``input_ids`` (as transformers 4.57 did
and the families' own code relies on), so right-padded batches give each item the vectors it gets alone.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from tokembed.errors import ModelError
from tokembed.models.base import LoadOptions, read_json, torch_dtype
from tokembed.models.vision import VisionModel

# Head: (hidden states [B, T, H] after the backbone, attention mask [B, T], module) -> vectors [B, T, D].
Head = Callable[[torch.Tensor, torch.Tensor, "Qwen3VLRetriever"], torch.Tensor]
_TOKEN_IDS = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")


@dataclass(frozen=True)
class Qwen3VLLayout:
    backbone: str  # prefix of Qwen3VLModel's ``visual.*`` / ``language_model.*`` in the checkpoint ("" = none)
    projection: str | None  # the projection Linear's name in the checkpoint, None when there is none
    ignore_unused: tuple[str, ...] = ()  # checkpoint tensors the family never runs (regexes, re.match)


class CutLinear(nn.Linear):
    """A projection whose output keeps its first ``keep`` dimensions (Ops-ColQwen3's ``dims``)."""

    keep: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, H] -> [B, T, keep]
        out = super().forward(x)
        return out if self.keep is None else out[..., : self.keep]


class Qwen3VLRetriever(nn.Module):
    """``Qwen3VLModel`` under the checkpoint's prefix, an optional projection, and the family's head."""

    def __init__(self, config: Any, layout: Qwen3VLLayout, head: Head, projection: CutLinear | None) -> None:
        super().__init__()
        from transformers import Qwen3VLModel
        from transformers.initialization import no_init_weights

        with no_init_weights():  # every parameter is loaded from the checkpoint right after
            backbone = Qwen3VLModel(config)
        _mount(self, layout.backbone, backbone)
        # Not registered (its children already are, under the checkpoint's names): only run.
        self.__dict__["backbone"] = backbone
        if projection is not None:
            _mount(self, layout.projection, projection)
        self.__dict__["projection"] = projection
        self.__dict__["head"] = head
        self.image_token_id = int(config.image_token_id)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.backbone.get_input_embeddings()  # what the token-id check (token_ids.check_token_ids_fit) reads

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        mm_token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[B, T] ids (+ per-item zero-padded patches [B, N, P] and grids [B, 3]) -> [B, T, D] vectors.

        ``mm_token_type_ids`` (1 at image placeholders) is derived from ``input_ids`` when not given."""
        extra = {}
        if pixel_values is not None:
            patches = [item[: int(grid.prod())] for item, grid in zip(pixel_values, image_grid_thw)]
            if mm_token_type_ids is None:
                mm_token_type_ids = (input_ids == self.image_token_id).int()
            extra = {
                "pixel_values": torch.cat(patches).to(self.backbone.visual.dtype),
                "image_grid_thw": image_grid_thw,
                "mm_token_type_ids": mm_token_type_ids,
            }
        self.backbone.rope_deltas = None  # never reuse positions of an earlier batch
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **extra)
        return self.head(hidden.last_hidden_state, attention_mask, self)


def _mount(root: nn.Module, prefix: str, module: nn.Module) -> None:
    """Register ``module`` at dotted ``prefix`` under ``root`` (its children directly when the prefix is empty)."""
    if not prefix:
        for name, child in module.named_children():
            root.add_module(name, child)
        return
    *parents, last = prefix.split(".")
    node = root
    for name in parents:
        if not hasattr(node, name):
            node.add_module(name, nn.Module())
        node = getattr(node, name)
    node.add_module(last, module)


def make_bidirectional(model: Qwen3VLRetriever) -> None:
    """Full attention over the text model (NVIDIA's ``Qwen3VLNemotronEmbedTextModel``): a padding-only mask, and
    no causal flag left on any layer for SDPA to fall back on when there is no padding."""
    language_model = model.backbone.language_model
    language_model.config.is_causal = False
    for layer in language_model.layers:
        layer.self_attn.is_causal = False


def skip_final_norm(model: Qwen3VLRetriever) -> None:
    """Make the text model return its last layer's output before the final norm (the norm's weight stays loaded
    and checked; NVIDIA's code keeps it in the checkpoint and never applies it)."""
    model.backbone.language_model.norm.register_forward_hook(lambda _module, args, _output: args[0])


# -- processor -------------------------------------------------------------------------------------------------


def build_processor(path: Path, prompts: Any, processor_class: Any = None, image_settings: dict | None = None) -> Any:
    """The shared ``qwen_vl_processor.QwenVLProcessor`` (or a family's subclass) from the checkpoint's parts: the
    tokenizer (never the config's auto_map) and the PIL image processor from the saved settings
    (``image_settings`` overrides them, e.g. Tomoro's visual-token cap)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from tokembed.models.qwen_vl_processor import QwenVLProcessor, read_processor_settings

    settings, _video = read_processor_settings(path)
    if settings is None:
        raise ModelError(f"{path}: no image processor settings (preprocessor_config.json)")
    settings = {**settings, **(image_settings or {})}
    try:
        image_processor = Qwen2VLImageProcessorPil.from_dict(settings)
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{path}: cannot build the image processor from preprocessor_config.json: {exc}") from exc
    return (processor_class or QwenVLProcessor)(load_tokenizer(path), image_processor, prompts)


def load_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        # trust_remote_code=False: the config's auto_map must never run (nor prompt); the tokenizer files suffice.
        with _quiet_transformers():
            return AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"{path}: cannot load the tokenizer: {exc}") from exc


@contextmanager
def _quiet_transformers():
    """Silence transformers' "model of type colqwen3 ... not supported" notice while it reads config.json."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def processor_settings(path: Path) -> dict:
    """The processor's saved settings (``processor_config.json``), {} when absent."""
    return read_json(path / "processor_config.json") or {}


# -- loading ---------------------------------------------------------------------------------------------------


def qwen3_vl_config(path: Path, raw: dict) -> Any:
    """The ``Qwen3VLConfig`` inside a family's config.json (text_config, vision_config and token ids at the top)."""
    from transformers import Qwen3VLConfig

    missing = [key for key in ("text_config", "vision_config") if not isinstance(raw.get(key), dict)]
    if missing:
        raise ModelError(f"{path}/config.json: no {' or '.join(missing)}; not a Qwen3-VL checkpoint")
    ids = {key: raw[key] for key in _TOKEN_IDS if raw.get(key) is not None}
    try:
        config = Qwen3VLConfig(text_config=raw["text_config"], vision_config=raw["vision_config"], **ids)
    except (TypeError, ValueError, KeyError) as exc:
        raise ModelError(f"{path}/config.json: not a Qwen3-VL configuration tokembed can build: {exc}") from exc
    config.text_config.use_cache = False  # one forward per batch, nothing generated
    return config


def load_qwen3_vl(
    family: str,
    path: Path,
    options: LoadOptions,
    raw_config: dict,
    layout: Qwen3VLLayout,
    head: Head,
    processor: Any,
    embedding_dim: Callable[[Any, CutLinear | None], int],
    projection: Callable[[Any, dict], CutLinear | None] = lambda _config, _state: None,
    adapt: Callable[[Qwen3VLRetriever], None] = lambda _model: None,
    output_submodule: str | None = None,
) -> VisionModel:
    """Build the family's module, load every tensor through ``loading.load_state_checked`` (missing or unused
    tensors: ModelError, exit 4), and wrap it with its processor as a ``VisionModel``.

    ``projection(config, state)`` builds the projection from what the checkpoint holds; ``adapt`` changes the
    backbone (attention direction, final norm); ``output_submodule`` names the module whose output is the vector
    before normalization (``--no-normalize``), the projection by default.
    """
    from tokembed.models.loading import building_in, load_state_checked
    from tokembed.models.vision_check import check_processor_fits
    from tokembed.models.weights import read_state

    config = qwen3_vl_config(path, raw_config)
    check_processor_fits(path, processor, config)
    state = read_state(path)
    proj = projection(config, state)  # float32, as every projection runs
    dtype = torch_dtype(options.dtype)
    with building_in(dtype, config):  # the backbone is built in its compute dtype, sub-models included
        model = Qwen3VLRetriever(config, layout, head, proj)
    adapt(model)
    load_state_checked(model, state, path, ignore_unused=layout.ignore_unused)
    model.to(dtype).eval()
    if proj is not None:
        proj.float()  # projections run in float32 (base.LoadOptions)
    limit = int(config.text_config.max_position_embeddings)
    return VisionModel(
        family=family,
        path=path,
        architecture=(raw_config.get("architectures") or [family])[0],
        model=model,
        processor=processor,
        embedding_dim=embedding_dim(config, proj),
        projection=output_submodule or layout.projection,
        max_length=limit,
        position_limit=limit,
    )
