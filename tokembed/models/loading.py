"""Loading is never silently wrong: every parameter of the module a family builds came from the checkpoint,
and every checkpoint tensor was used, except the names that family lists as ignorable.

Two ways in, one verdict (``require_complete``):

* ``from_pretrained_checked`` — a transformers ``from_pretrained`` with ``output_loading_info=True``; its
  ``missing_keys`` / ``unexpected_keys`` / ``mismatched_keys`` are what transformers could not place.
* ``load_state_checked`` — a module tokembed builds itself from tensors it read (``load_state_dict``
  with ``strict=False`` gives the same two lists).

Either way the module is built in the dtype asked for, every sub-model included (``building_in``, ``in_dtype``).

Ignorable names are regular expressions matched at the start of a name (``re.match``), e.g. ``lm_head\\.``
for a language-model head under a backbone, or ``mtp\\.`` for multi-token-prediction heads; an encoder saved with
its task head (``ModernBertForMaskedLM``, ``ElectraForPreTraining``) has that head class's own tensors ignored by
transformers' own rule (``task_head_tensors``). A remote-code ``ImportError`` (a package the checkpoint's own code
needs, such as ``einops``) is a ``ModelError`` naming the package, never a traceback.
"""

from __future__ import annotations

import logging
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from tokembed.errors import LayoutMismatchError, ModelError

# Heads a token-embedding backbone never runs: language-model and pre-training heads.
HEAD_NAMES = (r"lm_head\.", r"cls\.(predictions|seq_relationship)\.")
# Parameters of a backbone that never reach its last hidden state (BERT's sentence pooler).
UNUSED_PARTS = (r"pooler\.",)
_SHOWN = 5


def task_head_tensors(path: Path, names: Iterable[str] | None = None) -> tuple[str, ...]:
    """Of the checkpoint's tensor ``names`` (None: its weight files'), those of a task head (masked-LM, pre-training,
    classification) that ``AutoModel`` leaves out, as exact patterns for ``ignore_unused``. transformers' rule:
    ``config.json``'s ``architectures`` name a head class of its model (not the base model ``AutoModel`` builds) and
    the tensors carry the base model's prefix (``model.`` for ModernBERT, ``distilbert.``, ``electra.``): those outside
    the prefix that are parameters of that head class are the head's. () otherwise, so a stray tensor of a base-model
    save, one under the prefix, or one the head class does not have (a ColBERT ``linear.weight`` next to
    ``Qwen2ForCausalLM``'s ``lm_head``) is still refused."""
    from tokembed.models.base import read_json
    from tokembed.models.weights import tensor_names

    config = read_json(Path(path) / "config.json") or {}
    found = _head_class(config)
    if found is None:
        return ()
    head_class, prefix = found
    try:
        names = sorted(tensor_names(path) if names is None else names)
    except ModelError:  # an unreadable weight file: the load that follows reports it
        return ()
    outside = [name for name in names if not name.startswith(prefix + ".")]
    if not outside or len(outside) == len(names):
        return ()
    is_head_tensor = _head_tensor_test(head_class, Path(path), prefix)
    heads = [name for name in outside if is_head_tensor(name)]
    if heads:
        logging.getLogger("tokembed").info("%s: %d tensor(s) of the %s head are not used (AutoModel leaves the head "
                                           "out): %s", path, len(heads), config["architectures"][0], _first(heads))
    return tuple(re.escape(name) + r"\Z" for name in heads)


def _head_class(config: dict) -> tuple[Any, str] | None:
    """The transformers head class ``architectures[0]`` names and its base model's prefix, where that class is a
    head of the model ``model_type`` names (not its base class, which ``AutoModel`` builds); None for the base class,
    another name, or remote code."""
    architecture = (config.get("architectures") or [None])[0]
    if not isinstance(architecture, str) or config.get("auto_map"):
        return None
    import transformers
    from transformers import CONFIG_MAPPING, MODEL_MAPPING

    config_class = CONFIG_MAPPING[config["model_type"]] if config.get("model_type") in CONFIG_MAPPING else None
    base = MODEL_MAPPING[config_class] if config_class in MODEL_MAPPING else None
    head = getattr(transformers, architecture, None)
    if base is None or not isinstance(head, type) or head is base or getattr(head, "config_class", None) is not config_class:
        return None
    prefix = getattr(base, "base_model_prefix", "")
    return (head, prefix) if prefix and getattr(head, "base_model_prefix", None) == prefix else None


