"""The lengths sentence-transformers' ``Transformer`` gets for a multi-vector model (the query expansion, the query
cap, the document length), as ``MultiVectorEncoder`` resolves them from PyLate's flat keys in
``config_sentence_transformers.json`` and the Transformer's own ``sentence_bert_config.json``.

The flat keys are only defaults (``_get_module_init_defaults``): a key the Transformer's file saves wins, even as
null (no cut). A flat ``query_length`` is folded into a query expansion built from PyLate's keys, unless the file
has its own ``query_expansion`` or turns expansion off: there it is passed on as the Transformer's cap.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokembed.errors import ModelError

# PyLate's flat ColBERT keys in config_sentence_transformers.json (any of them turns sentence-transformers' query
# expansion on)
PYLATE_MARKERS = ("query_length", "document_length", "query_expansion", "do_query_expansion",
                  "attend_to_expansion_tokens", "attend_to_mask_tokens", "query_prefix", "document_prefix",
                  "skiplist_words")


@dataclass(frozen=True)
class TransformerLengths:
    expansion: dict[str, Any] | None  # the fixed-strategy expansion every query is padded (and cut) to
    width_setting: tuple[Path, str] | None  # (file, key) the expansion width is read from
    expansion_file: Path  # the file whose query_expansion applies (or would)
    query_cap: int | None  # Transformer.query_length: cuts queries without expansion
    document_length: int | None

    @property
    def query_length(self) -> int | None:
        return self.expansion["length"] if self.expansion else self.query_cap


def read_lengths(st_config: dict, flat_file: Path, backbone: dict, backbone_file: Path) -> TransformerLengths:
    """The lengths from ``st_config`` (read from ``flat_file``) and the Transformer's own ``backbone`` settings
    (``backbone_file``); a cap under the expansion width is refused, as sentence-transformers refuses it."""
    expansion_file = backbone_file if "query_expansion" in backbone else flat_file
    expansion = _expansion(st_config, backbone)
    width_setting = None
    if expansion is not None:
        explicit = "query_expansion" in backbone or "query_expansion" in st_config
        width_setting = (expansion_file, "query_expansion length") if explicit else (flat_file, "query_length")
        _check_expansion(expansion, width_setting[0])
    cap, cap_file = _query_cap(st_config, flat_file, backbone, backbone_file)
    if expansion is not None and cap is not None and cap < expansion["length"]:
        raise ModelError(
            f"{cap_file}: query_length {cap} is smaller than the query expansion length {expansion['length']}; "
            "sentence-transformers refuses this checkpoint",
            hint="drop query_length there, or raise it to the expansion length")
    if "document_length" in backbone:
        document_length = _length(backbone["document_length"], backbone_file, "document_length")
    else:
        document_length = _length(st_config.get("document_length"), flat_file, "document_length")
    return TransformerLengths(expansion, width_setting, expansion_file, cap, document_length)


def _expansion(st_config: dict, backbone: dict) -> dict[str, Any] | None:
    """The query-expansion dict, translated from PyLate's flat keys when the save predates it."""
    if "query_expansion" in backbone:
        expansion = backbone["query_expansion"]
    elif "query_expansion" in st_config:
        expansion = st_config["query_expansion"]
    elif not any(key in st_config for key in PYLATE_MARKERS):
        expansion = None
    elif st_config.get("do_query_expansion") is False:
        expansion = None
    else:
        attend = st_config.get("attend_to_expansion_tokens", st_config.get("attend_to_mask_tokens"))
        # the flat key only: MultiVectorEncoder moves it into the expansion; the Transformer's own caps
        length = st_config.get("query_length") or 32
        expansion = {"strategy": "fixed", "attend": bool(attend), "length": length}
    return expansion


def _check_expansion(expansion: Any, source: Path) -> None:
    """What the Transformer refuses at load (``_normalize_query_expansion``), and the strategy tokembed lacks."""
    if not isinstance(expansion, dict):
        raise ModelError(f"{source}: query_expansion {expansion!r} is not an object (or null)")
    unknown = sorted(set(expansion) - {"strategy", "attend", "token", "length"})
    length, attend = expansion.get("length"), expansion.get("attend", False)
    if unknown:
        why = f"has unknown keys {unknown}"
    elif expansion.get("strategy") not in ("fixed", "min"):
        why = f"strategy {expansion.get('strategy')!r} is not 'fixed' or 'min'"
    elif not isinstance(attend, bool):
        why = f"attend {attend!r} is not true or false"
    elif not isinstance(length, int) or isinstance(length, bool) or length < 1:
        why = f"length {length!r} is not a positive number of tokens"
    elif expansion["strategy"] != "fixed":
        raise ModelError(f"{source}: query_expansion strategy {expansion['strategy']!r} is not supported (only 'fixed')")
    else:
        return
    raise ModelError(f"{source}: query_expansion {why}; sentence-transformers refuses this checkpoint")


def _query_cap(st_config: dict, flat_file: Path, backbone: dict, backbone_file: Path) -> tuple[int | None, Path]:
    """The Transformer's ``query_length`` (its own, null included), else PyLate's flat one where
    sentence-transformers passes that on (a ``query_expansion`` in the same file, or expansion turned off)."""
    if "query_length" in backbone:
        return _length(backbone["query_length"], backbone_file, "query_length"), backbone_file
    if "query_expansion" in st_config or st_config.get("do_query_expansion") is False:
        return _length(st_config.get("query_length"), flat_file, "query_length"), flat_file
    return None, backbone_file


def _length(value: Any, source: Path, key: str) -> int | None:
    """A length: a positive number of tokens, or null (the model's default cut). The Transformer also takes 0, as
    a max_length of 0 for the tokenizer: no cut at all, past max_seq_length too; tokembed does not reproduce it."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        return value
    raise ModelError(f"{source}: {key} {value!r} is not a positive number of tokens (or null: the model's default)",
                     hint="0 cuts nothing in sentence-transformers, not even at max_seq_length: set the length wanted")
