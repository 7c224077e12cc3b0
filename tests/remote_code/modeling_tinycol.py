"""A tiny ColVision-style retriever that ships its own code (``auto_map``), for tokembed's remote-code tests.

Written like colpali-engine's models: the forward returns the token embeddings as a plain tensor
(projection ``custom_text_proj`` with bias, L2-normalized, multiplied by the attention mask). One
bidirectional attention layer over token embeddings in which the image tokens are replaced by patch
embeddings. Copied into the checkpoint folder by ``tests/vision_checkpoints.py:build_remote_code``.
"""

import math

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel


class TinyColConfig(PretrainedConfig):
    model_type = "tinycol"

    def __init__(
        self,
        vocab_size=400,
        hidden_size=32,
        image_size=32,
        patch_size=8,
        dim=16,
        max_positions=256,
        image_token_id=0,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.image_size = image_size
        self.patch_size = patch_size
        self.dim = dim
        self.max_positions = max_positions
        self.image_token_id = image_token_id
        super().__init__(**kwargs)


class TinyColRetriever(PreTrainedModel):
    config_class = TinyColConfig
    base_model_prefix = "tinycol"

    def __init__(self, config):
        super().__init__(config)
        hidden = config.hidden_size
        self.embed_tokens = nn.Embedding(config.vocab_size, hidden)
        self.positions = nn.Embedding(config.max_positions, hidden)
        self.patch = nn.Conv2d(3, hidden, config.patch_size, stride=config.patch_size)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.custom_text_proj = nn.Linear(hidden, config.dim)
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.normal_(module.weight, std=0.2)
            nn.init.normal_(module.bias, std=0.2)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=1.0)

    def forward(self, input_ids, attention_mask, pixel_values=None, **kwargs):
        hidden = self.config.hidden_size
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.embed_tokens(input_ids) + self.positions(positions)[None]
        if pixel_values is not None:
            patches = self.patch(pixel_values.to(x.dtype)).flatten(2).transpose(1, 2)  # [B, n_patches, hidden]
            image_mask = (input_ids == self.config.image_token_id)[..., None]
            x = x.masked_scatter(image_mask, patches.reshape(-1, hidden))
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        scores = q @ k.transpose(-1, -2) / math.sqrt(hidden)  # [B, T, T]
        scores = scores.masked_fill(~attention_mask.bool()[:, None, :], float("-inf"))
        x = self.norm(x + self.out(scores.softmax(dim=-1) @ v))
        proj = self.custom_text_proj(x)
        proj = proj / proj.norm(dim=-1, keepdim=True)
        return proj * attention_mask[..., None]
