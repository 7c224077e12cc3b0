"""Builders for tiny, random, fully offline checkpoints in every layout tokembed reads.

Every ``build_*`` function has the signature ``build_xxx(path: pathlib.Path) -> pathlib.Path``: it
writes one checkpoint folder at ``path`` (created if missing) and returns ``path``. Builds are
deterministic (fixed ``torch.manual_seed`` per builder, hand-written or deterministically trained
tokenizers), need no network and take well under a second each.

Layouts (see ``tests/test_checkpoints.py`` for the proof that the reference library loads them):

* ``build_stanford``           Stanford colbert-ai ``HF_ColBERT`` (BERT, ``bert.``-prefixed weights +
                               root ``linear.weight``, ``artifact.metadata``).
* ``build_pylate_bert``        PyLate 1.x on sentence-transformers 4.x (no ``model_type`` key), BERT.
* ``build_pylate_modernbert``  PyLate on sentence-transformers 5.x (``model_type: ColBERT``), ModernBERT,
                               two Dense layers (``1_Dense`` Tanh + bias, ``2_Dense`` identity).
* ``build_pylate_xlmr``        PyLate, XLM-RoBERTa (Unigram/Metaspace tokenizer), Dense with bias,
                               ``attend_to_expansion_tokens: true``, custom short skiplist.
* ``build_pylate_lfm2``        PyLate, LFM2 backbone (no mask token: queries expand with EOS).
* ``build_st_native``          ``MultiVectorEncoder.save`` (sentence-transformers 6 native layout).
* ``build_raw_encoder``        Plain ``BertModel`` + tokenizer, no ColBERT files.
* ``build_raw_decoder``        Plain ``Qwen2ForCausalLM`` + byte-level BPE tokenizer.
* ``build_raw_projection``     Single-vector SentenceTransformer: Transformer + Pooling + Dense(Tanh).
* ``build_unknown_layout``     ``config.json`` with a ``model_type`` transformers does not know, no weights.

``CHECKPOINT_SPECS`` records, per ColBERT builder, the settings a test (or tokembed) should expect.
"""

from __future__ import annotations

import json
import pathlib
import string
import tempfile
from typing import Any

import torch
from safetensors.torch import save_file
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

__all__ = [
    "BUILDERS",
    "CHECKPOINT_SPECS",
    "COLBERT_BUILDERS",
    "RAW_BUILDERS",
    "build_pylate_bert",
    "build_pylate_lfm2",
    "build_pylate_modernbert",
    "build_pylate_xlmr",
    "build_raw_decoder",
    "build_raw_encoder",
    "build_raw_projection",
    "build_st_native",
    "build_stanford",
    "build_unknown_layout",
]

QUERY_LENGTH = 16
DOCUMENT_LENGTH = 40
PUNCTUATION = list(string.punctuation)
XLMR_SKIPLIST = [".", ",", "?", "!"]

# Version stamps written into config_sentence_transformers.json, as the respective PyLate eras did.
_ST4_VERSION = {"sentence_transformers": "4.0.2", "transformers": "4.48.2", "pytorch": "2.5.1+cu124"}
_ST5_VERSION = {"sentence_transformers": "5.1.1", "transformers": "4.56.2", "pytorch": "2.8.0+cu128"}

_PYLATE_DENSE_TYPE = "pylate.models.Dense.Dense"
_ST_TRANSFORMER_TYPE = "sentence_transformers.models.Transformer"

# --------------------------------------------------------------------------------------------------
# Vocabulary / corpus shared by the tokenizers
# --------------------------------------------------------------------------------------------------

_WORDS = [
    "the", "a", "an", "of", "to", "and", "in", "is", "was", "it", "for", "on", "with", "as", "by", "at",
    "from", "that", "this", "what", "which", "who", "how", "when", "where", "are", "be", "not", "or", "its",
    "capital", "france", "paris", "berlin", "germany", "city", "river", "planet", "red", "mars", "earth",
    "sun", "moon", "water", "known", "called", "large", "small", "world", "hello", "query", "document",
    "search", "token", "model", "text", "cat", "dog", "book", "time", "year", "day", "people", "house",
    "new", "old", "first", "last", "good", "great", "one", "two", "three", "many", "some", "all",
    "late", "interaction", "vector", "embed", "encode", "score", "match", "read", "write", "run",
]
_SUBWORDS = ["s", "es", "ed", "ing", "er", "est", "ly", "tion", "al", "ment", "ness", "ful", "able", "ize"]
_CJK = ["中", "文", "日", "本", "語", "東", "京", "北", "人", "大"]

