"""Checkpoints without ColBERT files, for tokembed's ``--mode raw`` and its layout errors: a plain BERT encoder, a
plain Qwen2 decoder, a single-vector sentence-transformers model with a Dense projection, and a folder whose
``model_type`` transformers does not know. Same conventions as ``checkpoints.py`` (``build_x(path) -> path``,
deterministic, offline)."""

from __future__ import annotations

import pathlib
import tempfile

import torch

from text_tokenizers import _bert_tokenizer, _modernbert_tokenizer, _prepare, _qwen2_tokenizer, _write_json, _xlmr_tokenizer


def _bert_config(vocab_size: int, pad_token_id: int = 0):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        type_vocab_size=2,
        initializer_range=0.1,
        pad_token_id=pad_token_id,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
    )


def build_raw_encoder(path: pathlib.Path) -> pathlib.Path:
    """Plain ``BertModel`` (with pooler) + WordPiece tokenizer saved with ``save_pretrained``."""
    from transformers import BertModel

    path = _prepare(path)
    tokenizer = _bert_tokenizer(path)
    torch.manual_seed(6)
    model = BertModel(_bert_config(len(tokenizer))).eval()
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


def build_raw_decoder(path: pathlib.Path) -> pathlib.Path:
    """Plain ``Qwen2ForCausalLM`` (final RMSNorm ``model.norm``, tied lm_head) + byte-level BPE tokenizer."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    path = _prepare(path)
    tokenizer = _qwen2_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=0.1,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        use_cache=False,
    )
    torch.manual_seed(7)
    model = Qwen2ForCausalLM(config).eval()
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


def build_raw_projection(path: pathlib.Path) -> pathlib.Path:
    """Single-vector sentence-transformers checkpoint: Transformer -> Pooling(mean) -> Dense 32 -> 16
    (sentence-level, bias, Tanh), saved by ``SentenceTransformer.save``."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Dense, Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    path = _prepare(path)
    with tempfile.TemporaryDirectory() as backbone_dir:
        backbone = pathlib.Path(backbone_dir) / "backbone"
        backbone.mkdir()
        tokenizer = _bert_tokenizer(backbone)
        torch.manual_seed(9)
        from transformers import BertModel

        BertModel(_bert_config(len(tokenizer))).eval().save_pretrained(str(backbone))
        tokenizer.save_pretrained(str(backbone))
        transformer = Transformer(
            str(backbone),
            max_seq_length=128,
            model_kwargs={"local_files_only": True},
            processor_kwargs={"local_files_only": True},
            config_kwargs={"local_files_only": True},
        )
        torch.manual_seed(90)
        model = SentenceTransformer(
            modules=[transformer, Pooling(32, "mean"), Dense(32, 16, bias=True, activation_function=torch.nn.Tanh())],
            device="cpu",
        )
        model.save(str(path), create_model_card=False)
    return path


def _head_config(head: str, vocab_size: int, **ids):
    import transformers

    sizes = {
        "ModernBert": dict(hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           layer_types=["full_attention", "sliding_attention"], local_attention=16),
        "DistilBert": dict(dim=32, n_layers=2, n_heads=2, hidden_dim=64),
        "Electra": dict(embedding_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
        "Bert": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
        "XLMRoberta": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                           max_position_embeddings=130, type_vocab_size=1),
    }
    model = next(name for name in sizes if head.startswith(name + "For"))
    return getattr(transformers, f"{model}Config")(vocab_size=vocab_size, initializer_range=0.1, **sizes[model], **ids)


def build_encoder_with_head(path: pathlib.Path, head: str) -> pathlib.Path:
    """An encoder saved with its task head by ``save_pretrained``, as published (answerdotai/ModernBERT-base:
    ``ModernBertForMaskedLM``, distilbert-base-uncased: ``DistilBertForMaskedLM``, ELECTRA discriminators:
    ``ElectraForPreTraining``, xlm-roberta-base: ``XLMRobertaForMaskedLM``); tensors under the base model's prefix
    plus the head's outside it."""
    import transformers

    path = _prepare(path)
    if head.startswith("ModernBert"):
        tokenizer = _modernbert_tokenizer()
        config = _head_config(head, len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id,
                              cls_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
                              sep_token_id=tokenizer.sep_token_id)
    elif head.startswith("XLMRoberta"):
        tokenizer = _xlmr_tokenizer()
        config = _head_config(head, len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                              eos_token_id=tokenizer.eos_token_id)
    else:
        tokenizer = _bert_tokenizer(path)
        config = _head_config(head, len(tokenizer))
    torch.manual_seed(7)
    getattr(transformers, head)(config).eval().save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


def build_unknown_layout(path: pathlib.Path) -> pathlib.Path:
    """A folder whose config.json names a ``model_type`` transformers does not know; no weights, no tokenizer."""
    path = _prepare(path)
    _write_json(
        path / "config.json",
        {
            "architectures": ["TokembedMysteryModel"],
            "model_type": "tokembed-mystery",
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "vocab_size": 128,
        },
    )
    return path
