"""Tiny, deterministic tokenizers for the test checkpoints, one per tokenizer kind tokembed meets: WordPiece
(BERT), byte-level BPE (ModernBERT, LFM2, Qwen2 with the llama-3 split) and a SentencePiece-style Unigram
(XLM-R, Metaspace). Hand-written or trained on a fixed corpus, so builds need no network. Also the small file
helpers every checkpoint builder shares."""

from __future__ import annotations

import json
import pathlib
import string
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

PUNCTUATION = list(string.punctuation)

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