_CORPUS = [
    "Paris is the capital of France.",
    "Berlin is the capital of Germany!",
    "Which planet is known as the Red Planet?",
    "Mars, known for its reddish appearance, is often called the Red Planet.",
    "The Earth and the Moon orbit the Sun; water covers most of the Earth.",
    "Hello, world: late interaction models encode every token as a vector.",
    "Search queries are short, documents are long (sometimes very long).",
    "A small cat and a large dog read a good book at the old house.",
    "Three people were reading, writing and running in the new city.",
    "What is the first year? The last day of the year is great.",
    "Scores match when vectors interact: MaxSim sums the best matches.",
    "It's 2024 - tokens, embeddings & [brackets] {braces} <angles> \"quotes\" 'ticks' `code` #hash $5 %50 ^ * + = | \\ / ~ @ _",
    "東京 is the capital of 日本; 北京 is a 大 city of 中文 speakers (人).",
    "Numbers like 0 1 2 3 4 5 6 7 8 9 and 42, 3.14 or 1,000 appear in text.",
]

_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)


def _write_json(path: pathlib.Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _prepare(path: pathlib.Path) -> pathlib.Path:
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


# --------------------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------------------


def _bert_vocab() -> list[str]:
    """WordPiece vocab laid out like bert-base-uncased: [PAD], [unusedN], then [UNK] [CLS] [SEP] [MASK]."""
    vocab = ["[PAD]", "[unused0]", "[unused1]", "[unused2]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += PUNCTUATION
    vocab += list(string.digits)
    vocab += list(string.ascii_lowercase)
    vocab += _CJK
    vocab += _WORDS
    vocab += ["##" + c for c in string.ascii_lowercase]
    vocab += ["##" + c for c in string.digits]
    vocab += ["##" + piece for piece in _SUBWORDS]
    seen: set[str] = set()
    unique = []
    for token in vocab:
        if token not in seen:
            seen.add(token)
            unique.append(token)
    return unique


def _bert_tokenizer(path: pathlib.Path):
    """``BertTokenizer`` (fast, WordPiece, lowercasing) from the hand-written vocab; also writes vocab.txt."""
    from transformers import BertTokenizer

    vocab_list = _bert_vocab()
    tokenizer = BertTokenizer(vocab={token: index for index, token in enumerate(vocab_list)}, do_lower_case=True)
    tokenizer.model_max_length = 512
    (path / "vocab.txt").write_text("\n".join(vocab_list) + "\n", encoding="utf-8")
    return tokenizer


def _train_byte_level_bpe(special_tokens: list[str], vocab_size: int, pre_tokenizer) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS * 3, trainer=trainer)
    return tokenizer


def _modernbert_tokenizer():
    """Byte-level BPE like answerdotai/ModernBERT-base: [CLS] $A [SEP], [MASK] with lstrip."""
    from transformers import PreTrainedTokenizerFast

    tok = _train_byte_level_bpe(
        ["<|endoftext|>", "<|padding|>"],
        vocab_size=420,
        pre_tokenizer=pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    )
    tok.add_special_tokens(
        [
            AddedToken("[UNK]", normalized=False, special=True),
            AddedToken("[CLS]", normalized=False, special=True),
            AddedToken("[SEP]", normalized=False, special=True),
            AddedToken("[PAD]", normalized=False, special=True),
            AddedToken("[MASK]", lstrip=True, normalized=False, special=True),
        ]
    )
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0",
        pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        mask_token="[MASK]",
        model_max_length=512,
        clean_up_tokenization_spaces=True,
        model_input_names=["input_ids", "attention_mask"],
    )