def _head_tensor_test(head_class: Any, path: Path, prefix: str) -> Callable[[str], bool]:
    """Whether a saved tensor (under the name transformers loads it as) is a parameter or buffer of ``head_class``
    outside its base model, read from the class built on the meta device (no memory, no random weights). A tied
    weight (``lm_head.weight`` sharing the embeddings) is in its state dict, so it counts as the head's. Always False
    where the class cannot be built: the tensors are then refused as unused, by name."""
    try:
        model = _meta_model(head_class, path, {})
        loaded_as = loaded_name(model, None)
    except Exception:  # e.g. a config the head class cannot be built from
        return lambda name: False
    own = {name for name in model.state_dict() if not name.startswith(prefix + ".")}
    return lambda name: name in own or loaded_as(name) in own


def require_complete(
    path: Path,
    missing: Iterable[str],
    unused: Iterable[str],
    ignore_unused: Iterable[str] = (),
    ignore_missing: Iterable[str] = (),
    mismatched: Iterable[Any] = (),
) -> None:
    """Raise ``ModelError`` (exit 4) naming the first missing or unused tensors and the file they are in."""
    missing = [name for name in missing if not matches(name, ignore_missing)]
    unused = [name for name in unused if not matches(name, ignore_unused)]
    mismatched = list(mismatched)
    if not (missing or unused or mismatched):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} parameter(s) of the model are not in the checkpoint "
                     f"({_files(path)}): {_first(sorted(missing))}")
    if unused:
        first = sorted(unused)
        parts.append(f"{len(unused)} checkpoint tensor(s) were not used: {_first(first)}"
                     f" (in {weight_file_of(path, first[0])})")
    if mismatched:
        parts.append(f"{len(mismatched)} tensor(s) have the wrong shape: {_first([str(m) for m in mismatched])}")
    raise LayoutMismatchError(
        f"{path}: the checkpoint does not match the model tokembed builds for it: " + "; ".join(parts),
        hint="this checkpoint's layout is not one this family reads (tokembed models lists the layouts); "
        "loading it would give vectors from weights that were never loaded",
    )


def from_pretrained_checked(
    model_class: Any,
    path: Path,
    ignore_unused: Iterable[str] = (),
    ignore_missing: Iterable[str] = (),
    **kwargs: Any,
):
    """``model_class.from_pretrained(path, **kwargs)``, refused unless every weight landed (see module doc)."""
    from transformers.utils import logging as hf_logging

    from tokembed.models.weights import check_weight_files

    check_weight_files(Path(path))
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # tokembed reports what did not load, once, as one error
    try:
        if kwargs.get("dtype") is not None:  # transformers sets it on declared sub-configs only: on all of them
            kwargs["config"] = in_dtype(kwargs.get("config") or _config_of(model_class, path, kwargs), kwargs["dtype"])
        model, info = model_class.from_pretrained(path, output_loading_info=True, **kwargs)
    except ImportError as exc:
        raise missing_package_error(path, exc) from exc
    except RuntimeError as exc:  # transformers' size-mismatch and weight-conversion errors
        # its message points at a report tokembed keeps off stderr: name the tensors and shapes instead
        require_complete(path, (), (), mismatched=shape_mismatches(model_class, Path(path), kwargs))
        raise ModelError(f"{path}: the checkpoint's tensors do not fit the model: {str(exc)[:2000]}") from exc
    finally:
        hf_logging.set_verbosity(verbosity)
    require_complete(
        path,
        info.get("missing_keys") or (),
        info.get("unexpected_keys") or (),
        ignore_unused,
        ignore_missing,
        info.get("mismatched_keys") or (),
    )
    refuse_aliases(Path(path), loaded_name(model, kwargs.get("key_mapping")))
    return model


