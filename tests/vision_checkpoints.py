"""Builders for tiny, random, fully offline vision retrieval checkpoints.

Every ``build_*`` function has the signature ``build_xxx(path: pathlib.Path) -> pathlib.Path``: it writes a
checkpoint folder (model + processor, as ``save_pretrained`` lays them out) at ``path`` and returns it.
Builds are deterministic (fixed seed, tokenizers trained on a fixed corpus), need no network and take
well under a second each. Image processors use the PIL backend (torchvision does not load here).

* ``build_colpali``          ``ColPaliForRetrieval``: PaliGemma (SigLIP 32 px / patch 8 -> 16 image tokens + Gemma).
* ``build_colqwen2``         ``ColQwen2ForRetrieval`` over Qwen2-VL (patch 14, merge 2, 4..16 image tokens).
* ``build_colqwen2_5``       ``ColQwen2ForRetrieval`` over Qwen2.5-VL (ColQwen2.5 checkpoints use this class).
* ``build_colmodernvbert``   ``ColModernVBertForRetrieval``: SigLIP + ModernBERT, Idefics3 tiling (4 tokens/tile).
* ``build_remote_code``      ``TinyColRetriever``: model and processor code copied into the checkpoint and
                             named by ``auto_map`` (``tests/remote_code/``), loaded with trust_remote_code.

Every projection gets a clearly non-zero bias, so a loader that dropped it would fail the parity tests.
"""

from __future__ import annotations

import json
import pathlib
import shutil

import torch
from tokenizers import Regex, pre_tokenizers, processors

from text_tokenizers import _LLAMA3_SPLIT, _train_byte_level_bpe

__all__ = ["VISION_BUILDERS", "build_colmodernvbert", "build_colpali", "build_colqwen2", "build_colqwen2_5", "build_remote_code"]

REMOTE_CODE_DIR = pathlib.Path(__file__).parent / "remote_code"
EMBEDDING_DIM = 16


def _prepare(path: pathlib.Path) -> pathlib.Path:
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _tokenizer(specials: list[str], split_like_llama3: bool = False, **named):
    """A byte-level BPE ``PreTrainedTokenizerFast`` whose special tokens come first in the vocab."""
    from transformers import PreTrainedTokenizerFast

    if split_like_llama3:
        pre = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
            ]
        )
    else:
        pre = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok = _train_byte_level_bpe(specials, vocab_size=300, pre_tokenizer=pre)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=1024, padding_side="right", **named)


def _bias_projection(model) -> None:
    with torch.no_grad():
        model.embedding_proj_layer.bias.normal_(std=0.5)


def _save(model, processor, path: pathlib.Path) -> pathlib.Path:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def _small_text(vocab_size: int, **extra) -> dict:
    return dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=1024,
        **extra,
    )


def build_colpali(path: pathlib.Path) -> pathlib.Path:
    """PaliGemma backbone; the processor adds ``<image>`` and 1152 ``<locNNNN>``/``<segNNN>`` tokens."""
    from transformers import ColPaliConfig, ColPaliForRetrieval, ColPaliProcessor, PaliGemmaConfig
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    path = _prepare(path)
    tokenizer = _tokenizer(["<pad>", "<eos>", "<bos>", "<unk>"], bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")
    image_processor = SiglipImageProcessorPil(size={"height": 32, "width": 32}, image_seq_length=16)
    processor = ColPaliProcessor(image_processor=image_processor, tokenizer=tokenizer)
    vocab = len(tokenizer)
    text = _small_text(vocab, num_key_value_heads=1, head_dim=16, pad_token_id=0, bos_token_id=2, eos_token_id=1)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8)
    vlm = PaliGemmaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=processor.image_token_id,
        vocab_size=vocab,
        projection_dim=32,
        hidden_size=32,
    )
    torch.manual_seed(0)
    model = ColPaliForRetrieval(ColPaliConfig(vlm_config=vlm, embedding_dim=EMBEDDING_DIM)).eval()
    _bias_projection(model)
    return _save(model, processor, path)


_QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