def _xlmr_unigram_vocab() -> list[tuple[str, float]]:
    """Hand-written SentencePiece-style Unigram vocab, ids laid out like xlm-roberta-base."""
    pieces: list[tuple[str, float]] = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [(p, -8.0) for p in PUNCTUATION]
    pieces += [("▁", -6.0)]
    pieces += [(c, -9.0) for c in string.digits]
    pieces += [(c, -9.5) for c in string.ascii_lowercase]
    pieces += [(c, -10.0) for c in string.ascii_uppercase]
    pieces += [(c, -7.0) for c in _CJK]
    pieces += [("▁" + w, -3.0 - 0.01 * i) for i, w in enumerate(_WORDS)]
    pieces += [("▁" + w.capitalize(), -3.5 - 0.01 * i) for i, w in enumerate(_WORDS[:40])]
    pieces += [(s, -5.0 - 0.01 * i) for i, s in enumerate(_SUBWORDS)]
    seen: set[str] = set()
    unique = []
    for piece, score in pieces:
        if piece not in seen:
            seen.add(piece)
            unique.append((piece, score))
    return unique


def _xlmr_tokenizer():
    """Unigram + Metaspace like xlm-roberta-base: <s> $A </s>, <mask> (lstrip) as the last id."""
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.Unigram(_xlmr_unigram_vocab(), unk_id=3, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.add_special_tokens(
        [
            AddedToken("<s>", normalized=False, special=True),
            AddedToken("<pad>", normalized=False, special=True),
            AddedToken("</s>", normalized=False, special=True),
            AddedToken("<unk>", normalized=False, special=True),
            AddedToken("<mask>", lstrip=True, normalized=False, special=True),
        ]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<s>:0 $A:0 </s>:0",
        pair="<s>:0 $A:0 </s>:0 </s>:0 $B:0 </s>:0",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        model_max_length=512,
        model_input_names=["input_ids", "attention_mask"],
    )


_LFM2_SPECIALS = [
    "<|pad|>",
    "<|startoftext|>",
    "<|endoftext|>",
    "<|fim_pre|>",
    "<|fim_mid|>",
    "<|fim_suf|>",
    "<|im_start|>",
    "<|im_end|>",
]


def _lfm2_tokenizer():
    """Byte-level BPE with LFM2's special-token layout (LiquidAI/LFM2-Tokenizer): <|pad|>=0,
    <|startoftext|>=1 (BOS, prepended by the post-processor), <|im_end|>=7 (EOS), no mask token."""
    from transformers import PreTrainedTokenizerFast

    tok = _train_byte_level_bpe(
        _LFM2_SPECIALS,
        vocab_size=420,
        pre_tokenizer=pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
            ]
        ),
    )
    bos_id = tok.token_to_id("<|startoftext|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|>:0 $A:0",
        pair="<|startoftext|>:0 $A:0 <|startoftext|>:1 $B:1",
        special_tokens=[("<|startoftext|>", bos_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|startoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        model_max_length=512,
        padding_side="right",
        model_input_names=["input_ids", "attention_mask"],
    )


def _qwen2_tokenizer():
    """Byte-level BPE with Qwen2's specials (<|endoftext|> pad/eos, <|im_start|>, <|im_end|>), no BOS."""
    from transformers import PreTrainedTokenizerFast

    tok = _train_byte_level_bpe(
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        vocab_size=400,
        pre_tokenizer=pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
            ]
        ),
    )
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=512,
        model_input_names=["input_ids", "attention_mask"],
    )


# --------------------------------------------------------------------------------------------------
# Backbones
# --------------------------------------------------------------------------------------------------


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


def _add_pylate_prefix_tokens(tokenizer, model, prefixes: tuple[str, str] = ("[Q] ", "[D] ")) -> None:
    """Mirror PyLate's ColBERT.__init__: resize to len(tokenizer), ``add_tokens`` the raw prefixes
    (trailing space included, non-special, normalized=True) and resize the embeddings again."""
    model.resize_token_embeddings(len(tokenizer))
    tokenizer.add_tokens(list(prefixes))
    model.resize_token_embeddings(len(tokenizer))


