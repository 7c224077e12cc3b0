"""``serve --lora-modules``: LoRA adapters injected unmerged into the served model, one batcher queue per adapter.

vLLM's convention: a request whose ``model`` names an adapter runs with it, one naming the base without. The
adapters are injected by peft into the loaded backbone (``models.adapters.attach_unmerged``, the same placement
checks as ``encode``); every profile gets a view of the model whose backbone activates its adapter (or none)
before each forward, and its own queue, so items of different adapters never share a batch.
"""

from __future__ import annotations

from pathlib import Path

from tokembed.errors import UsageError


def batch_key(adapter: str | None, key: str) -> str:
    """The batcher queue of one profile under one adapter: items of different adapters never share a batch."""
    return key if adapter is None else f"{key}@lora:{adapter}"


def attach_adapters(embedder, options) -> dict:
    """Inject every ``options.lora_modules`` adapter into the loaded backbone, unmerged; the base runs with none active.
    No adapter may take the base's name in requests (``--served-model-name``, else ``--model``): it would be unreachable.
    """
    from tokembed.models.adapters import adapter_view, attach_unmerged, backbone_names
    from tokembed.models.processor_overlay import refuse_other_tokenizer

    model = embedder.model
    if not hasattr(model, "backbone"):
        raise UsageError("--lora-modules: tokembed serve applies unmerged adapters to text models only")
    if next(iter(model.backbone.parameters()), None) is None:  # a runtime's compiled model: peft would patch nothing
        raise UsageError("--lora-modules: the backbone has no torch weights to adapt (TOKEMBED_CPU_RUNTIME=openvino?)",
                         hint="unset TOKEMBED_CPU_RUNTIME to serve adapters")
    lora_modules = options.lora_modules
    names = [name for name, _ in lora_modules]
    if len(set(names)) != len(names) or (options.served_model_name or embedder.resolved.name) in names:
        raise UsageError(f"--lora-modules: names must be unique and differ from the served model ({', '.join(names)})")
    if embedder.resolved.base is not None:
        raise UsageError(f"--lora-modules: --model {embedder.resolved.name!r} is itself a PEFT adapter; tokembed applies "
                         "one adapter over a base", hint="serve its base as --model and the adapters as --lora-modules")
    # the adapters go on the served model, whatever base their config names (which is therefore not resolved)
    folders = [(name, _adapter_folder(name, path)) for name, path in lora_modules]
    for _, folder in folders:  # every adapter is run with the served model's tokenizer, as encode runs a text adapter
        refuse_other_tokenizer(embedder.resolved.path, folder)
    peft_model = attach_unmerged(model.backbone, folders, backbone_names(model.backbone))
    model.backbone = adapter_view(peft_model, None)
    return {name: (str(folder), adapter_view(peft_model, name)) for name, folder in folders}


def _adapter_folder(name: str, path: str) -> Path:
    """The adapter's folder; an error names the --lora-modules entry, not --model."""
    from tokembed.errors import ModelNotFoundError
    from tokembed.models.resolve import resolve_checkpoint

    try:
        return Path(resolve_checkpoint(path).path)
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(f"--lora-modules {name}={path}: {str(exc).removeprefix(f'--model {path!r}: ')}",
                                 hint=exc.hint) from None
