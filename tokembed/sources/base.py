"""The item type, the options shared by readers, and the dispatch from a path to its reader."""

from __future__ import annotations

import math
import numbers
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tokembed.errors import BadInputError, UsageError
from tokembed.path_kind import kind_or_refused
from tokembed.sources.files import (FolderWalks, arrow_readable, files_of, refuse_special_file, special_file_problem,
                                    walk_files)

TEXT_SUFFIXES = (".txt", ".md")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".webm")  # read for image models that take videos (video.py; SourceOptions.video_refusal)
DATA_SUFFIXES = (".parquet", ".jsonl")
MODALITIES = ("text", "image", "auto")
DEFAULT_MAX_PIXELS = 40_000_000  # a 40 MP page; Pillow's own bomb limit is ~89 MP (warning) / ~179 MP (error)
# Decoded pixels a chunk of images holds (768 MiB as RGB): 64 Letter pages rendered at 200 dpi (239M) still make
# one chunk, as before there was a budget; 12 MP photos close a chunk at 22, 6000x6000 scans (36 MP) at 7.
IMAGE_CHUNK_PIXELS = 2**28


def read_digest(sha256: str, *readings: str) -> str:
    """What an image or video item's content hash is made of (``Item.image_sha256``): its stored bytes' digest, and
    each reading the reader makes of them otherwise than an earlier release did ("" where none: the digest alone),
    so that an incremental run encodes such an item again, as a rebuild does."""
    return " ".join([sha256, *(reading for reading in readings if reading)])


@dataclass(frozen=True)
class Item:
    id: str | None  # None: a bad row with no usable id (a null id, a line that is not JSON): ``id_label``
    text: str | None
    source: str  # the file the item came from
    row: int  # 0-based row in a Parquet/JSONL file, 0 for a file of its own
    error: str | None = None  # why the item cannot be encoded (null text, bad UTF-8, bad image, ...)
    image: Any = field(default=None, compare=False, repr=False)  # decoded RGB PIL.Image, or a video.Video (image inputs)
    image_sha256: str | None = None  # hex sha256 of the image bytes as stored (with DecodedImage / Video.content_digest's readings)
    source_file: str | None = None  # a PDF page's file (relative path, or the row's id for a cell); index column
    page: int | None = None  # a PDF page's 1-based number; index column
    skip_always: bool = False  # the error is a recorded skip even under --on-error fail (a PDF with zero pages)

    @property
    def location(self) -> str:
        where = f"{self.source} row {self.row}" if self.source.endswith((".parquet", ".jsonl")) else self.source
        return f"{where} page {self.page}" if self.page is not None else where


@dataclass(frozen=True)
class SourceOptions:
    id_column: str = "id"
    text_column: str = "text"
    id_column_given: bool = False  # an explicit --id-column must exist; the default may be absent
    chunk_rows: int = 2048
    image_column: str = "image"  # bytes, a path (relative to the file), or the datasets Image struct {bytes, path}
    image_column_given: bool = False
    # What Parquet/JSONL rows and folders are read for: "text" (the text column; the default), "image" (the
    # image column: vision models' documents), or "auto" (whichever of the two columns exist).
    modality: str = "text"
    max_image_pixels: int = DEFAULT_MAX_PIXELS  # larger images are item errors (decompression bombs)
    image_chunk_rows: int = 64  # decoded images held at once: chunks of image items are this small
    image_chunk_pixels: int = IMAGE_CHUNK_PIXELS  # and hold this many decoded pixels at most (or one larger image)
    pdf_dpi: float = 144.0  # PDF pages are rendered at this resolution for image models
    pdf_password: str | None = None  # opens encrypted PDFs
    pdf_workers: int | None = 0  # processes rendering PDF pages for image models (0: the reading thread; None: by device)
    pdf_column: str = "pdf"  # Parquet/JSONL column of PDFs (bytes, a path, {bytes, path}); read when given
    pdf_column_given: bool = False
    video_column: str = "video"  # Parquet/JSONL column of videos (bytes, a path, {bytes, path}); image models
    video_column_given: bool = False
    # Why the run's model encodes no video (its family has no video path), or None: then a folder's videos are no
    # documents (listed as ignored) and a video cell is a bad row, not probed. Set from the model by encode (its
    # fingerprint is in the run signature, so this is not).
    video_refusal: str | None = None
    walks: FolderWalks | None = field(default=None, compare=False, repr=False)  # the run's folder walks (files.py)