def _save_dense(
    folder: pathlib.Path,
    in_features: int,
    out_features: int,
    bias: bool,
    activation_function: str,
    seed: int,
) -> dict[str, torch.Tensor]:
    """Write ``<folder>/config.json`` + ``<folder>/model.safetensors`` like PyLate 1.x's Dense.save
    (only the four PyLate 1.x config keys; no module IO names, so the loader must default to tokens)."""
    torch.manual_seed(seed)
    linear = torch.nn.Linear(in_features, out_features, bias=bias)
    config: dict[str, Any] = {
        "in_features": in_features,
        "out_features": out_features,
        "bias": bias,
        "activation_function": activation_function,
    }
    _write_json(folder / "config.json", config)
    state = {f"linear.{key}": value.detach().clone().contiguous() for key, value in linear.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return state


def _pylate_modules_json(num_dense: int) -> list[dict[str, Any]]:
    modules = [{"idx": 0, "name": "0", "path": "", "type": _ST_TRANSFORMER_TYPE}]
    for i in range(1, num_dense + 1):
        modules.append({"idx": i, "name": str(i), "path": f"{i}_Dense", "type": _PYLATE_DENSE_TYPE})
    return modules


def _pylate_st_config(
    *,
    skiplist_words: list[str],
    attend: bool,
    with_model_type: bool,
    version: dict[str, str],
) -> dict[str, Any]:
    """config_sentence_transformers.json as PyLate writes it (ST base keys + PyLate knobs)."""
    config: dict[str, Any] = {}
    if with_model_type:
        # sentence-transformers >= 5.0 stamps the saving class name; PyLate's class is ``ColBERT``.
        config["model_type"] = "ColBERT"
    config.update(
        {
            "__version__": dict(version),
            "prompts": {"query": "", "document": ""} if with_model_type else {},
            "default_prompt_name": None,
            "similarity_fn_name": "MaxSim",
            "query_prefix": "[Q] ",
            "document_prefix": "[D] ",
            "query_length": QUERY_LENGTH,
            "document_length": DOCUMENT_LENGTH,
            "attend_to_expansion_tokens": attend,
            "skiplist_words": list(skiplist_words),
            "do_query_expansion": True,
        }
    )
    return config


def _write_pylate_common(
    path: pathlib.Path,
    model,
    tokenizer,
    *,
    denses: list[tuple[int, int, bool, str]],
    skiplist_words: list[str],
    attend: bool,
    with_model_type: bool,
    seed: int,
) -> None:
    """Save backbone + tokenizer at the root and the PyLate sidecar files."""
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    # PyLate sets max_seq_length = length - 1 before every tokenize call (the prefix token is inserted
    # afterwards), so a save made after encoding documents records document_length - 1.
    _write_json(path / "sentence_bert_config.json", {"max_seq_length": DOCUMENT_LENGTH - 1, "do_lower_case": False})
    _write_json(path / "modules.json", _pylate_modules_json(len(denses)))
    for index, (in_f, out_f, bias, activation) in enumerate(denses, start=1):
        _save_dense(path / f"{index}_Dense", in_f, out_f, bias, activation, seed=seed + 100 * index)
    _write_json(
        path / "config_sentence_transformers.json",
        _pylate_st_config(
            skiplist_words=skiplist_words,
            attend=attend,
            with_model_type=with_model_type,
            version=_ST5_VERSION if with_model_type else _ST4_VERSION,
        ),
    )


_IDENTITY = "torch.nn.modules.linear.Identity"
_TANH = "torch.nn.modules.activation.Tanh"


# --------------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------------


def build_stanford(path: pathlib.Path) -> pathlib.Path:
    """Stanford colbert-ai ``HF_ColBERT`` checkpoint (colbert-ir/colbertv2.0 layout).

    Files: config.json (``architectures: ["HF_ColBERT"]``, model_type bert), model.safetensors (every
    BERT weight under ``bert.`` incl. the pooler, plus ``linear.weight`` [24, 32], no bias),
    artifact.metadata (flat ColBERTConfig dump), tokenizer.json, tokenizer_config.json, vocab.txt.
    """
    from transformers import BertModel

    path = _prepare(path)
    tokenizer = _bert_tokenizer(path)
    config = _bert_config(len(tokenizer))
    config.architectures = ["HF_ColBERT"]
    torch.manual_seed(1)
    bert = BertModel(config, add_pooling_layer=True).eval()
    linear = torch.nn.Linear(config.hidden_size, 24, bias=False)

    state = {f"bert.{key}": value.detach().clone().contiguous() for key, value in bert.state_dict().items()}
    state["linear.weight"] = linear.weight.detach().clone().contiguous()
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))

    metadata = {
        "query_token_id": "[unused0]",
        "doc_token_id": "[unused1]",
        "query_token": "[Q]",
        "doc_token": "[D]",
        "ncells": None,
        "centroid_score_threshold": None,
        "ndocs": None,
        "load_index_with_mmap": False,
        "index_path": None,
        "index_bsize": 64,
        "nbits": 2,
        "kmeans_niters": 4,
        "resume": False,
        "pool_factor": 1,
        "clustering_mode": "hierarchical",
        "protected_tokens": 0,
        "similarity": "cosine",
        "bsize": 32,
        "accumsteps": 1,
        "lr": 1e-05,
        "maxsteps": 400000,
        "save_every": None,
        "warmup": 20000,
        "warmup_bert": None,
        "relu": False,
        "nway": 64,
        "use_ib_negatives": True,
        "reranker": False,
        "distillation_alpha": 1.0,
        "ignore_scores": False,
        "model_name": None,
        "query_maxlen": QUERY_LENGTH,
        "attend_to_mask_tokens": False,
        "interaction": "colbert",
        "dim": 24,
        "doc_maxlen": DOCUMENT_LENGTH,
        "mask_punctuation": True,
        "checkpoint": "colbert-ir/colbertv1.9",
        "triples": "/future/u/okhattab/root/unit/experiments/2021.10/downstream.distillation.round2.2_score/round2.nway6.cosine.ib/examples.64.json",
        "collection": "/future/u/okhattab/data/MSMARCO/collection.tsv",
        "queries": "/future/u/okhattab/data/MSMARCO/queries.train.tsv",
        "index_name": None,
        "overwrite": False,
        "root": "/future/u/okhattab/root/unit/experiments",
        "experiment": "2021.10",
        "index_root": None,
        "name": "kldR2.nway64.ib",
        "rank": 0,
        "nranks": 4,
        "amp": True,
        "gpus": 8,
        "avoid_fork_if_possible": False,
        "meta": {
            "hostname": "tiny-random",
            "git_branch": "main",
            "git_hash": "0000000000000000000000000000000000000000",
            "git_commit_datetime": "2021-10-01 00:00:00-07:00",
            "current_datetime": "Oct 01, 2021 ; 12:00AM PDT (-0700)",
            "cmd": "tests/checkpoints.py build_stanford",
            "version": "colbert-v0.4",
        },
    }
    _write_json(path / "artifact.metadata", metadata)
    return path


