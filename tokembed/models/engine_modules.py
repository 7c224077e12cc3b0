"""The modules colpali-engine 0.3.18 builds for its own layouts, without its package (imported on first use).

Each class has colpali-engine's forward: the backbone's last hidden state, the projection (with its bias),
L2 normalization, times the attention mask. The projection is 128-wide (320 for ``ColQwen3``), as colpali-engine
hard-codes it.

* ``EngineColQwen2`` / ``EngineColQwen2_5``  ``Qwen2VLModel`` / ``Qwen2_5_VLModel`` + ``custom_text_proj``. The
  backbone gets ``input_ids`` with the image grid, so positions are M-RoPE (transformers'
  ``ColQwen2ForRetrieval`` feeds ``inputs_embeds`` and numbers positions 0..T-1: different image vectors).
* ``EngineColQwen3``  ``Qwen3VLModel`` + ``custom_text_proj`` (320-d); M-RoPE positions from the processor's
  ``mm_token_type_ids``, as transformers' ``Qwen3VLProcessor`` returns them to colpali-engine's ``ColQwen3``.
* ``EngineColPali``  PaliGemma + ``custom_text_proj``, ``hidden_states[-1]``. colpali-engine wraps
  ``PaliGemmaForConditionalGeneration``; its language-model head never reaches the embeddings, so the bare
  ``PaliGemmaModel`` is built (module ``model``) and the head's saved tensor is ignorable. Its queries carry no
  ``token_type_ids``, which PaliGemma at inference reads as all prefix in transformers 4.57 and 5.3 (0.3.18's
  floor): bidirectional attention, padding masked, whatever the config's ``use_bidirectional_attention``. Later
  transformers (5.25) attend bidirectionally to an unpadded batch but causally to a padded one, so a query's
  vectors would depend on its neighbours; all-zero ``token_type_ids`` (prefix everywhere) ask for the prefix
  mask in every version.
* ``EngineColIdefics3``  ``Idefics3Model`` (module ``model``) + ``linear``.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import Idefics3Model, Idefics3PreTrainedModel, PaliGemmaModel, PaliGemmaPreTrainedModel
from transformers.models.qwen2_5_vl import Qwen2_5_VLModel
from transformers.models.qwen2_vl import Qwen2VLModel
from transformers.models.qwen3_vl import Qwen3VLModel

ENGINE_DIM = 128
COLQWEN3_DIM = 320  # colpali-engine 0.3.18 ColQwen3.__init__: self.dim = 320, whatever the config says


def _normalize_and_mask(proj: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    proj = proj / proj.norm(dim=-1, keepdim=True)  # [B, T, 128]
    return proj * attention_mask.unsqueeze(-1)


class _ColQwenForward:
    def _setup(self, config, dim: int = ENGINE_DIM) -> None:
        hidden = getattr(config, "hidden_size", None) or config.text_config.hidden_size
        self.dim = dim
        self.custom_text_proj = nn.Linear(hidden, dim)
        self.post_init()

    def forward(self, **kwargs) -> torch.Tensor:
        if "pixel_values" in kwargs:  # colpali-engine's padded per-image patch rows -> one sequence
            offsets = kwargs["image_grid_thw"][:, 1] * kwargs["image_grid_thw"][:, 2]
            kwargs["pixel_values"] = torch.cat([rows[:n] for rows, n in zip(kwargs["pixel_values"], offsets)], dim=0)
        for key in ("return_dict", "output_hidden_states", "use_cache"):
            kwargs.pop(key, None)
        hidden = super().forward(**kwargs, use_cache=False, output_hidden_states=True, return_dict=True).last_hidden_state
        return _normalize_and_mask(self.custom_text_proj(hidden), kwargs["attention_mask"])


class EngineColQwen2(_ColQwenForward, Qwen2VLModel):
    def __init__(self, config) -> None:
        Qwen2VLModel.__init__(self, config)
        self._setup(self.config)


class EngineColQwen2_5(_ColQwenForward, Qwen2_5_VLModel):  # noqa: N801
    def __init__(self, config) -> None:
        Qwen2_5_VLModel.__init__(self, config)
        self._setup(self.config)


class EngineColQwen3(_ColQwenForward, Qwen3VLModel):
    def __init__(self, config) -> None:
        Qwen3VLModel.__init__(self, config)
        self._setup(self.config, COLQWEN3_DIM)


class EngineColPali(PaliGemmaPreTrainedModel):
    def __init__(self, config) -> None:
        super().__init__(config)
        self.model = PaliGemmaModel(config)
        self.dim = ENGINE_DIM
        self.custom_text_proj = nn.Linear(config.text_config.hidden_size, ENGINE_DIM)
        self.post_init()

    def forward(self, **kwargs) -> torch.Tensor:
        kwargs.pop("output_hidden_states", None)
        if "pixel_values" in kwargs:
            kwargs["pixel_values"] = kwargs["pixel_values"].to(dtype=self.dtype)
        kwargs.setdefault("token_type_ids", torch.zeros_like(kwargs["input_ids"]))  # all prefix (module doc)
        hidden = self.model(**kwargs, output_hidden_states=True).hidden_states[-1]
        return _normalize_and_mask(self.custom_text_proj(hidden), kwargs["attention_mask"])


class EngineColIdefics3(Idefics3PreTrainedModel):
    def __init__(self, config) -> None:
        super().__init__(config)
        self.model = Idefics3Model(config)
        self.dim = ENGINE_DIM
        self.linear = nn.Linear(config.text_config.hidden_size, ENGINE_DIM)
        self.post_init()

    def forward(self, **kwargs) -> torch.Tensor:
        hidden = self.model(**kwargs)[0]
        return _normalize_and_mask(self.linear(hidden), kwargs["attention_mask"])