def shape_mismatches(model_class: Any, path: Path, kwargs: dict) -> list[str]:
    """Saved tensors whose shape is not that of the parameter ``from_pretrained`` loads them onto, read from the
    weight files' headers against the model built on the meta device (no memory); empty where it cannot be built."""
    from tokembed.models.weights import readable, stored_tensors, weight_files

    try:
        model = _meta_model(model_class, path, kwargs)
    except Exception:  # e.g. a config the model cannot be built from: transformers' own message is kept
        return []
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    loaded_as = loaded_name(model, kwargs.get("key_mapping"))
    wrong = []
    for file in weight_files(path):
        with readable(file):
            stored = stored_tensors(file)
        for name, shape in sorted((name, tensor.shape) for name, tensor in stored.items()):
            target = loaded_as(name)
            if target in expected and shape != expected[target]:
                wrong.append(f"{name} (in {file}): checkpoint {shape}, model {expected[target]}")
    return wrong


def _meta_model(model_class: Any, path: Path, kwargs: dict) -> Any:
    import torch

    remote = {key: kwargs[key] for key in ("trust_remote_code",) if key in kwargs}
    config = kwargs.get("config") or _config_of(model_class, path, kwargs)
    with torch.device("meta"):
        if hasattr(model_class, "_from_config"):  # a model class
            return model_class._from_config(config)
        return model_class.from_config(config, **remote)  # an auto class (remote code)


def _config_of(model_class: Any, path: Path, kwargs: dict) -> Any:
    """The config ``model_class.from_pretrained(path, **kwargs)`` reads."""
    if hasattr(model_class, "config_class"):  # a model class
        return model_class.config_class.from_pretrained(path)
    from transformers import AutoConfig  # an auto class (remote code)

    return AutoConfig.from_pretrained(path, **{key: kwargs[key] for key in ("trust_remote_code",) if key in kwargs})


def in_dtype(config: Any, dtype: Any) -> Any:
    """``config`` with its ``dtype`` and that of every config nested in it, at any depth, set to ``dtype``.

    transformers 5 builds a sub-model (``AutoModel.from_config(config.text_config)``) in its own config's ``dtype``
    where one is set, over torch's default dtype and over ``from_pretrained(dtype=...)`` for a sub-config the
    config class does not declare. Qwen3-VL configs say "bfloat16" in text_config and vision_config: float32 weights
    would land in bfloat16 parameters, rounded for good, whatever dtype the module is moved to afterwards."""
    for each in _configs_in(config):
        each.dtype = dtype
    return config


def _configs_in(config: Any) -> Iterator[Any]:
    from transformers import PretrainedConfig

    yield config
    for value in vars(config).values():
        if isinstance(value, PretrainedConfig):
            yield from _configs_in(value)


@contextmanager
def building_in(dtype: Any, config: Any) -> Iterator[None]:
    """Build a module from ``config`` (``in_dtype``) with every parameter in ``dtype``: no float32 copy of a model
    run in bfloat16, and no stored value rounded through a narrower dtype than the one asked."""
    in_dtype(config, dtype)
    with default_dtype(dtype):
        yield


@contextmanager
def default_dtype(dtype: Any) -> Iterator[None]:
    """torch's default dtype set to ``dtype`` for the block."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def renamed(name: str, key_mapping: dict[str, str]) -> str:
    """The name a saved tensor is loaded under: each ``(pattern, replacement)`` of ``key_mapping`` in order
    replaces its first match, as transformers' ``key_mapping`` does."""
    for pattern, replacement in key_mapping.items():
        found = re.search(pattern, name)
        if found:
            name = name.replace(found.group(0), replacement, 1)
    return name