def build_pylate_bert(path: pathlib.Path) -> pathlib.Path:
    """PyLate 1.x checkpoint saved with sentence-transformers 4.x, BERT backbone.

    config_sentence_transformers.json has *no* ``model_type`` (pre-ST-5 save), so the reference library
    routes it through its SentenceTransformer-conversion path. One Dense 32 -> 24, no bias, identity.
    """
    from transformers import BertModel

    path = _prepare(path)
    tokenizer = _bert_tokenizer(path)
    torch.manual_seed(2)
    model = BertModel(_bert_config(len(tokenizer))).eval()
    _add_pylate_prefix_tokens(tokenizer, model)
    _write_pylate_common(
        path,
        model,
        tokenizer,
        denses=[(32, 24, False, _IDENTITY)],
        skiplist_words=PUNCTUATION,
        attend=False,
        with_model_type=False,
        seed=2,
    )
    return path


def build_pylate_modernbert(path: pathlib.Path) -> pathlib.Path:
    """PyLate checkpoint (ST 5.x era, ``model_type: ColBERT``), ModernBERT backbone with alternating
    global / sliding-window (window 16) attention and TWO Dense layers: 48 -> 64 (bias, Tanh) and
    64 -> 16 (no bias, identity)."""
    from transformers import ModernBertConfig, ModernBertModel

    path = _prepare(path)
    tokenizer = _modernbert_tokenizer()
    config = ModernBertConfig(
        vocab_size=len(tokenizer),
        hidden_size=48,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=512,
        layer_types=["full_attention", "sliding_attention"],
        local_attention=16,
        initializer_range=0.1,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.cls_token_id,
        cls_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        sep_token_id=tokenizer.sep_token_id,
    )
    torch.manual_seed(3)
    model = ModernBertModel(config).eval()
    _add_pylate_prefix_tokens(tokenizer, model)
    _write_pylate_common(
        path,
        model,
        tokenizer,
        denses=[(48, 64, True, _TANH), (64, 16, False, _IDENTITY)],
        skiplist_words=PUNCTUATION,
        attend=False,
        with_model_type=True,
        seed=3,
    )
    return path


