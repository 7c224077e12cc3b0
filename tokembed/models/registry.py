"""The model registry: ``detect()`` reads what a checkpoint says and returns a family key; ``FAMILIES``
maps each key to the class that loads it, imported on first use (as vLLM's model registry does).

Text families load a ``TokenModel``; vision retrieval families (keyed by their transformers architecture,
plus ``remote-code-retrieval``) load a ``vision.VisionModel``, whose ``make_encoder(settings)`` gives the
encoder.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tokembed.errors import DeviceError, LayoutMismatchError, ModelError, TokembedError, UnsupportedModelError
from tokembed.models.base import LoadOptions, TokenModel, read_json
from tokembed.open_files import refuse_out_of_descriptors

if TYPE_CHECKING:
    from tokembed.models.vision import VisionModel

FAMILIES: dict[str, str] = {
    "HF_ColBERT": "tokembed.models.stanford:StanfordColBERT",
    "jina-colbert": "tokembed.models.jina_colbert:JinaColBERT",
    "st-colbert": "tokembed.models.st_colbert:STColBERT",
    "bge-m3": "tokembed.models.bge_m3:BgeM3",
    "encoder": "tokembed.models.raw:RawEncoder",
    "causal-lm": "tokembed.models.raw:RawDecoder",
    "ColPaliForRetrieval": "tokembed.models.colpali:ColPali",
    "ColQwen2ForRetrieval": "tokembed.models.colqwen2:ColQwen2",
    "ColModernVBertForRetrieval": "tokembed.models.colmodernvbert:ColModernVBert",
    "ColPali": "tokembed.models.colpali:ColPaliEngine",
    "ColQwen2": "tokembed.models.colqwen2:ColQwen2Engine",
    "ColQwen2_5": "tokembed.models.colqwen2:ColQwen2_5Engine",
    "ColIdefics3": "tokembed.models.colidefics3:ColIdefics3",
    "ColQwen3": "tokembed.models.colqwen3:TomoroColQwen3",
    "ColQwen3Engine": "tokembed.models.colqwen3_engine:ColQwen3Engine",
    "OpsColQwen3Model": "tokembed.models.colqwen3:OpsColQwen3",
    "Qwen3VLNemotronEmbedModel": "tokembed.models.nemotron:NemotronColEmbed",
    "ColQwen3_5": "tokembed.models.colqwen3_5:ColQwen3_5",
    "remote-code-retrieval": "tokembed.models.remote_code:RemoteCodeRetrieval",
    "peft-lora": "tokembed.models.adapters:PeftLora",
}
# Vision retrieval architectures transformers implements itself (no remote code needed).
VISION_ARCHITECTURES = ("ColPaliForRetrieval", "ColQwen2ForRetrieval", "ColModernVBertForRetrieval")
# Architectures colpali-engine saves that tokembed composes from transformers' building blocks (no remote code).
NATIVE_ARCHITECTURES = ("ColQwen3_5", "ColPali", "ColQwen2", "ColQwen2_5", "ColIdefics3")
# Families whose checkpoints name their own code (auto_map) but that tokembed loads natively, by model_type.
NATIVE_MODEL_TYPES = {"colqwen3": "ColQwen3", "ops_colqwen3": "OpsColQwen3Model", "qwen3_vl_nemotron_embed": "Qwen3VLNemotronEmbedModel"}
# Of those, the architectures whose name is the family's alone: vLLM picks the family by it, whatever the model_type
# (a re-save under transformers' own "qwen3_vl" would otherwise read as a plain encoder, without the family's semantics).
NATIVE_ARCHITECTURE_NAMES = ("OpsColQwen3Model", "Qwen3VLNemotronEmbedModel")
# Architecture names vLLM serves for token embeddings that tokembed does not run under that name, and why.
_PUBLISHED_LAYOUT = ("is the name vLLM's --hf-overrides gives a published ColBERT checkpoint; tokembed reads that "
                     "checkpoint as it is published (PyLate's modules.json + Dense folders: st-colbert; jina-colbert-v2's "
                     "HF_ColBERT: jina-colbert), so point --model at it unchanged")
VLLM_ONLY_ARCHITECTURES = {
    "ColBERTModernBertModel": _PUBLISHED_LAYOUT,
    "ColBERTLfm2Model": _PUBLISHED_LAYOUT,
    "ColBERTJinaRobertaModel": _PUBLISHED_LAYOUT,
    "JinaForRanking": "is a listwise reranker (jina-reranker-v3), not a multi-vector retriever tokembed supports",
    "VoyageQwen3BidirectionalEmbedModel": "is not a family tokembed supports yet",
}


@dataclass(frozen=True)
class FamilyInfo:
    key: str
    where: str
    detected_by: str
    needs: str
    modes: str
    reference: str


def family_class(key: str):
    try:
        module_name, class_name = FAMILIES[key].split(":")
    except KeyError:
        raise UnsupportedModelError(f"unknown model family {key!r}; known: {', '.join(FAMILIES)}") from None
    return getattr(importlib.import_module(module_name), class_name)


def is_image_family(key: str | None) -> bool:
    """Whether the family ``key`` (as a manifest records it) loads a ``VisionModel``: its documents are images."""
    return key in FAMILIES and str(getattr(family_class(key), "modes", "")).startswith("vision")


def describe_families() -> list[FamilyInfo]:
    infos = []
    for key, where in FAMILIES.items():
        cls = family_class(key)
        modes = getattr(cls, "modes", None) or ("colbert, raw" if key in ("HF_ColBERT", "st-colbert") else "raw")
        infos.append(FamilyInfo(key, where, cls.detected_by, cls.needs, modes, getattr(cls, "reference", "")))
    return infos


def detect(path: Path, trust_remote_code: bool = False) -> str:
    """Return the family key for the checkpoint folder, or raise saying what was found."""
    from tokembed.models.bge_m3 import is_bge_m3
    from tokembed.models.st_colbert import incomplete_st_colbert, is_st_colbert
    from tokembed.models.st_layout import check_vision_modules, read_modules, transformer_folder

    if (Path(path) / "adapter_config.json").is_file():
        return "peft-lora"  # a PEFT adapter: its base is detected on its own (adapters.load_adapted)
    config = read_json(transformer_folder(path, read_modules(path)) / "config.json")
    architectures = (config or {}).get("architectures") or []
    if "HF_ColBERT" in architectures:
        from tokembed.models.jina_colbert import is_jina_colbert

        # Jina's flash XLM-R weights never go to the plain Stanford (BERT / XLM-R) loader.
        return "jina-colbert" if is_jina_colbert(path, config or {}) else "HF_ColBERT"
    vision = _vision_family(path, config or {}, architectures, trust_remote_code)
    if vision is not None:
        check_vision_modules(path, vision)  # a vision loader reads no module tree: refuse one that would be skipped
        return vision
    if problem := incomplete_st_colbert(path):
        raise UnsupportedModelError(problem)
    if is_st_colbert(path):
        return "st-colbert"
    refuse_vllm_only_architecture(path, architectures)
    if config is None:
        raise UnsupportedModelError(_found(path, "no config.json"), hint="tokembed models lists the supported layouts")
    if is_bge_m3(path, architectures):
        return "bge-m3"
    if config.get("auto_map") and not trust_remote_code and not _known_model_type(config):
        raise UnsupportedModelError(
            f"{path}: model_type {config.get('model_type')!r} ships its own code (auto_map) and "
            "--trust-remote-code is off",
            hint="pass --trust-remote-code if you trust this checkpoint's code",
        )
    if any(arch.endswith("ForCausalLM") for arch in architectures):
        return "causal-lm"
    if _known_model_type(config) or (config.get("auto_map") and trust_remote_code):
        return "encoder"
    raise UnsupportedModelError(
        _found(path, f"model_type {config.get('model_type')!r}, architectures {architectures or 'none'}"),
        hint="tokembed models lists the supported layouts",
    )


def _vision_family(path: Path, config: dict, architectures: list[str], trust_remote_code: bool) -> str | None:
    """The vision retrieval family of a checkpoint, None if it is not one; refuses remote code without the flag."""
    from tokembed.models.remote_code import is_remote_vision

    for arch in architectures:
        if arch in VISION_ARCHITECTURES or arch in NATIVE_ARCHITECTURES:
            return arch
    if config.get("model_type") in NATIVE_MODEL_TYPES:  # before the remote-code path: never their auto_map
        return NATIVE_MODEL_TYPES[config["model_type"]]
    for arch in architectures:
        if arch in NATIVE_ARCHITECTURE_NAMES:
            return arch
    if "ColQwen3" in architectures:  # Tomoro's is model_type "colqwen3" (above); colpali-engine's saves a Qwen3VLConfig
        if config.get("model_type") == "qwen3_vl":
            return "ColQwen3Engine"
        raise UnsupportedModelError(
            f"{path}: architecture ColQwen3 with model_type {config.get('model_type')!r}: tokembed reads Tomoro's "
            "ColQwen3 (model_type 'colqwen3') and colpali-engine's (model_type 'qwen3_vl'), not this layout",
            hint="tokembed models lists the supported families",
        )
    if is_remote_vision(path, config):
        if not trust_remote_code:
            raise UnsupportedModelError(
                f"{path}: {architectures[0]} is a vision retrieval model that ships its own code (auto_map) "
                "and --trust-remote-code is off",
                hint="pass --trust-remote-code if you trust this checkpoint's code",
            )
        return "remote-code-retrieval"
    retrieval = [arch for arch in architectures if arch.endswith("ForRetrieval")]
    if retrieval:
        raise UnsupportedModelError(
            f"{path}: {retrieval[0]} is a vision retrieval model tokembed does not know "
            f"(known: {', '.join(VISION_ARCHITECTURES)}; others need their own code: auto_map + --trust-remote-code)",
            hint="tokembed models lists the supported families",
        )
    return None


def refuse_vllm_only_architecture(path: Path, architectures: list[str]) -> None:
    for arch in architectures:
        if arch in VLLM_ONLY_ARCHITECTURES:
            raise UnsupportedModelError(f"{path}: {arch} {VLLM_ONLY_ARCHITECTURES[arch]}",
                                        hint="tokembed models lists the supported families")


def _known_model_type(config: dict) -> bool:
    if config.get("model_type") == "bert":  # the common case, without importing transformers (~2 s)
        return True
    from transformers import CONFIG_MAPPING

    return config.get("model_type") in CONFIG_MAPPING


def _found(path: Path, what: str) -> str:
    files = sorted(p.name for p in path.iterdir())[:12] if path.is_dir() else []
    return f"{path}: unknown checkpoint layout ({what}; files: {', '.join(files) or 'none'})"


def load_model(path: Path, options: LoadOptions | None = None, base: Path | None = None) -> "TokenModel | VisionModel":
    """Load the checkpoint at ``path``; a PEFT adapter there is applied over ``base`` and merged
    (``base`` None: the adapter's ``base_model_name_or_path``)."""
    from tokembed.models.readings import readings_of
    from tokembed.models.token_ids import check_token_ids_fit

    options = options or LoadOptions()
    with loading_errors(path):
        if base is not None and (Path(path) / "adapter_config.json").is_file():
            from tokembed.models.adapters import load_adapted

            model = load_adapted(Path(path), Path(base), options)
        else:
            key = detect(path, options.trust_remote_code)
            model = load_as_family(key, path, options)
            model.reading = readings_of(key, Path(path), options=options)
        check_query_processing(model)
    check_tokenizer_vocabulary(path, model.tokenizer)
    check_token_ids_fit(model)
    with out_of_memory_is_a_device_error(path, options.device):
        return model.to(options.device)


def load_as_family(key: str, path: Path, options: LoadOptions):
    """Load with the detected family; a layout it does not read, or what a library raises while the family builds
    the model (a config it cannot build from: ``ColQwen2_5`` over a Qwen2-VL config), is refused naming the family
    and what it was detected from (neither the tensors nor the library's error say which family was tried)."""
    from tokembed.engine.runner import is_out_of_memory

    try:
        return family_class(key).load(path, options)
    except LayoutMismatchError as exc:
        exc.hint = f"tokembed read it as {_family_read(key, path)}; {exc.hint}"
        raise
    except TokembedError:
        raise
    except Exception as exc:
        if is_out_of_memory(exc):
            raise  # a device error (out_of_memory_is_a_device_error)
        refuse_out_of_descriptors(path, exc)
        raise ModelError(f"{path}: cannot load the checkpoint as {_family_read(key, path)}: "
                         f"{type(exc).__name__}: {str(exc)[:2000]}") from exc


def _family_read(key: str, path: Path) -> str:
    """The family and what in ``config.json`` it was detected from."""
    config = read_json(Path(path) / "config.json") or {}
    return f"family {key} (config.json architectures {config.get('architectures')}, model_type {config.get('model_type')!r})"


@contextmanager
def loading_errors(path: Path) -> Iterator[None]:
    """What a checkpoint's files make a library raise while it is built (a config transformers' validators
    refuse, an assertion in a model's constructor, a tokenizer without its settings) is a model error naming the
    checkpoint (exit 4), not a traceback. Running out of memory is a device error (``out_of_memory_is_a_device_error``)."""
    try:
        with out_of_memory_is_a_device_error(path, "cpu"):
            yield
    except TokembedError:
        raise
    except Exception as exc:
        refuse_out_of_descriptors(path, exc)
        raise ModelError(f"{path}: cannot load the checkpoint ({type(exc).__name__}: {str(exc)[:2000]})") from exc


@contextmanager
def out_of_memory_is_a_device_error(path: Path, device: str) -> Iterator[None]:
    """Out of memory while the model is built (on the CPU) or moved to its device: exit 9 naming the checkpoint and
    the device, not a traceback (nor a model error: the checkpoint is fine)."""
    from tokembed.engine.runner import is_out_of_memory

    try:
        yield
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        raise DeviceError(f"{path}: out of memory loading the model on {device} ({type(exc).__name__}: {str(exc)[:300]})",
                          hint="free memory, or load it in half precision (--dtype bfloat16 or float16)") from exc


def check_query_processing(model) -> None:
    """A vision model's processor must process a query: without its tokenizer settings (no pad or bos token, no
    query augmentation token) it fails on every row, and should fail here, as a model error, before any work."""
    process_queries = getattr(getattr(model, "processor", None), "process_queries", None)
    if not callable(process_queries):
        return
    try:
        process_queries(["a query"])
    except Exception as exc:
        raise ModelError(f"{model.path}: its processor cannot process a query ({type(exc).__name__}: {str(exc)[:500]})",
                         hint="are its tokenizer files complete (tokenizer_config.json, special_tokens_map.json)?") from exc


def check_tokenizer_vocabulary(path: Path, tokenizer) -> None:
    """Refuse a tokenizer that holds nothing but its special tokens. transformers builds one, without an error,
    from a folder with no tokenizer files: every word would become [UNK] (or no token at all), and the run
    would write an index of them."""
    try:
        vocabulary, special = len(tokenizer.get_vocab()), len(set(tokenizer.all_special_tokens))
    except (AttributeError, TypeError, NotImplementedError):
        return  # not a transformers tokenizer (tokembed's own reads tokenizer.json or vocab.txt, or fails)
    if vocabulary <= special:
        raise ModelError(f"{path}: its tokenizer holds no vocabulary ({vocabulary} token(s), all special): the "
                         "tokenizer files (tokenizer.json, vocab.txt, tokenizer.model, vocab.json + merges.txt, ...) "
                         "are missing")