def open_sources(inputs: list[Path], options: SourceOptions) -> Iterator[list[Item]]:
    """Yield chunks of at most ``options.chunk_rows`` items from every input, in order."""
    if not inputs:
        raise BadInputError("no INPUT given")
    if options.modality not in MODALITIES:
        raise UsageError(f"modality must be one of {', '.join(MODALITIES)}; got {options.modality!r}")
    offset = 0  # row numbers stand in for missing ids and keep counting across files
    try:
        for path in inputs:
            for file, reader in _readers(path, options):
                rows = _RowCount()
                for chunk in reader(file, options, offset):
                    rows.add(chunk)
                    yield [unicode_checked(item) for item in chunk]
                    del chunk  # not alive while the next chunk is read: a chunk of decoded images is large
                offset += rows.count
    finally:
        if "tokembed.sources.pdf_workers" in sys.modules:  # --pdf-workers started render processes: stop them
            sys.modules["tokembed.sources.pdf_workers"].close_render_pool()


class _RowCount:
    """The rows a reader's items came from: the pages of a PDF cell (items of one source and row, in a row) count
    as the one row they are, so that row numbers standing in for ids count rows, not items."""

    def __init__(self) -> None:
        self.count = 0
        self._last: tuple[str, int] | None = None

    def add(self, chunk: list[Item]) -> None:
        for item in chunk:
            if (item.source, item.row) != self._last:
                self._last = (item.source, item.row)
                self.count += 1


_SURROGATE = re.compile("[\ud800-\udfff]")


def unicode_problem(text: str, what: str = "text") -> str | None:
    """Why ``text`` is not valid Unicode (a lone surrogate, which JSON's ``\\ud800`` escapes, broken PDF text
    layers and file names that are not UTF-8 can hold, and which neither tokenizers nor Arrow take), or None."""
    found = None if text.isascii() else _SURROGATE.search(text)
    if found is None:
        return None
    return f"{what} is not valid Unicode (a lone surrogate, U+{ord(found.group()):04X}, at character {found.start()})"


def id_field_problem(has: bool, first_has: bool, column: str, numbered: str) -> str | None:
    """Why a JSONL record breaks its file's id rule, or None. The first record decides: the file carries ids (a record
    without one would take its row number, which could be another record's id), or its ``numbered`` rows are (a
    record's own id could be another row's number)."""
    if first_has and not has:
        return f"no id field {column!r} (the file's first record has one)"
    if has and not first_has:
        return (f"an id field {column!r}, which the file's first record lacks (its {numbered}: give every record an "
                "id, or none)")
    return None


def id_problem(raw_id) -> str | None:
    """Why a Parquet/JSONL id value cannot be a row's id, or None: a null, an object, a list, a boolean or bytes
    (each would be stored as its Python text: "None", "{'a': 1}", "True", "b'doc1'"; a null's would collide
    with a real "None")."""
    if raw_id is None:
        return "null id"
    if isinstance(raw_id, numbers.Real) and not isinstance(raw_id, numbers.Integral) and not math.isfinite(raw_id):
        return f"id is {raw_id}, not a finite number"
    if isinstance(raw_id, (dict, list, tuple)):
        return f"id is {'an object' if isinstance(raw_id, dict) else 'a list'}, not a string or a number"
    if isinstance(raw_id, bool):
        return "id is a boolean, not a string or a number"
    if isinstance(raw_id, (bytes, bytearray)):
        return "id is binary (a Parquet binary column), not a string: cast the id column to string"
    return None


def id_label(item_id: str | None) -> str:
    """How a message names a row's id: ``id 'x'``, or that the bad row has none (not its row number, which
    another row's real id may be)."""
    return "no usable id" if item_id is None else f"id {item_id!r}"


def printable_id(item_id: str) -> str:
    """The id with its lone surrogates as ``\\udcff`` escapes: what a bad row's id is recorded as."""
    return item_id.encode("utf-8", "backslashreplace").decode("utf-8")


def unicode_checked(item: Item) -> Item:
    """The item, as a bad row where its id or text is not valid Unicode; names recorded in the manifest and
    the index (its file, a PDF page's file) with their lone surrogates escaped."""
    names = {name: printable_id(value) for name in ("source", "source_file")
             if (value := getattr(item, name)) and unicode_problem(value)}
    if names:
        item = replace(item, **names)
    if item.id is not None and (problem := unicode_problem(item.id, "id")):
        return replace(item, id=printable_id(item.id), text=None, image=None, error=problem)
    problem = unicode_problem(item.text) if item.error is None and item.text else None
    return item if problem is None else replace(item, text=None, image=None, error=problem)


def check_input(path: Path, options: SourceOptions | None = None, files: list[Path] | None = None) -> None:
    """Raise ``BadInputError`` if ``path`` is no input a reader takes: missing, a file of another kind, or (given
    the run's ``options``) a folder holding both data files and documents the run reads. Cheap (a folder
    is listed, no file is read): ``encode`` asks it of every input before it loads the model (no options yet)."""
    if not _exists(path):
        raise BadInputError(f"{path}: no such file or folder")
    refuse_special_file(path)
    if path.is_file() and not (path.suffix in DATA_SUFFIXES or path.suffix.lower() == ".pdf"):
        raise BadInputError(f"{path}: unsupported input (expected .parquet, .jsonl, .pdf or a folder)")
    if path.is_dir() and options is not None:
        _check_not_mixed(path, walk_files(path) if files is None else files, options)  # files: its walk, if made