def build_pylate_xlmr(path: pathlib.Path) -> pathlib.Path:
    """PyLate checkpoint (``model_type: ColBERT``), XLM-RoBERTa backbone, Unigram/Metaspace tokenizer,
    ``attend_to_expansion_tokens: true``, custom skiplist [".", ",", "?", "!"], one Dense 32 -> 20 with
    bias (identity)."""
    from transformers import XLMRobertaConfig, XLMRobertaModel

    path = _prepare(path)
    tokenizer = _xlmr_tokenizer()
    config = XLMRobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=130,
        type_vocab_size=1,
        initializer_range=0.1,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(4)
    model = XLMRobertaModel(config).eval()
    _add_pylate_prefix_tokens(tokenizer, model)
    _write_pylate_common(
        path,
        model,
        tokenizer,
        denses=[(32, 20, True, _IDENTITY)],
        skiplist_words=XLMR_SKIPLIST,
        attend=True,
        with_model_type=True,
        seed=4,
    )
    return path


def build_pylate_lfm2(path: pathlib.Path) -> pathlib.Path:
    """PyLate checkpoint (``model_type: ColBERT``), LFM2 backbone (one short-conv layer + one attention
    layer). The tokenizer has no mask token, so query expansion pads with EOS (<|im_end|>)."""
    from transformers import Lfm2Config, Lfm2Model

    path = _prepare(path)
    tokenizer = _lfm2_tokenizer()
    config = Lfm2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        layer_types=["conv", "full_attention"],
        full_attn_idxs=[1],
        conv_L_cache=3,
        conv_bias=False,
        block_auto_adjust_ff_dim=False,
        initializer_range=0.1,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
        use_cache=False,
    )
    torch.manual_seed(5)
    model = Lfm2Model(config).eval()
    _add_pylate_prefix_tokens(tokenizer, model)
    _write_pylate_common(
        path,
        model,
        tokenizer,
        denses=[(32, 12, False, _IDENTITY)],
        skiplist_words=PUNCTUATION,
        attend=False,
        with_model_type=True,
        seed=5,
    )
    return path


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


def build_st_native(path: pathlib.Path) -> pathlib.Path:
    """Checkpoint written by ``MultiVectorEncoder(modules=...).save(path)`` (sentence-transformers 6
    native layout): Transformer (query_expansion fixed/16, attend False; document_length 40) ->
    Dense 32 -> 24 (bias, identity, token-level) -> MultiVectorMask (string.punctuation) ->
    Normalize, with plain-text prompts {"query": "query: ", "document": "document: "}."""
    from sentence_transformers import MultiVectorEncoder
    from sentence_transformers.base.modules import Dense, Normalize, Transformer
    from sentence_transformers.multi_vector_encoder.modules import MultiVectorMask

    path = _prepare(path)
    with tempfile.TemporaryDirectory() as backbone_dir:
        backbone = pathlib.Path(backbone_dir) / "backbone"
        backbone.mkdir()
        tokenizer = _bert_tokenizer(backbone)
        torch.manual_seed(8)
        from transformers import BertModel

        BertModel(_bert_config(len(tokenizer))).eval().save_pretrained(str(backbone))
        tokenizer.save_pretrained(str(backbone))

        transformer = Transformer(
            str(backbone),
            document_length=DOCUMENT_LENGTH,
            query_expansion={"strategy": "fixed", "attend": False, "length": QUERY_LENGTH},
            model_kwargs={"local_files_only": True},
            processor_kwargs={"local_files_only": True},
            config_kwargs={"local_files_only": True},
        )
        torch.manual_seed(80)
        dense = Dense(
            in_features=32,
            out_features=24,
            bias=True,
            activation_function=torch.nn.Identity(),
            module_input_name="token_embeddings",
        )
        model = MultiVectorEncoder(
            modules=[
                transformer,
                dense,
                MultiVectorMask(skiplist_words=PUNCTUATION),
                Normalize(module_input_name="token_embeddings"),
            ],
            prompts={"query": "query: ", "document": "document: "},
            similarity_fn_name="maxsim",
            device="cpu",
        )
        model.save(str(path), create_model_card=False)
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


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------

