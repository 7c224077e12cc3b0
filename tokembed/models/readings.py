"""Where this release reads a checkpoint's files (its weight files, its processor files) otherwise than an earlier
release did.

Stage: models (load). An incremental run carries a row whose content hash is in the index, and the hash is keyed
by the model's fingerprint (its files) and the encoding settings. A release that reads the same files otherwise
(another precedence of two settings files, files it used to ignore) would carry the earlier reading's vectors for
good, where a rebuild gives others. ``readings_of`` names each such reading that applies to a checkpoint; the
names become ``EncodeSettings.reading`` (part of the settings' fingerprint only when there are any), so the first
cron run after the upgrade encodes such an index again, and every other index stays current. Readings that
concern single rows are marks in their content hash instead (``TextEncoder.content_mark``).
"""

from __future__ import annotations

import re
from pathlib import Path

from tokembed.errors import ModelError
from tokembed.models.base import LoadOptions, read_json

# Families whose Qwen-VL processor tokembed builds from its parts (qwen_vl_processor): transformers' own
# processors (colpali-engine layouts, -hf ports) always read the files as transformers does.
QWEN_FROM_PARTS = ("ColQwen3_5", "ColQwen3", "OpsColQwen3Model", "Qwen3VLNemotronEmbedModel")
# Families qwen3_vl_retrieval.load_qwen3_vl builds (the others load through from_pretrained or build no sub-model).
QWEN3_VL_BUILT = ("ColQwen3", "OpsColQwen3Model", "Qwen3VLNemotronEmbedModel")
SUB_MODEL_DTYPE = "sub-models built in the run's dtype"
DTYPE_READINGS = (SUB_MODEL_DTYPE,)  # readings that depend on the dtype the checkpoint is loaded in
# Families whose model transformers' AutoModel builds (remote code it names included); the others build their own
# class, which never runs a config's auto_map code.
AUTO_MODEL_BUILT = ("encoder", "causal-lm", "st-colbert", "bge-m3", "HF_ColBERT", "remote-code-retrieval")
# A stored dtype -> the dtypes that hold each of its values exactly (a sub-model built in one read it unrounded).
_HELD_IN = {"bfloat16": ("bfloat16", "float32", "float64"), "float16": ("float16", "float32", "float64"),
            "float32": ("float32", "float64"), "float64": ("float64",)}
_STORED_NAMES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64"}


def readings_of(family: str, base: Path, adapter: Path | None = None,
                options: LoadOptions | None = None) -> tuple[str, ...]:
    """Every reading of the checkpoint's files (an adapter's over its base), loaded with ``options``, that earlier
    releases did not make."""
    dtype = dtype_reading(family, base, options) if options is not None else ()
    return weights_reading(base) + processor_reading(family, base, adapter) + dtype


def kind_reading(family: str | None, kind: str) -> tuple[str, ...]:
    """Readings that concern one kind of input: colpali-engine ColPali queries are encoded bidirectionally in any
    batch now; earlier releases attended causally to a query padded in its batch (transformers 5.25), so a query
    index they built holds other vectors than a rebuild gives."""
    return ("ColPali queries: all-prefix token type ids",) if family == "ColPali" and kind == "query" else ()


def weights_reading(path: Path) -> tuple[str, ...]:
    """Earlier releases took a folder's safetensors files of any name before ``pytorch_model.bin``, and read every
    one of them in name order (a later file's tensor over an earlier's); transformers (and now tokembed) reads
    ``model.safetensors`` (or its index's files), else ``pytorch_model.bin``."""
    for folder in (path, *(sub for sub in sorted(path.iterdir()) if sub.is_dir())):
        named = (folder / "model.safetensors").exists() or (folder / "model.safetensors.index.json").exists()
        others = any(folder.glob("*.safetensors")) and any(folder.glob("pytorch_model*.bin"))
        if (others and not named) or (named and _stray_copy_read(folder)):
            return ("weight files by the reference's names",)
    return ()


def _stray_copy_read(folder: Path) -> bool:
    """Whether a safetensors file beside the reference's files holds one of their tensors and comes later in name
    order (``model.safetensors`` and ``other.safetensors``): earlier releases read its copy of the tensor."""
    from tokembed.models.weights import safetensors_header, weight_files

    every = sorted(file for file in folder.glob("*.safetensors") if file.is_file())
    try:
        chosen = set(weight_files(folder))
        if not chosen or set(every) <= chosen:
            return False
        headers = {file: safetensors_header(file) for file in every}
    except (OSError, ValueError, ModelError):  # an unreadable file or index: earlier releases failed on it too (no index to read again)
        return False
    last = {name: file for file in every for name in headers[file]}  # the copy an earlier release kept
    return any(last[name] not in chosen for file in chosen if file in headers for name in headers[file])


def dtype_reading(family: str, path: Path, options: LoadOptions) -> tuple[str, ...]:
    """Releases before ``loading.building_in`` built a sub-model in the dtype its sub-config names (Qwen3-VL configs
    say "bfloat16" in text_config and vision_config), not in the run's: ``load_qwen3_vl``'s families copied the
    stored weights into it, rounded, and then into the run's dtype; ``from_pretrained`` kept a sub-model whose
    config a remote-code config class does not declare in that dtype. Marked only where that gave other vectors."""
    from tokembed.models.st_layout import read_modules, transformer_folder

    if family in QWEN3_VL_BUILT:
        folder = path
    elif family in AUTO_MODEL_BUILT and options.trust_remote_code:  # remote code runs only when trusted
        folder = transformer_folder(path, read_modules(path))
    else:  # no other family built a sub-model in another dtype
        return ()
    config = read_json(folder / "config.json") or {}
    named = {dtype for sub in config.values() if isinstance(sub, dict) for dtype in _dtypes_named(sub)} - {options.dtype}
    if not named:
        return ()
    if family in QWEN3_VL_BUILT:
        stored = _stored_dtypes(folder)
        rounded = any(sub not in _HELD_IN.get(kept, ()) for sub in named for kept in stored)
        return (SUB_MODEL_DTYPE,) if rounded else ()
    remote = "AutoConfig" in (config.get("auto_map") or {})
    return (SUB_MODEL_DTYPE,) if remote and _built_in_other_dtypes(folder, options.dtype) else ()