def _build_colqwen(path: pathlib.Path, vlm_type: str, vision: dict) -> pathlib.Path:
    from transformers import ColQwen2Config, ColQwen2ForRetrieval, ColQwen2Processor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    path = _prepare(path)
    tokenizer = _tokenizer(_QWEN_SPECIALS, split_like_llama3=True, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    # 28 px per image token: 4..16 image tokens, aspect ratio kept (smart_resize).
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16, patch_size=14, merge_size=2, temporal_patch_size=2
    )
    processor = ColQwen2Processor(image_processor=image_processor, tokenizer=tokenizer)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in _QWEN_SPECIALS}
    text = _small_text(
        len(tokenizer),
        num_key_value_heads=1,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
    )
    vlm = dict(
        model_type=vlm_type,
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(0)
    model = ColQwen2ForRetrieval(ColQwen2Config(vlm_config=vlm, embedding_dim=EMBEDDING_DIM)).eval()
    _bias_projection(model)
    return _save(model, processor, path)


def build_colqwen2(path: pathlib.Path) -> pathlib.Path:
    """Qwen2-VL backbone (as vidore/colqwen2-v1.0-hf)."""
    vision = dict(
        depth=2, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=14, spatial_merge_size=2, temporal_patch_size=2
    )
    return _build_colqwen(path, "qwen2_vl", vision)


def build_colqwen2_5(path: pathlib.Path) -> pathlib.Path:
    """Qwen2.5-VL backbone under the same ``ColQwen2ForRetrieval`` class (windowed vision attention)."""
    vision = dict(
        depth=2,
        hidden_size=32,
        out_hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=56,
        fullatt_block_indexes=[1],
    )
    return _build_colqwen(path, "qwen2_5_vl", vision)


def build_colmodernvbert(path: pathlib.Path) -> pathlib.Path:
    """ModernVBert: 32 px tiles (patch 8, pixel shuffle 2 -> 4 image tokens per tile), images up to 2x2 tiles."""
    from transformers import ColModernVBertConfig, ColModernVBertForRetrieval, ColModernVBertProcessor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    path = _prepare(path)
    grid = [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "[PAD]", "[UNK]", "[MASK]"]
    specials += ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"] + grid
    tokenizer = _tokenizer(
        specials, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>", pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]"
    )
    tile, patch, shuffle = 32, 8, 2
    image_processor = Idefics3ImageProcessorPil(
        do_image_splitting=True, size={"longest_edge": 2 * tile}, max_image_size={"longest_edge": tile}
    )
    image_seq_len = (tile // patch) ** 2 // shuffle**2
    processor = ColModernVBertProcessor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=image_seq_len)
    text = _small_text(
        len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        cls_token_id=tokenizer.bos_token_id,
        sep_token_id=tokenizer.eos_token_id,
        global_attn_every_n_layers=2,
        local_attention=16,
    )
    vlm = dict(
        model_type="modernvbert",
        text_config=text,
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=tile, patch_size=patch
        ),
        image_token_id=processor.image_token_id,
        pixel_shuffle_factor=shuffle,
    )
    torch.manual_seed(0)
    model = ColModernVBertForRetrieval(ColModernVBertConfig(vlm_config=vlm, embedding_dim=EMBEDDING_DIM)).eval()
    _bias_projection(model)
    return _save(model, processor, path)


def build_remote_code(path: pathlib.Path) -> pathlib.Path:
    """``TinyColRetriever`` + ``TinyColProcessor``: code files copied in, ``auto_map`` pointing at them."""
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    path = _prepare(path)
    modeling = _load_module(REMOTE_CODE_DIR / "modeling_tinycol.py")
    processing = _load_module(REMOTE_CODE_DIR / "processing_tinycol.py")
    tokenizer = _tokenizer(
        ["<pad>", "<eos>", "<bos>", "<unk>", "<image>"], bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    image_processor = SiglipImageProcessorPil(size={"height": 32, "width": 32})
    processor = processing.TinyColProcessor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=16)
    config = modeling.TinyColConfig(vocab_size=len(tokenizer), image_token_id=tokenizer.convert_tokens_to_ids("<image>"), dim=EMBEDDING_DIM)
    config.architectures = ["TinyColRetriever"]
    config.auto_map = {"AutoConfig": "modeling_tinycol.TinyColConfig", "AutoModel": "modeling_tinycol.TinyColRetriever"}
    torch.manual_seed(0)
    model = modeling.TinyColRetriever(config).eval()
    _save(model, processor, path)
    for name in ("modeling_tinycol.py", "processing_tinycol.py"):
        shutil.copy(REMOTE_CODE_DIR / name, path / name)
    processor_config = path / "processor_config.json"
    data = json.loads(processor_config.read_text()) if processor_config.is_file() else {}
    data.update(processor_class="TinyColProcessor", auto_map={"AutoProcessor": "processing_tinycol.TinyColProcessor"})
    processor_config.write_text(json.dumps(data, indent=2))
    return path


def _load_module(file: pathlib.Path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"tokembed_test_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


VISION_BUILDERS = {
    "colpali": build_colpali,
    "colqwen2": build_colqwen2,
    "colqwen2_5": build_colqwen2_5,
    "colmodernvbert": build_colmodernvbert,
    "remote_code": build_remote_code,
}
