"""Read individual tensors out of a checkpoint folder (safetensors first, then PyTorch ``.bin``).

Which files are the checkpoint is what its reference library reads, by those exact names and nothing else:
transformers (and colbert-ai's ``HF_ColBERT``) read ``model.safetensors``, else the files a
``model.safetensors.index.json`` lists (each must be there), else ``pytorch_model.bin``, else the files a
``pytorch_model.bin.index.json`` lists; a sentence-transformers / PyLate ``Dense`` folder is read the same way
without the indexes (``indexed=False``). Any other weight file beside them (``weights.safetensors``, an
optimizer's state) is not read. Never silently wrong (``check_weight_files``): a tensor name in two of those files
(which copy would win depends on the file names) and a weight or bias of an integer or boolean type (a cast to
float would turn a quantized or damaged tensor into other numbers) are refused, naming the files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from tokembed.errors import ModelError
from tokembed.open_files import refuse_out_of_descriptors


# The weight files transformers' ``from_pretrained`` reads, in its order (a sentence-transformers module: the same
# single files, no index).
_SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")


def weight_files(folder: Path, indexed: bool = True) -> list[Path]:
    for single in _SINGLE_FILES:
        if (folder / single).is_file():
            return [folder / single]
        index = folder / f"{single}.index.json"
        if indexed and index.is_file():
            return _listed_files(index)
    return []


def _expected_names(indexed: bool) -> str:
    return ", ".join(_SINGLE_FILES + tuple(f"{name}.index.json" for name in _SINGLE_FILES if indexed))


def _listed_files(index: Path) -> list[Path]:
    """The weight files a sharded checkpoint's index names, each of which must be there."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        names = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelError(f"{index}: not a readable weight index ({type(exc).__name__}: {exc})") from None
    files = [path_inside(index.parent, name, index, "weight file") for name in names]
    missing = [name for name, file in zip(names, files) if not file.is_file()]
    if missing:
        raise ModelError(f"{index}: lists weight file(s) {missing[:5]} that are not in the folder")
    return files


def path_inside(folder: Path, listed: object, listed_in: Path, what: str) -> Path:
    """``folder / listed`` for a path a checkpoint file lists (an index's weight file, a ``modules.json`` module).
    A path that leaves the folder (``..``, absolute) is refused: the model fingerprint and weights digest cover the
    checkpoint folder's files only, so a change there would keep an index's old vectors. (A symlink inside the
    folder, as in a hub cache snapshot, is read through and fingerprinted by its content.)"""
    if not isinstance(listed, str):
        raise ModelError(f"{listed_in}: the {what} path {listed!r} is not a string")
    if os.path.isabs(listed) or os.pardir in Path(listed).parts or _through_link_up(folder, listed):
        raise ModelError(f"{listed_in}: the {what} {listed!r} is outside the checkpoint folder {folder}; tokembed "
                         "reads a checkpoint's own files only (a change outside it would not be noticed)",
                         hint=f"move the {what} into {folder} (a symlink inside the folder works)")
    return folder / listed


def _through_link_up(folder: Path, listed: str) -> bool:
    """Whether a folder on ``listed``'s way is a link to the checkpoint folder or one above it: the fingerprint's
    walk does not follow such a link (a cycle), so what is read through it would not be fingerprinted."""
    from tokembed.models.resolve import links_above

    real, parts = os.path.realpath(folder), Path(listed).parts
    links = (folder.joinpath(*parts[:depth]) for depth in range(1, len(parts) + 1))
    return any(link.is_symlink() and links_above(str(link), (real,)) for link in links)


def check_weight_files(folder: Path, indexed: bool = True) -> None:
    """Refuse a tensor name held by two of the checkpoint's weight files, and a weight or bias stored as an
    integer or boolean type (safetensors headers; ``.bin`` files are mapped, not read)."""
    seen: dict[str, Path] = {}
    for file in weight_files(Path(folder), indexed):
        with readable(file):
            stored = stored_tensors(file)
        for name, tensor in stored.items():
            if name in seen:
                raise ModelError(f"{folder}: tensor {name} is in both {seen[name].name} and {file.name}; "
                                 "which copy is the checkpoint's is not knowable",
                                 hint="remove the stray weight file")
            seen[name] = file
            check_float(file, name, tensor.dtype, tensor.floating)


@dataclass(frozen=True)
class StoredTensor:
    dtype: str
    floating: bool
    shape: tuple[int, ...]