def _exists(path: Path) -> bool:
    """Whether ``path`` is there; one in a folder this user may not search (another user's home) is bad input."""
    return kind_or_refused(path, BadInputError, str(path)) is not None


def is_data_file(path: Path) -> bool:
    """A Parquet or JSONL file: a folder holding one is read for its data files."""
    return path.suffix in DATA_SUFFIXES


def taken_suffixes(options: SourceOptions) -> set[str]:
    """The suffixes of the files the run's folder readers take (text files case-sensitively, others in any case:
    ``is_taken``): by modality, and videos only where the model encodes them."""
    videos = set(VIDEO_SUFFIXES) if options.video_refusal is None else set()
    return {
        "text": set(TEXT_SUFFIXES) | {".pdf"},
        "image": set(IMAGE_SUFFIXES) | videos | {".pdf"},
        "auto": set(TEXT_SUFFIXES) | set(IMAGE_SUFFIXES) | videos | {".pdf"},
    }[options.modality]


def is_taken(path: Path, taken: set[str]) -> bool:
    return path.suffix in taken or path.suffix.lower() in taken - set(TEXT_SUFFIXES)


def _check_not_mixed(folder: Path, files: list[Path], options: SourceOptions) -> None:
    """A folder holding both data files and documents this run's readers take is refused: reading it for its data
    files alone deleted every document from the index (exit 0), and which of the two the user means cannot be
    told. (A file no reader of the run takes, an image beside a text model's data, is listed as ignored.)"""
    data = [file for file in files if is_data_file(file)]
    taken = taken_suffixes(options)
    documents = [file for file in files if is_taken(file, taken) and not _is_dataset_card(file)] if data else []
    if documents:
        raise BadInputError(
            f"{folder}: the folder holds both data files ({_a_few(folder, data)}) and documents "
            f"({_a_few(folder, documents)}); a folder is read for its Parquet/JSONL files or for its documents, not both",
            hint="give the data files as inputs (each .parquet / .jsonl path), or move them out of the documents' folder",
        )


def _is_dataset_card(file: Path) -> bool:
    """A README beside data files (a Hugging Face dataset folder's card): listed as ignored, not a document."""
    return file.stem.lower() == "readme"


def _a_few(folder: Path, files: list[Path], shown: int = 3) -> str:
    names = ", ".join(file.relative_to(folder).as_posix() for file in files[:shown])
    return names + (f" and {len(files) - shown} more" if len(files) > shown else "")


def _readers(path: Path, options: SourceOptions) -> list:
    from tokembed.sources.jsonl import read_jsonl
    from tokembed.sources.parquet import read_parquet

    files = files_of(path, options.walks) if path.is_dir() else None
    check_input(path, options, files)
    if path.is_file():
        if path.suffix == ".parquet":
            return [(path, read_parquet)]
        if path.suffix == ".jsonl":
            return [(path, read_jsonl)]
        from tokembed.sources.pdf import read_pdf_file

        return [(path, read_pdf_file)]
    data_files = [file for file in files if is_data_file(file)]
    if data_files:  # a folder of Parquet / JSONL files (and no documents: check_input) is read for those, in path order
        return [(file, read_parquet if file.suffix == ".parquet" else read_jsonl) for file in data_files]
    return _folder_readers(path, options, files)


