"""What the Hugging Face cache holds of a hub id when ``snapshot_download`` finds no usable snapshot: an incomplete
one (huggingface_hub 2.x checks a snapshot against the commit's file list, ``trees/<sha>.json``, which names files
tokembed never reads), a ref naming a commit that never arrived, a short commit hash, other commits."""

from __future__ import annotations

import re
from pathlib import Path

from tokembed.errors import ModelNotFoundError

_SHORT_HASH = re.compile(r"[0-9a-f]{4,39}")
_LISTED = 5


def partial_snapshot(repo_id: str, folder: Path) -> Path:
    """``folder``, a snapshot the commit's file list says is incomplete, when every file missing is one tokembed
    does not read (a README, ``.gitattributes``, a ``pytorch_model.bin`` beside ``model.safetensors``: what
    `hf download --include/--exclude` leaves out); else a ModelNotFoundError naming the files missing."""
    from huggingface_hub import get_cached_repo_tree

    from tokembed.models.resolve import read_by_tokembed

    listed = [entry.path for entry in get_cached_repo_tree(repo_id, revision=folder.name)]
    missing = [rel for rel in listed if not (folder / rel).is_file() and read_by_tokembed(rel, listed)]
    if not missing:
        return folder
    named = ", ".join(rel + (" (a broken link: its blob is missing)" if (folder / rel).is_symlink() else "")
                      for rel in missing[:_LISTED]) + _more(len(missing))
    raise ModelNotFoundError(
        f"model {repo_id!r}: the cached snapshot {folder} is incomplete (a download that never finished): the "
        f"commit's file list (trees/{folder.name}.json) has {len(missing)} file(s) tokembed reads that are not "
        f"there: {named}",
        hint=f"complete the download with network access: hf download {repo_id} --revision {folder.name}")


def not_cached(repo_id: str, revision: str | None, offline: str | None, unreachable: str | None) -> ModelNotFoundError:
    """The error for a hub id at ``revision`` the cache has no snapshot of, naming what it has instead; ``offline``:
    the variable that put huggingface_hub offline, if one did; ``unreachable``: what the network did, when it failed."""
    why = f" ({offline} is set)" if offline else ", and the hub could not be reached" + (
        f" ({unreachable})" if unreachable else "")
    download = f"hf download {repo_id}" + (f" --revision {revision}" if revision else "")
    repo = _repo_folder(repo_id)
    try:
        cached = _cached_commits(repo)
    except PermissionError as exc:  # a shared HF_HOME of another user, mode 700
        return ModelNotFoundError(f"model {repo_id!r}: cannot read the Hugging Face cache ({exc.filename}: "
                                  f"{exc.strerror}){why}", hint="set HF_HOME to a cache this user may read")
    ref = revision or "main"
    pointed = _read_ref(repo, ref)
    if pointed is not None and pointed not in cached:
        return ModelNotFoundError(
            f"model {repo_id!r}: refs/{ref} in the Hugging Face cache ({repo}) names commit {pointed}, which has no "
            f"snapshot folder: a download of it never finished{why}; "
            + (f"cached: {_listing(cached)}" if cached else "no other commit is cached"),
            hint=f"complete the download with network access ({download})"
                 + (", or pin a cached commit with --revision" if cached else ""))
    if pointed is not None:  # cached, yet not found: huggingface_hub reads a ref as it is, a newline included
        return ModelNotFoundError(
            f"model {repo_id!r}: refs/{ref} in the Hugging Face cache ({repo}) holds {_raw_ref(repo, ref)!r}, "
            f"which huggingface_hub does not read as commit {pointed}{why}",
            hint=f"write the hash alone into {repo / 'refs' / ref}, or pass --revision {pointed}")
    matches = [sha for sha in cached if revision and _SHORT_HASH.fullmatch(revision) and sha.startswith(revision)]
    if matches:
        return ModelNotFoundError(
            f"model {repo_id!r}: revision {revision!r} is a short commit hash; the Hugging Face cache knows commits "
            f"by their full hash only{why}; cached: {_listing(matches)}",
            hint=f"pass the full hash: --revision {matches[0]}" if len(matches) == 1 else "pass one full hash")
    if not revision and cached:  # `hf download --revision SHA` writes no ref: which commit main is is unknown
        return ModelNotFoundError(
            f"model {repo_id!r}: the Hugging Face cache ({repo}) has no refs/main, so which commit main is cannot "
            f"be known{why}; cached: {_listing(cached)}",
            hint=(f"pin a cached commit: --revision {next(iter(cached))}" if len(cached) == 1 else
                  "pin one of the cached commits with --revision") + f", or download main with network access "
                 f"({download})")
    if revision and cached:
        return ModelNotFoundError(
            f"model {repo_id!r}: revision {revision!r} is not in the Hugging Face cache{why}; other revisions of it "
            f"are cached: {_listing(cached)}",
            hint=f"download it once with network access: {download}")
    return ModelNotFoundError(
        f"model {repo_id!r}: not a local folder, not in the Hugging Face cache{why}",
        hint=f"download it once with network access ({download}), or pass a local folder with --model")


def _repo_folder(repo_id: str) -> Path:
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    return Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model")


def _cached_commits(repo: Path) -> dict[str, list[str]]:
    """Commit hash -> the refs naming it, of every snapshot folder in the cache."""
    snapshots = repo / "snapshots"
    folders = sorted(snapshots.iterdir()) if snapshots.is_dir() else []
    commits: dict[str, list[str]] = {folder.name: [] for folder in folders if folder.is_dir()}
    refs = repo / "refs"
    for ref in sorted(refs.rglob("*")) if refs.is_dir() else ():
        if ref.is_file() and (sha := _read_ref(repo, ref.relative_to(refs).as_posix())) in commits:
            commits[sha].append(ref.relative_to(refs).as_posix())
    return commits


def _read_ref(repo: Path, ref: str) -> str | None:
    return (_raw_ref(repo, ref) or "").strip() or None


def _raw_ref(repo: Path, ref: str) -> str | None:
    try:
        return (repo / "refs" / ref).read_text()
    except (OSError, UnicodeDecodeError):
        return None


def _listing(commits: dict[str, list[str]] | list[str]) -> str:
    """Commit hashes, each with the refs naming it."""
    refs = commits if isinstance(commits, dict) else {}
    named = [sha + (f" ({', '.join(refs[sha])})" if refs.get(sha) else "") for sha in list(commits)[:_LISTED]]
    return ", ".join(named) + _more(len(commits))


def _more(count: int) -> str:
    return f", and {count - _LISTED} more" if count > _LISTED else ""
