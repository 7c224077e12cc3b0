"""``Embedder``: a loaded checkpoint bound to one kind's settings, on one device.

The one way tokembed turns texts into token matrices: ``encode`` uses it for the corpus, ``score``
(through ``Embedder.for_index``) rebuilds the index's query-side settings from its manifest, those only queries
read as this release reads the checkpoint (``index_colbert``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from tokembed.errors import DeviceError, ModelMismatchError, ModelNotFoundError, UsageError
from tokembed.index_colbert import IndexColbert
from tokembed.models import LoadOptions, ResolvedModel, TokenModel, load_model, resolve_model
from tokembed.models.readings import kind_reading
from tokembed.models.resolve import resolved_fingerprint, resolved_weights_sha256, weights_agree
from tokembed.models.steps import TextEncoder
from tokembed.settings import (
    DEFAULT_BATCH_TOKENS, ColbertConfig, EncodeFlags, EncodeSettings, checked_flags, known_keys, resolve, resolve_dtype,
)


@dataclass
class Embedder:
    resolved: ResolvedModel
    model: TokenModel
    settings: EncodeSettings
    encoder: TextEncoder
    device: str
    fingerprint: str
    weights_sha256: str  # every weight file's whole content (``fingerprint`` samples their edges)

    @classmethod
    def load(
        cls,
        model: str | None,
        flags: EncodeFlags,
        device: str = "cpu",
        trust_remote_code: bool = False,
        colbert: ColbertConfig | Callable[[ColbertConfig | None], ColbertConfig | None] | None = None,
    ) -> "Embedder":
        """Resolve and load ``model``; ``colbert`` overrides the checkpoint's ColBERT settings: a config, or a
        function of the checkpoint's own that gives it (an index's, ``index_colbert``)."""
        resolved = resolve_model(model, flags.revision, flags.base_model, flags.base_revision)
        device_type = device.split(":")[0]
        options = LoadOptions(trust_remote_code=trust_remote_code, dtype=resolve_dtype(flags.dtype, device_type), device=device)
        loaded = load_model(resolved.path, options, resolved.base.path if resolved.base else None)
        fingerprint, weights = resolved_fingerprint(resolved), resolved_weights_sha256(resolved)
        runtime = _maybe_openvino(loaded, device, f"{fingerprint}\0{weights}")
        if callable(colbert):
            loaded.colbert = colbert(loaded.colbert)
        elif colbert is not None:
            loaded.colbert = colbert
        settings, encoder = make_encoder(loaded, flags, device, runtime)
        return cls(resolved, loaded, settings, encoder, device, fingerprint, weights)

    @classmethod
    def for_index(
        cls,
        manifest: dict,
        kind: str = "query",
        model: str | None = None,
        device: str = "cpu",
        allow_mismatch: bool = False,
        trust_remote_code: bool = False,
        base_model: str | None = None,
    ) -> "Embedder":
        """The embedder that encodes ``kind`` inputs compatibly with an index (same model, same settings).

        ``model`` overrides where the checkpoint is (e.g. the index was built on another machine), ``base_model``
        where an adapter's base is; their fingerprint must match the manifest's unless ``allow_mismatch``.
        """
        where, flags = index_checkpoint(manifest, kind, model, base_model)
        colbert = IndexColbert(manifest)
        embedder = cls.load(where, flags, device, trust_remote_code, colbert)
        if not allow_mismatch:
            check_index_model(manifest, embedder)
            colbert.warn_of_documents_read_otherwise(embedder.model.reading, embedder.settings.dtype)
        return embedder

    @property
    def is_vision(self) -> bool:
        """Documents are images (a vision retrieval model); queries are still text."""
        return not isinstance(self.encoder, TextEncoder)

    @property
    def output_dim(self) -> int:
        return self.encoder.output_dim

    def spec(self, flags: EncodeFlags, trust_remote_code: bool = False) -> "EmbedderSpec":
        """What a worker process needs to rebuild this embedder on its own device (``flags``: as loaded). Paths in
        it are absolute: a Ray actor runs in another folder (the one ``ray start`` ran in)."""
        flags = replace(flags, revision=None)  # the folder the revision named
        base = local_base(self.resolved)
        if base is not None:
            flags = replace(flags, base_model=base)  # also a relative base_model_name_or_path of the adapter
        return EmbedderSpec(
            str(self.resolved.path), flags, trust_remote_code, self.model.colbert, self.fingerprint, self.settings,
            self.weights_sha256,
        )

    def embed(self, texts: list[str], batch_tokens: int = DEFAULT_BATCH_TOKENS) -> list[tuple[np.ndarray, np.ndarray]]:
        """Texts -> per text (vectors [n_tokens, D] in the store dtype, token ids [n_tokens]), input order."""
        from tokembed.engine.runner import run_chunk

        result = run_chunk(self.encoder, texts, batch_tokens, self.device)
        return list(zip(result.vectors, result.token_ids))


def local_base(resolved: ResolvedModel) -> str | None:
    """An adapter's base as the absolute folder it was loaded from; None for no adapter or a hub id's base."""
    base = resolved.base
    if base is None or not Path(base.name).expanduser().is_dir():  # as resolve_model told a folder from a hub id
        return None
    return str(base.path)


@dataclass(frozen=True)
class EmbedderSpec:
    """A picklable recipe for an ``Embedder`` (no weights): the checkpoint folder the main process resolved,
    the flags and ColBERT settings it loaded with, and the fingerprint and settings the rebuilt one must have."""

    model: str
    flags: EncodeFlags
    trust_remote_code: bool
    colbert: ColbertConfig | None
    fingerprint: str
    settings: EncodeSettings
    weights_sha256: str

    def load(self, device: str) -> Embedder:
        embedder = Embedder.load(self.model, self.flags, device, self.trust_remote_code, self.colbert)
        if (embedder.fingerprint, embedder.weights_sha256) != (self.fingerprint, self.weights_sha256):
            raise DeviceError(f"{device}: the checkpoint at {self.model} changed while the run started")
        if embedder.settings != self.settings:
            raise DeviceError(
                f"{device}: resolves different encoding settings than the first device "
                f"(compute {embedder.settings.dtype} vs {self.settings.dtype})",
                hint="pass --dtype explicitly, or list devices of one kind",
            )
        return embedder


def make_encoder(model: TokenModel, flags: EncodeFlags, device: str, runtime: str = "torch") -> tuple[EncodeSettings, object]:
    """(the settings ``flags`` resolve to for ``model`` on ``device``, the encoder that applies them: the
    model's own for image models, else a ``TextEncoder``). ``runtime``: what runs the backbone (recorded: its
    vectors differ from torch's in the last bits, so a re-run with the other one re-encodes)."""
    flags = checked_flags(flags)
    refuse_length_on_image_model(model, flags)
    settings = resolve(flags, model.colbert, model.max_length, device.split(":")[0], model.position_limit)
    reading = tuple(getattr(model, "reading", ())) + kind_reading(getattr(model, "family", None), settings.kind)
    settings = replace(settings, runtime=runtime, reading=reading)
    if hasattr(model, "make_encoder"):
        return settings, model.make_encoder(settings)
    encoder = TextEncoder(model, settings)
    if flags.max_length is not None:
        refuse_length_cutting_prefix(model, encoder)
    return settings, encoder


def refuse_length_cutting_prefix(model: TokenModel, encoder: TextEncoder) -> None:
    """A ``--max-length`` below the special tokens and the ColBERT marker (the prefix) would cut the marker and
    keep no token of the text: every item the same vectors. PyLate makes no such cut either (below its special
    tokens it cuts nothing, and a batch of unequal queries is a ValueError); at the least length it keeps the
    special tokens and the marker, as here."""
    settings, least = encoder.settings, encoder.least_length
    if settings.max_length < least:
        raise UsageError(
            f"--max-length {settings.max_length} cannot hold the {least} tokens every {settings.kind} of {model.path} "
            f"has whatever its text (the special tokens and the {settings.kind} prefix {settings.prefix!r}): it would "
            "cut the prefix and keep no token of the text",
            hint=f"use --max-length {least} or more (for an index encoded with it, which score and serve read: encode "
            "it again with that)",
        )


def refuse_length_on_image_model(model: TokenModel, flags: EncodeFlags) -> None:
    """An image model's processor prepares every page and query whole (no family cuts them to a length, as
    colpali-engine does not): a ``--max-length`` would be recorded in the manifest and the settings fingerprint
    (a re-run adding it re-encodes everything) and change no vector. serve refuses ``truncate_prompt_tokens`` alike."""
    if flags.max_length is not None and hasattr(model, "make_encoder"):
        raise UsageError(
            f"--max-length {flags.max_length}: {model.family} is an image model family, whose processor prepares every "
            "page and query whole (no image or page input is truncated): the length would be recorded, never applied",
            hint="drop --max-length (serve likewise refuses truncate_prompt_tokens for image models)",
        )


def index_flags(manifest: dict, kind: str = "query") -> EncodeFlags:
    """The flags that encode ``kind`` inputs as the index's manifest prescribes."""
    flags = replace(EncodeFlags.from_json(known_keys(manifest["flags"], EncodeFlags, "flags")), kind=kind)
    if kind != manifest["settings"]["kind"] or _is_image_index(manifest):
        # a --max-length given for one kind is not the other's; an image model's (an earlier release took it) cut nothing
        flags = replace(flags, max_length=None)
    if kind == "query":
        # --pool-factor pools the documents; queries are never pooled. Nor stored: they stay float32, the references'
        # queries, not rounded to a float16 index's dtype (its documents are upcast per block to meet them)
        flags = replace(flags, pool_factor=1, store_dtype="float32")
    base = manifest["model"].get("base") or {}
    if not base:
        # no adapter: an earlier release recorded a --base-model / --base-revision it ignored (refused now)
        return replace(flags, base_model=None, base_revision=None)
    if not base.get("path") or not _exists(base["path"]):
        return flags
    if base.get("revision") is not None:
        # a hub base whose snapshot is still cached: that commit, wherever its refs/main moved since
        return replace(flags, base_revision=base["revision"])
    if flags.base_model is None:
        # the local folder the index was built over, wherever this runs from: an adapter's base_model_name_or_path
        # may be relative to the folder encode ran in
        return replace(flags, base_model=base["path"], base_revision=None)
    return flags


def index_checkpoint(
    manifest: dict, kind: str = "query", model: str | None = None, base_model: str | None = None
) -> tuple[str | None, EncodeFlags]:
    """(``index_model``, ``index_flags`` with ``index_base``'s base): the index's revision goes with a hub id only
    (a folder, the snapshot it named, ``model`` or the demo model, has none)."""
    where, flags = index_model(manifest, model), index_flags(manifest, kind)
    if where is None or _exists(where):  # None: the demo model, a folder (an earlier release recorded a --revision)
        flags = replace(flags, revision=None)
    elif model is None and manifest["model"].get("revision"):
        # its snapshot folder is gone: the commit it was built on, wherever a branch moved since (not cached: the
        # error names `hf download NAME --revision COMMIT`)
        flags = replace(flags, revision=manifest["model"]["revision"])
    return where, index_base(manifest, flags, base_model)


def index_base(manifest: dict, flags: EncodeFlags, base_model: str | None = None) -> EncodeFlags:
    """``flags`` naming the adapter's base to load: ``base_model`` (``--base-model``) if given, its hub revision
    going with a hub id only, as ``--model``'s does; else the one ``index_flags`` found, a base folder that the
    index recorded (``flags.base_model``) and that is gone being exit 4 saying so, as ``index_model`` says of a
    model folder."""
    if base_model is not None:
        base_model = os.fspath(base_model)
        return replace(flags, base_model=base_model, base_revision=None if _exists(base_model) else flags.base_revision)
    base = manifest["model"].get("base") or {}
    if base and base.get("revision") is None and flags.base_model is not None and not _exists(flags.base_model):
        raise ModelNotFoundError(
            f"the index's base model folder {base['path']} (of adapter {manifest['model']['name']!r} when it was "
            "encoded) is gone", hint="pass the base with --base-model ID|PATH")
    return flags


def index_model(manifest: dict, model: str | None = None) -> str | None:
    """Where to load the index's checkpoint from: ``model`` if given, else the folder it was built from while
    that exists, else its recorded name (None: the demo model)."""
    recorded = manifest["model"]
    if model is not None:
        return model
    if recorded.get("is_demo"):
        return None
    if _exists(recorded["path"]):
        return recorded["path"]
    if recorded.get("revision") is None and not _exists(recorded["name"]):  # a folder (a hub id has a commit)
        raise ModelNotFoundError(
            f"the index's model folder {recorded['path']} (--model {recorded['name']!r} when it was encoded) is gone",
            hint="pass the checkpoint with --model PATH_OR_HUB_ID",
        )
    return recorded["name"]


def check_index_model(manifest: dict, embedder: "Embedder") -> None:
    """Raise ``ModelMismatchError`` unless ``embedder`` loaded the checkpoint the index was built with."""
    recorded = manifest["model"]
    fingerprint, weights = embedder.fingerprint, embedder.weights_sha256
    if fingerprint != recorded["fingerprint"]:
        from tokembed.models.resolve import earlier_identities

        earlier = (identity for identity in earlier_identities(embedder.resolved, recorded)
                   if identity[0] == recorded["fingerprint"])
        fingerprint, weights = next(earlier, (None, None))  # an index of an earlier release
        if fingerprint is None:
            raise _model_mismatch(recorded, embedder.resolved, embedder.fingerprint)
    refuse_other_family(recorded, embedder)
    if not same_weights(manifest, weights):
        raise ModelMismatchError(
            f"model {embedder.resolved.name!r}: its weights changed since the index was built (the same files, sizes "
            f"and headers; weights sha256 {weights[:12]}, the index's {recorded['weights_sha256'][:12]})",
            hint="re-encode the index with this checkpoint, or --allow-model-mismatch to score anyway",
        )


def refuse_other_family(recorded: dict, embedder: "Embedder") -> None:
    """An index of this checkpoint that an earlier release read as another family (a bge-m3 folder as a plain encoder,
    its ColBERT head unread): this release's queries would be other vectors than its documents."""
    family = embedder.model.family
    if recorded.get("family", family) != family:
        raise ModelMismatchError(
            f"model {embedder.resolved.name!r}: the index was encoded reading it as a {recorded['family']!r} checkpoint; "
            f"this tokembed reads it as {family!r}, whose vectors differ",
            hint="re-encode the index (its next encode run re-encodes it whole), or --allow-model-mismatch to score anyway",
        )


def _model_mismatch(recorded: dict, resolved: ResolvedModel, fingerprint: str) -> ModelMismatchError:
    """Which checkpoint differs (an adapter's base, when it is the base) and, for a hub snapshot the cache no
    longer holds, the command that downloads it again."""
    from tokembed.models.resolve import model_fingerprint

    base = recorded.get("base")
    if base and resolved.base is not None and model_fingerprint(resolved.base.path) != base["fingerprint"]:
        what, noun = f"the base model {resolved.base.name!r}", f"base of adapter {resolved.name!r}"
        recorded, resolved = base, resolved.base
        fingerprint = model_fingerprint(resolved.path)
        hint = "pass the index's base with --base-model, or --allow-model-mismatch to score anyway"
    else:
        what, noun = f"model {resolved.name!r}", "model"
        hint = "pass the index's model with --model, or --allow-model-mismatch to score anyway"
    if recorded.get("revision") and not _exists(recorded["path"]):
        hint = (f"the index was built on commit {recorded['revision']}, no longer in the Hugging Face cache: "
                f"hf download {recorded['name']} --revision {recorded['revision']}; or --allow-model-mismatch")
    return ModelMismatchError(
        f"{what}{_at(resolved.revision)} (fingerprint {fingerprint[:12]}) is not the {noun} the index was built with "
        f"({recorded['name']!r}{_at(recorded.get('revision'))}, fingerprint {recorded['fingerprint'][:12]})", hint=hint)


def _at(revision: str | None) -> str:
    return f" at commit {revision[:12]}" if revision else ""


def same_weights(manifest: dict, weights_sha256: str) -> bool:
    """Whether an index was built from weights with this digest (``resolve.weights_agree``)."""
    return weights_agree(manifest["model"].get("weights_sha256"), weights_sha256)


def _maybe_openvino(loaded, device: str, model_key: str) -> str:
    """With ``TOKEMBED_CPU_RUNTIME=openvino`` on the CPU, a native BERT backbone runs in OpenVINO
    (``models/openvino_backbone.py``); other backbones keep torch (a log line says so). Returns the runtime."""
    from tokembed.models import openvino_backbone

    if device != "cpu" or not openvino_backbone.wanted():
        return "torch"
    from tokembed.engine.local import default_lanes
    from tokembed.models.bert import BertBackbone

    if not isinstance(getattr(loaded, "backbone", None), BertBackbone):
        import logging

        logging.getLogger("tokembed").warning("TOKEMBED_CPU_RUNTIME=openvino: only native BERT backbones convert; %s keeps torch", loaded.family)
        return "torch"
    dtype = next(loaded.backbone.parameters()).dtype
    loaded.backbone = openvino_backbone.openvino_backbone(loaded.backbone, model_key, dtype, default_lanes("cpu"))
    return "openvino" if isinstance(loaded.backbone, openvino_backbone.OpenVinoBackbone) else "torch"


def _is_image_index(manifest: dict) -> bool:
    from tokembed.models.registry import is_image_family

    return is_image_family(manifest["model"].get("family"))


def _exists(path: str) -> bool:
    from pathlib import Path

    return Path(path).is_dir()


def all_finite(vectors: np.ndarray) -> bool:
    """No NaN or inf. For float16 (the default store dtype) an integer test of the exponent bits (all ones: inf or
    NaN): numpy's ``isfinite`` on float16 took 0.1 s of a 12 s pass over 1,200 rows, ~8x the integer test."""
    if vectors.dtype == np.float16:
        return vectors.size == 0 or int((vectors.view(np.uint16) & 0x7C00).max()) < 0x7C00
    return bool(np.isfinite(vectors).all())


def refuse_non_finite(what: str, vectors: np.ndarray) -> None:
    """Vectors holding NaN or inf are never stored nor searched with: a NaN scores null and ranks anywhere, so an
    index of them answers in file order with exit 0. Exit 2 naming ``what`` (a row, a query)."""
    if all_finite(vectors):
        return
    if vectors.dtype == np.float16 and not np.isnan(vectors).any():
        raise UsageError(
            f"{what}: its vectors hold values beyond float16's largest (65504), which --store-dtype float16 would "
            "store as inf", hint="encode with --store-dtype float32 (and --dtype bfloat16 or float32 where the model "
            "computes in float16)")
    raise UsageError(non_finite_problem(what, vectors), hint=non_finite_remedy("encode"))


def non_finite_problem(what: str, vectors: np.ndarray) -> str | None:
    """Why ``vectors`` (a forward's output) are neither stored nor scored with, naming ``what``; None when every
    value is finite. ``refuse_non_finite`` and ``serve`` (its 500) say it alike."""
    if all_finite(vectors):
        return None
    bad = int(np.count_nonzero(~np.isfinite(vectors)))
    return (f"{what}: {bad} of its {vectors.size} vector values are NaN or inf: the model's forward overflowed (float16 "
            "ends at 65504) or its weights hold NaN or inf; nothing is stored or scored with them")


def non_finite_remedy(command: str) -> str:
    return f"{command} with --dtype bfloat16 or float32; NaN from a float32 forward means damaged weights"