def loaded_name(model: Any, key_mapping: dict[str, str] | None) -> Callable[[str], str | None]:
    """The parameter name transformers loads a saved tensor under, as ``from_pretrained`` renamed it: the layout's
    ``key_mapping``, transformers' own conversions for the model (such as the legacy ``LayerNorm.gamma`` ->
    ``LayerNorm.weight``) and the base-model prefix. None for a tensor a converter merges with others by design
    (fused or stacked weights). transformers 4.x renames by ``key_mapping`` only."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key
    except ImportError:
        return lambda name: renamed(name, key_mapping or {})
    mapping = get_model_conversion_mapping(model, key_mapping)
    renamings = [entry for entry in mapping if isinstance(entry, WeightRenaming)]
    converters = [entry for entry in mapping if isinstance(entry, WeightConverter)]
    expected = model.state_dict()
    prefix = model.base_model_prefix

    def name_of(saved: str) -> str | None:
        target, merged_by = rename_source_key(saved, renamings, converters, prefix, expected)
        if target not in expected and saved in expected:  # transformers then keeps the saved name
            target, merged_by = rename_source_key(saved, [], [], prefix, expected)
        return None if merged_by is not None else target

    return name_of


def refuse_aliases(path: Path, loaded_as: Callable[[str], str | None]) -> None:
    """Two saved tensors loaded onto one parameter (``loaded_as``: the loader's renaming): transformers keeps one
    copy and reports neither, so which one the vectors come from would depend on the order it reads them."""
    from tokembed.models.weights import tensor_names

    seen: dict[str, str] = {}
    for name in sorted(tensor_names(path)):
        target = loaded_as(name)
        if target is None:
            continue
        if target in seen:
            raise ModelError(f"{path}: tensors {seen[target]} and {name} ({weight_file_of(path, name)}) are both "
                             f"loaded as {target}; which one is the checkpoint's is not knowable")
        seen[target] = name


def load_state_checked(module: Any, state: dict, path: Path, ignore_unused: Iterable[str] = (), assign: bool = False) -> None:
    """``module.load_state_dict(state)`` where ``module``'s every parameter and buffer that is saved must be in
    ``state`` with its shape, and every tensor of ``state`` must land (but the ignorable ones). ``assign``: the
    module's tensors become ``state``'s (a module built on the meta device)."""
    ignore_unused = tuple(ignore_unused)
    kept = {name: tensor for name, tensor in state.items() if not matches(name, ignore_unused)}
    # torch raises a bare RuntimeError on a size mismatch, even with strict=False: refuse it by name first
    expected = module.state_dict()
    wrong = [
        f"{name} (in {weight_file_of(path, name)}): checkpoint {tuple(tensor.shape)}, model {tuple(expected[name].shape)}"
        for name, tensor in kept.items()
        if name in expected and tuple(tensor.shape) != tuple(expected[name].shape)
    ]
    require_complete(path, (), (), mismatched=wrong)
    result = module.load_state_dict(kept, strict=False, assign=assign)
    require_complete(path, result.missing_keys, result.unexpected_keys)


def missing_package_error(path: Path, exc: ImportError) -> ModelError:
    """A remote-code ImportError as a ModelError that names the package to install."""
    name = getattr(exc, "name", None)
    found = re.search(r"packages that were not found in your environment: ([^.\n]+)", str(exc))
    package = found.group(1).strip() if found else name
    what = f"the Python package {package!r}" if package else "a Python package"
    return ModelError(
        f"{path}: the checkpoint's code needs {what}, which is not installed ({exc})",
        hint=f"pip install {package}" if package else None,
    )


def weight_file_of(path: Path, name: str) -> str:
    """The weight file of ``path`` that holds tensor ``name`` (of the files ``weights.weight_files`` reads)."""
    from tokembed.models.weights import names_in

    for file in _weight_files(Path(path)):
        try:
            if name in names_in(file):
                return str(file)
        except Exception:  # an unreadable file is reported elsewhere; this is only for a message
            continue
    return _files(path)


def _weight_files(folder: Path) -> list[Path]:
    from tokembed.models.weights import weight_files

    try:
        return weight_files(folder)
    except ModelError:  # an unreadable index: this is only for a message
        return []


def _files(folder: Path) -> str:
    folder = Path(folder)
    files = [file.name for file in _weight_files(folder)]
    return f"{folder}/{{{', '.join(files)}}}" if files else f"{folder} (no weight files)"


def _first(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def matches(name: str, patterns: Iterable[str]) -> bool:
    return any(re.match(pattern, name) for pattern in patterns)