def _folder_readers(path: Path, options: SourceOptions, files: list[Path]) -> list:
    """A folder of text files, images and/or PDFs: read what the modality asks for (PDFs in any modality:
    their text layer for text models, their rendered pages for image models; videos where the model takes them)."""
    from tokembed.sources.images import read_image_folder
    from tokembed.sources.pdf import PDF_SUFFIX, read_pdf_folder
    from tokembed.sources.textdir import read_text_folder

    modality = options.modality
    suffixes = {p.suffix for p in files}
    has_text = bool(suffixes & set(TEXT_SUFFIXES))
    has_images = bool({suffix.lower() for suffix in suffixes} & set(IMAGE_SUFFIXES))
    has_pdfs = PDF_SUFFIX in {suffix.lower() for suffix in suffixes}
    has_videos = bool({suffix.lower() for suffix in suffixes} & set(VIDEO_SUFFIXES))
    readers = []
    if has_text and modality in ("text", "auto"):
        readers.append((path, read_text_folder))
    if has_images and modality in ("image", "auto"):
        readers.append((path, read_image_folder))
    if has_pdfs:
        readers.append((path, read_pdf_folder))
    if has_videos and modality in ("image", "auto") and options.video_refusal is None:
        from tokembed.sources.video import read_video_folder

        readers.append((path, read_video_folder))
    if readers:
        return readers
    if has_videos and modality != "text":
        raise BadInputError(f"{path}: a folder of videos, but {options.video_refusal}",
                            hint="tokembed models lists the families that take videos (ColQwen3.5)")
    if has_images or has_videos:
        raise BadInputError(
            f"{path}: a folder of {'images' if has_images else 'videos'}, but this run encodes text",
            hint="images are the documents of a vision retrieval model (ColPali, ColQwen2, ...; tokembed models lists "
                 "them); with --kind query it encodes text queries",
        )
    if has_text:
        raise BadInputError(
            f"{path}: a folder of text files, but this model encodes documents as images",
            hint="pass a folder of images or a Parquet/JSONL file with an image column",
        )
    raise BadInputError(
        f"{path}: folder holds no .parquet, .jsonl, .txt, .md, .pdf or image ({', '.join(IMAGE_SUFFIXES)}) files"
    )


def ignored_files(inputs: list[Path], options: SourceOptions, output: Path | None = None) -> list[str]:
    """Files in input folders that no reader of this run takes (``.docx``, ``.xlsx``, images for a text
    model, a data folder's ``_SUCCESS``, ...), in path order. A folder of Parquet/JSONL files is read for those
    files only (it holds no documents: ``check_input``), so every other file of it is listed."""
    taken = taken_suffixes(options)
    ignored = []
    for path in inputs:
        files = files_of(path, options.walks, skip=output) if path.is_dir() else []  # not the index's own files
        if any(is_data_file(file) for file in files):
            ignored += [str(p) for p in files if not is_data_file(p)]
            continue
        ignored += [str(p) for p in files if not is_taken(p, taken)]
    return ignored


def wanted_columns(source: str, names: list[str], options: SourceOptions, what: str = "column") -> tuple[bool, bool]:
    """Which of the text and image columns a Parquet file (or JSONL record: ``what="field"``) is read for.

    Raises ``BadInputError`` naming the missing column and the ones there are.
    """
    if problem := missing_columns(names, options, what):
        raise BadInputError(f"{source}: {problem}")
    return columns_read(names, options)


def columns_read(names: list[str], options: SourceOptions) -> tuple[bool, bool]:
    """(text read, image read) where ``missing_columns`` found nothing missing."""
    if options.modality == "auto":
        return options.text_column in names, options.image_column in names
    return options.modality == "text", options.modality == "image"


def missing_columns(names: list[str], options: SourceOptions, what: str = "column") -> str | None:
    """Why a file's columns (a record's fields) lack what this run reads, or None."""
    has_text, has_image = options.text_column in names, options.image_column in names
    found = f"({what}s: {', '.join(names)})"
    text_column, image_column = f"text {what} {options.text_column!r}", f"image {what} {options.image_column!r}"
    if options.modality == "text" and not has_text:
        return f"no {text_column} {found}"
    if options.modality == "image" and not has_image:
        return f"no {image_column} {found}"
    if options.modality == "auto":
        if options.image_column_given and not has_image:
            return f"no {image_column} {found}"
        if not (has_text or has_image):
            return f"no {text_column} or {image_column} {found}"
    return None


def estimate_rows(inputs: list[Path], options: SourceOptions | None = None) -> int | None:
    """Row count for the progress bar where it is cheap to know (Parquet metadata, folders of text, image or video
    files: one row each). A Parquet column of PDFs gives more rows (pages) than this: the bar drops a total it
    passes."""
    import pyarrow.parquet as pq

    taken, total = taken_suffixes(options or SourceOptions()), 0
    for path in inputs:
        try:
            if path.is_file() and path.suffix == ".parquet":
                total += pq.ParquetFile(arrow_readable(path)).metadata.num_rows
            elif path.is_dir():
                files = files_of(path, options and options.walks)
                if any(p.suffix == ".jsonl" for p in files):
                    return None  # lines are known once read
                parquet = [p for p in files if p.suffix == ".parquet"]
                if any(map(special_file_problem, parquet)):
                    return None  # never opened for a count (a FIFO blocks): its reader names it
                if not parquet and any(p.suffix.lower() == ".pdf" for p in files):
                    return None  # pages are known once each PDF is opened
                if parquet:
                    total += sum(pq.ParquetFile(arrow_readable(p)).metadata.num_rows for p in parquet)
                else:
                    total += sum(1 for p in files if is_taken(p, taken))  # PDFs are not among them (above)
            else:
                return None
        except Exception:  # a bad file is reported by the reader with its reason; the bar just has no total
            return None
    return total
