"""PEFT (LoRA) adapters: a folder holding ``adapter_config.json`` over a base checkpoint, applied exactly or refused.

Stage: models. In: the adapter folder and its resolved base (``resolve.resolve_model``: ``base_model_name_or_path``
or ``--base-model``). Out: the base family's model with the adapter applied by ``peft`` and merged (``encode``),
or left unmerged (``serve --lora-modules``).

Never silently wrong (as ``loading.py`` for bases):

* every tensor of ``adapter_model.safetensors`` must be named under peft's ``base_model.model.`` (the only names peft
  loads) and land on a module of the base. Saved names are read through the base family's ``TensorNames`` (the
  published ``model.layers.*``, what peft writes against transformers 5, ``language_model.*``, vision-tower modules
  included), or, over a text backbone, with the prefix its loader strips from the base's weights (``backbone_names``),
  so the adapter's modules are the ones its tensors name, not the ones its ``target_modules`` regex would match
  here; a tensor naming no module is exit 4;
* ranks are read from the tensors and must agree with ``r`` / ``rank_pattern``; ``lora_alpha`` and
  ``alpha_pattern`` are resolved per module with peft's own pattern rule on the saved names;
* options peft cannot apply here exactly (``bias`` other than ``none``, parameter targets, layer replication,
  other adapter types) are refused by name. DoRA, rsLoRA, LoRA biases and ``modules_to_save`` are peft's.

Processor and tokenizer files in the adapter folder win over a vision base's; a text base's tokenizer is its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tokembed.errors import ModelError
from tokembed.models.adapter_files import (
    ADAPTER_CONFIG, check_supported, is_adapter, read_adapter_config, read_adapter_tensors, require_peft, weights_file,
)

_LORA_PARTS = re.compile(r"^(?P<module>.+?)\.(?P<part>lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)"
                         r"(?:\.weight|\.bias)?$")
_PEFT_PREFIX = "base_model.model."


# -- the adapter's tensors, placed on the base's modules ---------------------------------------------------


@dataclass(frozen=True)
class ModulePlan:
    saved: str  # the module name as saved (after base_model.model.)
    target: str  # the module of the model tokembed built
    rank: int
    alpha: float


def plan_modules(module: Any, tensors: dict, config: dict, rename, path: Path) -> tuple[list[ModulePlan], dict, dict]:
    """Place every tensor: (LoRA modules, peft state dict in tokembed's names, modules_to_save saved -> target).

    ``rename``: the base family's saved-name -> module-name function (``TensorNames.rename``, ``backbone_names``;
    identity for transformers-native vision bases).
    """
    from peft.utils.other import get_pattern_key

    saved_to_save = [name for name in (config.get("modules_to_save") or [])]
    modules = {name for name, _ in module.named_modules()}
    placed: dict[str, Any] = {}
    lora: dict[str, dict[str, Any]] = {}
    to_save: dict[str, str] = {}
    for name in sorted(tensors):
        _require_peft_prefix(name, path)
        rest = name[len(_PEFT_PREFIX):]
        found = _LORA_PARTS.match(rest)
        saved_module = found.group("module") if found else rest.rpartition(".")[0]
        target = rename(saved_module)
        keep = found is not None or any(saved_module == m or saved_module.endswith("." + m) for m in saved_to_save)
        if not keep or target not in modules:
            why = "names no module of the base" if keep else "is neither a LoRA tensor nor in modules_to_save"
            raise ModelError(
                f"{weights_file(path)}: adapter tensor {name!r} {why} (read as {target!r}); "
                f"the adapter does not fit this base ({_base_hint(config)})",
                hint="check the adapter's base (--base-model) and its tensor names",
            )
        suffix = rest[len(saved_module):]
        if _PEFT_PREFIX + target + suffix in placed:  # two namings of one module: which one peft applies depends on the modules
            raise ModelError(f"{weights_file(path)}: adapter tensor {name!r} and another saved name are both read as "
                             f"{target + suffix!r}; tokembed refuses to choose between them",
                             hint="save the adapter with one naming of its modules")
        placed[_PEFT_PREFIX + target + suffix] = tensors[name]
        if found:
            lora.setdefault(saved_module, {})[found.group("part")] = tensors[name]
        else:
            to_save[saved_module] = target
    _check_saved_modules_present(saved_to_save, set(to_save), modules, path)
    plans = []
    for saved_module, parts in sorted(lora.items()):
        a = parts.get("lora_A", parts.get("lora_embedding_A"))
        if a is None or ("lora_B" not in parts and "lora_embedding_B" not in parts):
            raise ModelError(f"{weights_file(path)}: module {saved_module!r} has only part of its LoRA pair ({sorted(parts)})")
        rank = int(a.shape[0])
        rank_pattern = config.get("rank_pattern") or {}
        expected = rank_pattern.get(get_pattern_key(list(rank_pattern), saved_module), config.get("r"))
        if expected is not None and int(expected) != rank:
            raise ModelError(f"{weights_file(path)}: module {saved_module!r} has rank {rank} but adapter_config.json "
                             f"says {expected} (r / rank_pattern)")
        alpha_pattern = config.get("alpha_pattern") or {}
        alpha = alpha_pattern.get(get_pattern_key(list(alpha_pattern), saved_module), config.get("lora_alpha", 8))
        plans.append(ModulePlan(saved_module, rename(saved_module), rank, float(alpha)))
    return plans, placed, to_save


def backbone_names(backbone: Any):
    """Saved module name -> module of a text family's ``backbone``. Its loader reads the base's weights saved under a
    head class too (``model.`` of a ``*ForCausalLM`` or ``ModernBertForMaskedLM``, ``bert.`` of ``BertForMaskedLM`` or
    ``HF_ColBERT``, ``roberta.``): the backbone's ``base_model_prefix``, which transformers strips on load. An
    adapter saved over that class names its modules under the same prefix (peft's ``CAUSAL_LM`` ones included)."""
    prefix = getattr(backbone, "base_model_prefix", "") or ""
    if not prefix or prefix in dict(backbone.named_children()):  # a prefix that is a module of its own is kept
        return lambda name: name
    return lambda name: name.removeprefix(prefix + ".")


def _require_peft_prefix(name: str, path: Path) -> None:
    """peft saves every tensor under ``base_model.model.`` and loads only those: ``PeftModel.from_pretrained`` warns of
    missing adapter keys and runs without a tensor named otherwise, so applying it would not be peft's forward."""
    if not name.startswith(_PEFT_PREFIX):
        raise ModelError(f"{weights_file(path)}: adapter tensor {name!r} lacks peft's prefix {_PEFT_PREFIX!r}: peft "
                         "does not load such a tensor (it runs the base without it), so tokembed refuses the adapter",
                         hint=f"save it with peft's save_pretrained, or name its tensors {_PEFT_PREFIX}<module>...")


def _check_saved_modules_present(listed: list[str], saved: set[str], modules: set[str], path: Path) -> None:
    """A ``modules_to_save`` entry that names a module of the base must have its trained copy in the file: without
    it peft only warns and runs the base's module, which is not the adapter that was trained."""
    within = lambda module, name: module == name or module.endswith("." + name)  # noqa: E731
    for name in listed:
        if any(within(module, name) for module in modules) and not any(within(module, name) for module in saved):
            raise ModelError(f"{weights_file(path)}: adapter_config.json lists {name!r} in modules_to_save, but the "
                             "file holds no tensor of it (the base's untrained copy would be used)")


def apply_adapter(module: Any, path: Path, rename=lambda name: name, merge: bool = True) -> Any:
    """``module`` with the adapter at ``path`` applied by peft: merged (a plain module), or the ``PeftModel``."""
    require_peft()
    from peft import get_peft_model, set_peft_model_state_dict

    lora_config, state = _plan_adapter(module, path, rename)
    try:
        peft_model = get_peft_model(module, lora_config, autocast_adapter_dtype=False)
        result = set_peft_model_state_dict(peft_model, state)
    except (ValueError, RuntimeError, KeyError) as exc:
        raise ModelError(f"{path}: peft could not apply the adapter: {exc}") from exc
    _require_landed(path, result, "default")  # peft's name for a single adapter
    peft_model.eval()
    return peft_model.merge_and_unload() if merge else peft_model


def attach_unmerged(module: Any, adapters: list[tuple[str, Path]], rename=lambda name: name) -> Any:
    """``module`` with several named adapters injected by peft, unmerged (``serve --lora-modules``).

    Every adapter is planned against the untouched module first (same checks as ``apply_adapter``); the
    returned ``PeftModel`` wraps ``module`` itself, so run it through ``AdapterView``s, which pick the adapter
    (or none, for the base) before each forward.
    """
    require_peft()
    from peft import get_peft_model, set_peft_model_state_dict

    planned = [(name, path, *_plan_adapter(module, path, rename)) for name, path in adapters]
    peft_model = None
    for name, path, config, state in planned:
        try:
            if peft_model is None:
                peft_model = get_peft_model(module, config, adapter_name=name, autocast_adapter_dtype=False)
            else:
                peft_model.add_adapter(name, config)
            result = set_peft_model_state_dict(peft_model, state, adapter_name=name)
        except (ValueError, RuntimeError, KeyError) as exc:
            raise ModelError(f"{path}: peft could not apply the adapter: {exc}") from exc
        _require_landed(path, result, name)
    return peft_model.eval()


def _plan_adapter(module: Any, path: Path, rename) -> tuple[Any, dict]:
    """The adapter at ``path`` checked and planned against ``module``: (its exact ``LoraConfig``, its state)."""
    from peft import LoraConfig

    config = read_adapter_config(path)
    check_supported(path, config)
    tensors = read_adapter_tensors(path)
    if not tensors:
        raise ModelError(f"{weights_file(path)}: the adapter holds no tensors")
    plans, state, to_save = plan_modules(module, tensors, config, rename, path)
    try:
        lora_config = LoraConfig.from_pretrained(str(path))
    except (ValueError, TypeError) as exc:  # e.g. layers_to_transform with a regular-expression target_modules
        raise ModelError(f"{Path(path) / ADAPTER_CONFIG}: peft refuses this LoRA config ({exc})") from exc
    _check_peft_would_apply(path, lora_config, plans)
    return _exact_config(lora_config, plans, to_save), state


def _check_peft_would_apply(path: Path, config: Any, plans: list[ModulePlan]) -> None:
    """tokembed applies exactly the modules the adapter's tensors name; peft applies those its config's
    target_modules, exclude_modules and layers_to_transform select. Where they differ the results would too."""
    from peft.tuners.tuners_utils import check_target_module_exists

    left_out = [plan.saved for plan in plans if not check_target_module_exists(config, plan.saved)]
    if left_out:
        raise ModelError(f"{Path(path) / ADAPTER_CONFIG}: it holds tensors for {left_out[:3]}, which its target_modules / "
                         "exclude_modules / layers_to_transform leave out: peft would not apply them")


def _require_landed(path: Path, result: Any, adapter_name: str) -> None:
    """Every tensor of adapter ``adapter_name`` found its module (peft's load result says which did not)."""
    missing = [
        key for key in result.missing_keys
        if f".{adapter_name}." in key and ("lora_" in key or "modules_to_save" in key)
    ]
    if result.unexpected_keys or missing:
        raise ModelError(f"{weights_file(path)}: adapter tensors did not all land (unexpected: "
                         f"{sorted(result.unexpected_keys)[:3]}, missing: {sorted(missing)[:3]})")


def adapter_view(peft_model: Any, name: str | None) -> Any:
    """A module running ``peft_model``'s wrapped model with adapter ``name`` active (None: the base alone)."""
    from torch import nn

    class AdapterView(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.peft_model = peft_model

        def forward(self, *args, **kwargs):
            inner = self.peft_model.base_model.model
            if name is None:
                with self.peft_model.disable_adapter():
                    return inner(*args, **kwargs)
            self.peft_model.base_model.set_adapter(name)
            return inner(*args, **kwargs)

        def get_input_embeddings(self):
            return self.peft_model.base_model.model.get_input_embeddings()

    return AdapterView()


def _exact_config(config: Any, plans: list[ModulePlan], to_save: dict[str, str]) -> Any:
    """The adapter's LoraConfig aimed at exactly the modules its tensors name, with their ranks and alphas."""
    exact = lambda name: "^" + re.escape(name)  # noqa: E731  (peft matches pattern keys as (.*\.)?(key)$)
    targets = [plan.target for plan in plans]
    return replace(
        config,
        target_modules="^(?:" + "|".join(re.escape(t) for t in targets) + ")$",
        rank_pattern={exact(p.target): p.rank for p in plans if p.rank != config.r},
        alpha_pattern={exact(p.target): p.alpha for p in plans if p.alpha != config.lora_alpha},
        modules_to_save=sorted(to_save.values()) or None,
        exclude_modules=None,
        layers_to_transform=None,
        layers_pattern=None,
        task_type=None,
        inference_mode=True,
        # the base is tokembed's (resolved and recorded apart); peft would warn that it "renamed" this field
        base_model_name_or_path=None,
    )


def _base_hint(config: dict) -> str:
    return f"its adapter_config.json names base {config.get('base_model_name_or_path')!r}"


# -- loading a base + adapter ------------------------------------------------------------------------------


def load_adapted(adapter: Path, base: Path, options: Any, merge: bool = True) -> Any:
    """Load ``base`` through its family (the adapter's processor files first) and apply the adapter."""
    from tokembed.models.registry import detect, family_class, is_image_family
    from tokembed.models.st_layout import check_vision_modules, refuse_adapter_inside_pipeline

    require_peft()
    check_supported(adapter, read_adapter_config(adapter))
    if is_adapter(base):
        raise ModelError(f"{base}: the adapter's base is itself an adapter; tokembed applies one adapter over a base")
    key = detect(base, options.trust_remote_code)
    if is_image_family(key):  # a module tree sentence-transformers saved beside it, checked as beside the base
        check_vision_modules(adapter, key)
    else:
        refuse_adapter_inside_pipeline(adapter)
    from tokembed.models.processor_overlay import processor_overlay, refuse_other_tokenizer
    from tokembed.models.readings import readings_of

    with processor_overlay(base, adapter) as overlay:
        loaded = family_class(key).load(base, replace(options, processor_path=overlay) if overlay else options)
    if hasattr(loaded, "backbone"):  # a text family: LoRA on its backbone
        refuse_other_tokenizer(base, adapter)
        loaded.backbone = apply_adapter(loaded.backbone, adapter, backbone_names(loaded.backbone), merge)
    else:
        names = (getattr(loaded, "extra", None) or {}).get("tensor_names")
        rename = names.rename if names is not None else (lambda name: name)
        loaded.model = apply_adapter(loaded.model, adapter, rename, merge)
    loaded.extra = {**(loaded.extra or {}), "adapter": str(adapter), "base": str(base)}
    loaded.reading = readings_of(key, base, adapter, options)
    return loaded


class PeftLora:
    """The registry's entry for adapters (``tokembed models``); ``registry.load_model`` passes the resolved base."""

    key = "peft-lora"
    detected_by = "adapter_config.json (peft_type LORA), as vidore/colqwen2-v1.0, colpali-v1.3, colSmol-256M ship"
    needs = ("the base (base_model_name_or_path or --base-model, hub cache or folder) loadable by its family; "
             "pip install 'tokembed[peft]'")
    modes = "the base's"
    reference = ("peft's PeftModel forward on the base, merged (every adapter tensor placed, vision tower included; "
                 "published and transformers-5 names); colpali-engine 0.3.18 for colpali-engine bases")

    @classmethod
    def load(cls, path: Path, options: Any) -> Any:
        from tokembed.models.resolve import resolve_model

        return load_adapted(Path(path), resolve_model(str(path)).base.path, options)