# What a correct reader must derive from each ColBERT checkpoint.
CHECKPOINT_SPECS: dict[str, dict[str, Any]] = {
    "stanford": {
        "builder": build_stanford,
        "backbone": "bert",
        "hidden_size": 32,
        "dim": 24,
        "dense": [{"in": 32, "out": 24, "bias": False, "activation": "identity"}],
        "query_length": QUERY_LENGTH,
        "document_length": DOCUMENT_LENGTH,
        "query_prefix": "[unused0] ",
        "document_prefix": "[unused1] ",
        "skiplist_words": PUNCTUATION,
        "attend_to_expansion_tokens": False,
        "expansion_token": "[MASK]",
        "weights_prefix": "bert.",
    },
    "pylate_bert": {
        "builder": build_pylate_bert,
        "backbone": "bert",
        "hidden_size": 32,
        "dim": 24,
        "dense": [{"in": 32, "out": 24, "bias": False, "activation": "identity"}],
        "query_length": QUERY_LENGTH,
        "document_length": DOCUMENT_LENGTH,
        "query_prefix": "[Q] ",
        "document_prefix": "[D] ",
        "skiplist_words": PUNCTUATION,
        "attend_to_expansion_tokens": False,
        "expansion_token": "[MASK]",
        "weights_prefix": "",
    },
    "pylate_modernbert": {
        "builder": build_pylate_modernbert,
        "backbone": "modernbert",
        "hidden_size": 48,
        "dim": 16,
        "dense": [
            {"in": 48, "out": 64, "bias": True, "activation": "tanh"},
            {"in": 64, "out": 16, "bias": False, "activation": "identity"},
        ],
        "query_length": QUERY_LENGTH,
        "document_length": DOCUMENT_LENGTH,
        "query_prefix": "[Q] ",
        "document_prefix": "[D] ",
        "skiplist_words": PUNCTUATION,
        "attend_to_expansion_tokens": False,
        "expansion_token": "[MASK]",
        "weights_prefix": "",
    },
    "pylate_xlmr": {
        "builder": build_pylate_xlmr,
        "backbone": "xlm-roberta",
        "hidden_size": 32,
        "dim": 20,
        "dense": [{"in": 32, "out": 20, "bias": True, "activation": "identity"}],
        "query_length": QUERY_LENGTH,
        "document_length": DOCUMENT_LENGTH,
        "query_prefix": "[Q] ",
        "document_prefix": "[D] ",
        "skiplist_words": XLMR_SKIPLIST,
        "attend_to_expansion_tokens": True,
        "expansion_token": "<mask>",
        "weights_prefix": "",
    },
    "pylate_lfm2": {
        "builder": build_pylate_lfm2,
        "backbone": "lfm2",
        "hidden_size": 32,
        "dim": 12,
        "dense": [{"in": 32, "out": 12, "bias": False, "activation": "identity"}],
        "query_length": QUERY_LENGTH,
        "document_length": DOCUMENT_LENGTH,
        "query_prefix": "[Q] ",
        "document_prefix": "[D] ",
        "skiplist_words": PUNCTUATION,
        "attend_to_expansion_tokens": False,
        "expansion_token": "<|im_end|>",
        "weights_prefix": "",
    },
    "st_native": {
        "builder": build_st_native,
        "backbone": "bert",
        "hidden_size": 32,
        "dim": 24,
        "dense": [{"in": 32, "out": 24, "bias": True, "activation": "identity"}],
        "query_length": QUERY_LENGTH,
        "document_length": DOCUMENT_LENGTH,
        "query_prefix": "query: ",
        "document_prefix": "document: ",
        "skiplist_words": PUNCTUATION,
        "attend_to_expansion_tokens": False,
        "expansion_token": "[MASK]",
        "weights_prefix": "",
    },
}

COLBERT_BUILDERS = {name: spec["builder"] for name, spec in CHECKPOINT_SPECS.items()}
RAW_BUILDERS = {
    "raw_encoder": build_raw_encoder,
    "raw_decoder": build_raw_decoder,
    "raw_projection": build_raw_projection,
}
BUILDERS = {**COLBERT_BUILDERS, **RAW_BUILDERS, "unknown_layout": build_unknown_layout}