def _dtypes_named(config: dict) -> set[str]:
    """The dtypes a (sub-)config in config.json and the configs nested in it name ("dtype", earlier "torch_dtype")."""
    named = {config[key] for key in ("dtype", "torch_dtype") if isinstance(config.get(key), str)} - {"auto"}
    return named.union(*(_dtypes_named(sub) for sub in config.values() if isinstance(sub, dict)))


def _stored_dtypes(folder: Path) -> set[str]:
    """The dtypes the checkpoint's floating tensors are stored in."""
    from tokembed.models.weights import stored_tensors, weight_files

    stored = (tensor.dtype for file in weight_files(folder) for tensor in stored_tensors(file).values() if tensor.floating)
    return {_STORED_NAMES.get(dtype, dtype.removeprefix("torch.")) for dtype in stored}


def _built_in_other_dtypes(folder: Path, dtype: str) -> bool:
    """Whether ``from_pretrained(folder, dtype=dtype)`` as earlier releases called it (the config as read: the dtype
    set on it and the sub-configs its class declares) builds a parameter in another dtype; built on the meta device.
    A model that cannot be built so is taken as built otherwise (one encoding again, never vectors mixed)."""
    import torch
    from transformers import AutoConfig, AutoModel

    from tokembed.models.base import torch_dtype

    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
        with torch.device("meta"):
            model = AutoModel.from_config(config, dtype=torch_dtype(dtype), trust_remote_code=True)
    except Exception:  # remote code that does not build on the meta device
        return True
    return any(p.dtype != torch_dtype(dtype) for p in model.parameters() if p.is_floating_point())


def processor_reading(family: str, base: Path, adapter: Path | None = None) -> tuple[str, ...]:
    """The readings of the processor files of ``base`` (and an adapter's over it) that earlier releases did not
    make, for a checkpoint of ``family``; () for almost every checkpoint."""
    from tokembed.models.processor_overlay import has_processor_files

    marks = []
    adapted = adapter is not None and has_processor_files(adapter)
    if family in QWEN_FROM_PARTS:
        if adapted:
            marks.append("an adapter's processor files")  # earlier: the base's only
        if any(_nested_and_legacy_differ(folder) for folder in (base, adapter) if folder is not None):
            marks.append("processor_config.json's nested settings first")  # earlier: the legacy files first
        folder = adapter if adapted else base
        if family == "ColQwen3" and _empty_saved_prompt(folder):
            marks.append("empty saved prompts kept")  # earlier: replaced by the defaults
        if family == "ColQwen3_5" and _video_settings_added(folder):
            marks.append("video sampling and size settings")  # earlier: ignored
    elif adapted and _overlay_changed(base, adapter):
        marks.append("an adapter's processor files by group")  # earlier: file by file over the base's
    return tuple(marks)


def _nested_and_legacy_differ(folder: Path) -> bool:
    nested = read_json(folder / "processor_config.json")
    nested = nested if isinstance(nested, dict) else {}
    for section, legacy_file in (("image_processor", "preprocessor_config.json"), ("video_processor", "video_preprocessor_config.json")):
        legacy = read_json(folder / legacy_file)
        if nested.get(section) is not None and legacy and legacy != nested[section]:
            return True
    return False


def _empty_saved_prompt(folder: Path) -> bool:
    saved = read_json(folder / "processor_config.json")
    return isinstance(saved, dict) and "" in (saved.get("visual_prompt_prefix"), saved.get("visual_prompt_suffix"))


def _video_settings_added(folder: Path) -> bool:
    from tokembed.models.qwen_vl_processor import read_processor_settings

    _image, video = read_processor_settings(folder)
    video = video or {}
    return (video.get("do_sample_frames") is False or video.get("num_frames") is not None
            or bool(video.get("cap_pixels_per_frame")) or video.get("do_resize") is False)


def _overlay_changed(base: Path, adapter: Path) -> bool:
    """Whether the group-by-group overlay holds other files than the earlier file-by-file one did, among the files
    the processor reads: colpali-engine's processors use no chat template, and a fast tokenizer whose
    ``tokenizer.json`` the adapter ships reads no vocabulary, merges or SentencePiece model."""
    from tokembed.models.processor_overlay import GROUPS, overlaid_files

    unread = re.compile(r"^chat_template.*$" + (r"|^(vocab\.(json|txt)|merges\.txt|.*\.model)$" if (adapter / "tokenizer.json").is_file() else ""))
    earlier = {p.name: p for p in base.iterdir() if p.is_file() and not p.name.endswith((".safetensors", ".bin"))}
    earlier.update({p.name: p for p in adapter.iterdir() if p.is_file() and any(group.match(p.name) for group in GROUPS)})
    now = overlaid_files(base, adapter)
    return {n: f for n, f in now.items() if not unread.match(n)} != {n: f for n, f in earlier.items() if not unread.match(n)}
