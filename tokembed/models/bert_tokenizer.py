"""A BERT WordPiece tokenizer on the ``tokenizers`` library alone, built as transformers 5's ``BertTokenizer`` builds
it, so that a BERT checkpoint loads without importing transformers (~2 s of every cold start).

transformers 5 rebuilds a BERT tokenizer from ``tokenizer_config.json`` rather than taking ``tokenizer.json``
whole: the vocabulary (and added tokens) come from the file, but the normalizer is a ``BertNormalizer`` made from
``do_lower_case`` / ``strip_accents`` / ``tokenize_chinese_chars``, the pre-tokenizer is ``BertPreTokenizer`` and
the post-processor is ``[CLS] $A [SEP]``; truncation and padding stored in the file are not applied. This class
does the same and offers the part of the transformers tokenizer API tokembed uses (``__call__`` with truncation,
``tokenize``, ``convert_tokens_to_ids``, ``add_special_tokens``, the added tokens, the special-token ids).
``is_native_bert_tokenizer`` says when it applies; anything else loads through transformers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

VERY_LARGE_INTEGER = int(1e30)  # transformers' "no limit" model_max_length
_SPECIAL = ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
_DEFAULTS = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]"}
_BERT_CLASSES = (None, "BertTokenizer", "BertTokenizerFast")


def _read(path: Path) -> dict:
    """The JSON file as a dict ({} when absent); a broken file is the same ModelError as everywhere else."""
    from tokembed.models.base import read_json

    return read_json(path) or {}


def is_native_bert_tokenizer(folder: Path) -> bool:
    """A WordPiece ``tokenizer.json`` whose ``tokenizer_config.json`` names a BERT tokenizer (or none), without an
    ``added_tokens.json`` that adds to it (transformers reads that file; this class builds from tokenizer.json)."""
    from tokembed.models.added_tokens_file import added_tokens_disagree

    config = _read(folder / "tokenizer_config.json")
    if config.get("tokenizer_class") not in _BERT_CLASSES or config.get("auto_map"):
        return False
    if not (folder / "tokenizer.json").is_file() or added_tokens_disagree(folder):
        return False
    with open(folder / "tokenizer.json", "rb") as handle:  # the model type sits near the end: read the file once
        model = json.loads(handle.read()).get("model") or {}
    return model.get("type") == "WordPiece"


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value


def truncated_encoding(backend: Any, encoding: Any, max_length: int | None, side: str, add_special_tokens: bool) -> Any:
    """What ``backend`` with ``enable_truncation(max_length, direction=side)`` gives for a text that ``encoding``
    holds without special tokens: its content cut to leave room for them, which ``post_process`` then adds.

    Truncating here rather than through the backend's setting keeps the backend as it was built: one loaded
    model tokenizes from several threads, and a setting changed for one call reaches another thread's encode in
    flight (encode_batch lets go of the GIL)."""
    if max_length is not None:
        room = max_length - backend.num_special_tokens_to_add(False) if add_special_tokens else max_length
        if room >= 0:  # a limit below the special tokens truncates nothing in tokenizers either
            encoding.truncate(room, direction=side)
    return backend.post_process(encoding, add_special_tokens=add_special_tokens)


class _Encoding(dict):
    """What ``tokenizer(text, return_offsets_mapping=True)`` returns for one text: a dict plus ``word_ids()``."""

    def __init__(self, encoding: Any, offsets: bool) -> None:
        super().__init__(input_ids=encoding.ids)
        if offsets:
            self["offset_mapping"] = encoding.offsets
        self._words = encoding.word_ids

    def word_ids(self) -> list[int | None]:
        return self._words


class BertTokenizer:
    is_fast = True

    def __init__(self, folder: Path) -> None:
        from tokenizers import AddedToken, Tokenizer, normalizers, pre_tokenizers, processors

        config = _read(folder / "tokenizer_config.json")
        special_map = _read(folder / "special_tokens_map.json")
        self.name_or_path = str(folder)
        self.truncation_side = config.get("truncation_side", "right")
        self.padding_side = config.get("padding_side", "right")
        self.model_max_length = int(config.get("model_max_length") or VERY_LARGE_INTEGER)
        for name in _SPECIAL:
            value = _token_text(config.get(name)) or _token_text(special_map.get(name)) or _DEFAULTS[name]
            setattr(self, name, value)
        backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
        backend.no_truncation()
        backend.no_padding()
        backend.normalizer = normalizers.BertNormalizer(
            clean_text=True,
            handle_chinese_chars=config.get("tokenize_chinese_chars", True),
            strip_accents=config.get("strip_accents"),
            lowercase=config.get("do_lower_case", True),
        )
        backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        present = {token.content for token in backend.get_added_tokens_decoder().values()}
        missing = [getattr(self, name) for name in _SPECIAL if getattr(self, name) not in present]
        if missing:
            backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in missing])
        cls_id, sep_id = backend.token_to_id(self.cls_token), backend.token_to_id(self.sep_token)
        backend.post_processor = processors.TemplateProcessing(
            single=f"{self.cls_token}:0 $A:0 {self.sep_token}:0",
            pair=f"{self.cls_token}:0 $A:0 {self.sep_token}:0 $B:1 {self.sep_token}:1",
            special_tokens=[(self.cls_token, 2 if cls_id is None else cls_id), (self.sep_token, 3 if sep_id is None else sep_id)],
        )
        self.backend_tokenizer = backend

    # -- what tokembed calls ----------------------------------------------------------------------
    def __call__(
        self,
        text: str | list[str],
        add_special_tokens: bool = True,
        truncation: bool = False,
        max_length: int | None = None,
        return_offsets_mapping: bool = False,
        **_: Any,
    ) -> dict:
        backend, limit = self.backend_tokenizer, max_length if truncation else None
        texts = [text] if isinstance(text, str) else list(text)
        # encode_batch lets go of the GIL (encode holds it: a 15 MB text stalls every thread)
        encodings = [
            truncated_encoding(backend, encoding, limit, self.truncation_side, add_special_tokens)
            for encoding in backend.encode_batch(texts, add_special_tokens=False)
        ]
        if isinstance(text, str):
            return _Encoding(encodings[0], return_offsets_mapping)
        return {"input_ids": [encoding.ids for encoding in encodings]}

    def tokenize(self, text: str) -> list[str]:
        return self.backend_tokenizer.encode_batch([text], add_special_tokens=False)[0].tokens

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        return self.backend_tokenizer.post_processor.num_special_tokens_to_add(pair)

    def convert_tokens_to_ids(self, tokens: str | list[str]) -> int | None | list[int | None]:
        if not isinstance(tokens, str):
            return [self.convert_tokens_to_ids(token) for token in tokens]
        token_id = self.backend_tokenizer.token_to_id(tokens)
        return self.unk_token_id if token_id is None else token_id

    def get_vocab(self) -> dict[str, int]:
        return self.backend_tokenizer.get_vocab(with_added_tokens=True)

    @property
    def added_tokens_decoder(self) -> dict[int, Any]:
        return self.backend_tokenizer.get_added_tokens_decoder()

    @property
    def added_tokens_encoder(self) -> dict[str, int]:
        return {token.content: token_id for token_id, token in self.added_tokens_decoder.items()}

    def add_special_tokens(self, tokens: dict[str, list]) -> int:
        return self.backend_tokenizer.add_special_tokens(list(tokens.get("additional_special_tokens", [])))

    def __len__(self) -> int:
        return self.backend_tokenizer.get_vocab_size(with_added_tokens=True)

    def _id_of(self, token: str | None) -> int | None:
        return None if token is None else self.backend_tokenizer.token_to_id(token)

    @property
    def unk_token_id(self) -> int | None:
        return self._id_of(self.unk_token)

    @property
    def pad_token_id(self) -> int | None:
        return self._id_of(self.pad_token)

    @property
    def mask_token_id(self) -> int | None:
        return self._id_of(self.mask_token)

    @property
    def cls_token_id(self) -> int | None:
        return self._id_of(self.cls_token)

    @property
    def sep_token_id(self) -> int | None:
        return self._id_of(self.sep_token)

    eos_token = None
    eos_token_id = None
    bos_token_id = None