def stored_tensors(file: Path) -> dict[str, StoredTensor]:
    """name -> dtype, whether floating point, shape of every tensor in a weight file (the safetensors header; a
    ``.bin`` file is mapped, not read)."""
    if file.suffix == ".safetensors":
        return {name: StoredTensor(entry["dtype"], entry["dtype"].startswith(("F", "BF")), tuple(entry["shape"]))
                for name, entry in safetensors_header(file).items()}
    return {name: StoredTensor(str(tensor.dtype), tensor.is_floating_point(), tuple(tensor.shape))
            for name, tensor in _mapped_bin(file).items() if isinstance(tensor, torch.Tensor)}


def check_float(file: Path, name: str, dtype: str, floating: bool) -> None:
    """A weight or bias must be stored as a floating-point type: a cast would turn a quantized or damaged tensor
    into other numbers. (Integer buffers such as BERT's ``position_ids`` are fine.)"""
    if not floating and name.rsplit(".", 1)[-1] in ("weight", "bias"):
        raise ModelError(f"{file}: tensor {name} is stored as {dtype}, not a floating-point type "
                         "(a quantized or damaged checkpoint: tokembed would only be guessing its values)")


def safetensors_header(file: Path) -> dict[str, dict]:
    """name -> {dtype, shape, data_offsets} of a safetensors file, from its header alone."""
    with open(file, "rb") as handle:
        size = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(size))
    return {name: entry for name, entry in header.items() if name != "__metadata__"}


@contextmanager
def readable(file: Path) -> Iterator[None]:
    """A weight file that cannot be read (truncated, garbled: safetensors and torch raise their own error types)
    is a ``ModelError`` naming it, not a traceback."""
    try:
        yield
    except ModelError:
        raise
    except Exception as exc:
        refuse_out_of_descriptors(file, exc)
        reason = _refused_open(file) or f"{type(exc).__name__}: {exc}"
        raise ModelError(f"{file}: cannot read the weights ({reason})") from exc


def _refused_open(file: Path) -> str | None:
    """Why the OS will not open ``file`` (Permission denied), or None. safetensors reports every file it cannot open
    as FileNotFoundError "No such file or directory", so the file is opened here to learn the reason; the OS's limit
    on open files (EMFILE) is the limit's error, not the file's."""
    try:
        os.close(os.open(file, os.O_RDONLY))
    except OSError as exc:
        refuse_out_of_descriptors(file, exc)
        return exc.strerror or str(exc)
    return None


def read_state(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint's weight files (safetensors, else PyTorch ``.bin``)."""
    files = weight_files(folder)
    if not files:
        raise ModelError(f"{folder}: no weight files ({_expected_names(True)})")
    check_weight_files(folder)
    state: dict[str, torch.Tensor] = {}
    for file in files:
        with readable(file):
            if file.suffix == ".safetensors":
                from safetensors.torch import load_file

                state.update(load_file(str(file)))
            else:
                state.update(torch.load(file, map_location="cpu", weights_only=True))
    return state


def tensor_names(folder: Path, indexed: bool = True) -> set[str]:
    """Names of every tensor in the folder's weight files (safetensors headers; ``.bin`` files are mapped)."""
    names: set[str] = set()
    for file in weight_files(folder, indexed):
        with readable(file):
            names.update(names_in(file))
    return names


def names_in(file: Path) -> list[str]:
    if file.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(file), framework="pt") as handle:
            return list(handle.keys())
    return list(_mapped_bin(file))


def _mapped_bin(file: Path) -> dict:
    """A PyTorch ``.bin`` file's tensors, mapped rather than read where the file allows it."""
    try:
        return torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # a legacy (non-zip) .bin cannot be mapped: read it
        return torch.load(file, map_location="cpu", weights_only=True)


def find_tensors(folder: Path, names: set[str], indexed: bool = True) -> dict[str, torch.Tensor]:
    """Return the named tensors found in the folder's weight files (missing names are simply absent)."""
    check_weight_files(folder, indexed)
    found: dict[str, torch.Tensor] = {}
    for file in weight_files(folder, indexed):
        with readable(file):
            if file.suffix == ".safetensors":
                from safetensors import safe_open

                with safe_open(str(file), framework="pt") as handle:
                    for name in names & set(handle.keys()):
                        found[name] = handle.get_tensor(name)
            else:
                state = torch.load(file, map_location="cpu", weights_only=True)
                found.update({name: state[name] for name in names if name in state})
    return found


def load_tensors(folder: Path, names: set[str], required: set[str], indexed: bool = True) -> dict[str, torch.Tensor]:
    found = find_tensors(folder, names, indexed)
    missing = required - set(found)
    if missing:
        files = ", ".join(f.name for f in weight_files(folder, indexed))
        files = files or f"no weight files: {_expected_names(indexed)}"
        raise ModelError(f"{folder}: weights {sorted(missing)} not found ({files})")
    return {name: tensor.float() for name, tensor in found.items()}
