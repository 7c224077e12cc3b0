"""PDFs as corpora of pages: one item per page, rendered for image models, its text layer for text models.

Stage: sources. In: a ``.pdf`` file in an input folder, or a PDF held by a Parquet/JSONL cell (bytes, a
path relative to the file, or the ``datasets`` struct ``{bytes, path}``; the ``--pdf-column``, or the image
column when it holds PDFs). Out: ``Item`` per page, id ``<base>#page=N`` (1-based, the PDF open-parameters
convention) where ``<base>`` is the file's path relative to the folder (or the row's id for a cell), with
``source_file=<base>`` and ``page=N`` kept as index columns.

Everything goes through pypdfium2 (PDFium's wheels: Apache-2.0/BSD, no system binaries):

* image models get the page rendered at ``--pdf-dpi`` (scale = dpi / 72 points), RGB on a white
  background, forms and annotations drawn; ``image_sha256`` is the digest of those pixels with the DPI,
  so the content hash is that of what the model sees and an edited page alone is re-encoded;
* text models get the page's text layer (``PdfTextPage.get_text_range``); a page without one is an
  item with empty text (``is_empty_page``), written as a row with no tokens and listed in the manifest.

Pages are produced lazily, one at a time, so a chunk holds at most ``image_chunk_rows`` rendered pages (and
``image_chunk_pixels`` pixels: large pages at a high dpi make shorter chunks) however long the PDF. A PDF that cannot be opened (encrypted without the right ``--pdf-password``,
truncated, corrupt) is one item error named after the file; a page that fails to render is an item
error named after that page; a PDF with zero pages is a recorded skip whatever ``--on-error`` says.
PDFium is not thread-safe: only the reading thread calls it, or, with ``--pdf-workers N``, N worker processes
that render pages for image models (``pdf_workers``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tokembed.errors import UsageError
from tokembed.locale_names import refuse_misread_cell
from tokembed.open_files import refuse_out_of_descriptors
from tokembed.sources.base import Item, SourceOptions, unicode_problem
from tokembed.sources.chunks import chunk_size, chunked
from tokembed.sources.files import folder_files, special_file_problem
from tokembed.sources.path_cells import cell_path, file_problem

PDF_SUFFIX = ".pdf"
DEFAULT_PDF_DPI = 144
POINTS_PER_INCH = 72.0
WHITE = (255, 255, 255, 255)


class PdfOpenError(Exception):
    """Why a whole PDF cannot be read; ``zero_pages`` marks the recorded-skip case, ``wrong_password`` a password
    given that does not open it."""

    def __init__(self, reason: str, zero_pages: bool = False, wrong_password: bool = False) -> None:
        super().__init__(reason)
        self.zero_pages = zero_pages
        self.wrong_password = wrong_password


def is_pdf_file(path: Path) -> bool:
    return path.suffix.lower() == PDF_SUFFIX


def pdf_files(folder: Path, walks=None) -> list[Path]:
    return folder_files(folder, is_pdf_file, walks)


def is_empty_page(item: Item) -> bool:
    """A PDF page read for its text that has no text layer: indexed as a row with no tokens."""
    return item.page is not None and item.image is None and item.error is None and not (item.text or "").strip()


# -- a folder of PDFs -----------------------------------------------------------------------------------


def read_pdf_folder(folder: Path, options: SourceOptions, offset: int) -> Iterator[list[Item]]:
    """Every page of every PDF under ``folder``, in path then page order."""
    items = (
        page
        for file in pdf_files(folder, options.walks)
        for page in pdf_pages(file, file.relative_to(folder).as_posix(), str(file), 0, options)
    )
    return chunked(items, chunk_size(options, images=options.modality == "image"), options.image_chunk_pixels)


def read_pdf_file(file: Path, options: SourceOptions, offset: int) -> Iterator[list[Item]]:
    """A PDF given as INPUT: its pages, ids ``<file name>#page=N``."""
    items = pdf_pages(file, file.name, str(file), 0, options)
    return chunked(items, chunk_size(options, images=options.modality == "image"), options.image_chunk_pixels)


def pdf_pages(pdf: Path | bytes, base_id: str, source: str, row: int, options: SourceOptions) -> Iterator[Item]:
    """One item per page of ``pdf`` (a path, or the document's bytes), or one item error for the file."""
    try:
        document = open_pdf(pdf, options.pdf_password)
    except PdfOpenError as exc:
        yield Item(base_id, None, source, row, error=str(exc), skip_always=exc.zero_pages, source_file=base_id)
        return
    try:
        count = len(document)
        if count == 0:
            yield Item(base_id, None, source, row, error="the PDF has zero pages", skip_always=True, source_file=base_id)
            return
        if options.modality == "image" and options.pdf_workers:
            yield from _pages_from_workers(pdf, count, base_id, source, row, options)
            return
        for number in range(1, count + 1):
            yield _page_item(document, number, base_id, source, row, options)
    finally:
        document.close()


def _pages_from_workers(pdf: Path | bytes, count: int, base_id: str, source: str, row: int, options: SourceOptions) -> Iterator[Item]:
    """The pages rendered by ``--pdf-workers`` processes (``pdf_workers``): the same items as ``_page_item``'s."""
    from tokembed.sources.pdf_workers import rendered_pages

    pages = rendered_pages(pdf, count, options.pdf_workers, options.pdf_password, options.pdf_dpi, options.max_image_pixels)
    for number, (image, digest, error) in enumerate(pages, start=1):
        yield _page_row(base_id, source, row, number, image=image, image_sha256=digest, error=error)


def open_pdf(pdf: Path | bytes, password: str | None):
    """A ``pypdfium2.PdfDocument``, or ``PdfOpenError`` with a one-line reason. A PDF that ``password`` does not
    open is tried with none: PDFium does not fall back to the empty user password, so an owner-password-only PDF
    (permissions restricted, opens without a password) would fail whenever ``--pdf-password`` is given for others."""
    try:
        return _open_pdf(pdf, password)
    except PdfOpenError as exc:
        if password is None or not exc.wrong_password:
            raise
        try:
            return _open_pdf(pdf, None)
        except PdfOpenError:
            raise exc from None


def _open_pdf(pdf: Path | bytes, password: str | None):
    pdfium = _pypdfium2()
    import pypdfium2.raw as raw

    if isinstance(pdf, (bytes, bytearray)) and not pdf:
        raise PdfOpenError("empty PDF (0 bytes)")
    if isinstance(pdf, Path) and (problem := _unencodable_path(pdf)):  # a JSONL path cell holding JSON's \ud800
        raise PdfOpenError(problem)
    if isinstance(pdf, Path) and (problem := special_file_problem(pdf)):  # a FIFO would block PDFium forever
        raise PdfOpenError(problem)
    try:
        return pdfium.PdfDocument(pdf if isinstance(pdf, bytes) else _absolute(pdf), password=password)
    except FileNotFoundError:
        raise PdfOpenError(f"PDF file not found: {pdf}") from None
    except pdfium.PdfiumError as exc:
        if _has_no_pages(pdf, password):
            raise PdfOpenError("the PDF has zero pages", zero_pages=True) from None
        code = getattr(exc, "err_code", None)
        if code == raw.FPDF_ERR_PASSWORD:
            if password is None:
                raise PdfOpenError("encrypted PDF: pass its password with --pdf-password") from None
            raise PdfOpenError("encrypted PDF: --pdf-password is not its password", wrong_password=True) from None
        if code == raw.FPDF_ERR_SECURITY:
            raise PdfOpenError("PDF uses an unsupported security handler (encryption)") from None
        if code == raw.FPDF_ERR_FORMAT:
            raise PdfOpenError("not a valid PDF (truncated or corrupt: PDFium cannot parse it)") from None
        if code == raw.FPDF_ERR_FILE:
            raise _file_error(pdf) from None
        raise PdfOpenError(f"cannot open the PDF ({exc})") from None
    except OSError as exc:
        refuse_out_of_descriptors(pdf, exc)
        raise PdfOpenError(f"cannot read the PDF file ({exc.strerror or exc})") from None
    except RuntimeError as exc:  # pypdfium2 resolves the path: a link to itself is "Symlink loop from ..."
        raise PdfOpenError(f"cannot read the PDF file ({exc})") from None


def _absolute(pdf: Path) -> Path:
    """``pdf`` from the current folder, its ``..`` kept: pypdfium2 expands a leading "~" itself (a cell's
    "~old/a.pdf" beside the file: README "Paths") and resolves the path, following a link before the ``..`` after
    it as the kernel does; ``os.path.abspath`` dropped ``link/..`` as text, another file (``store/2024/pdfs/a.pdf``
    read through ``corpus -> store/2024/data`` as ``corpus/../pdfs/a.pdf`` was ``./pdfs/a.pdf``)."""
    return pdf if pdf.is_absolute() else Path.cwd() / pdf


def _file_error(pdf: Path | bytes) -> PdfOpenError:
    """Why PDFium could not read ``pdf`` (FPDF_ERR_FILE, which keeps no errno): the file is opened here to learn it,
    and an open refused for want of descriptors (EMFILE) is the limit's error, not the file's."""
    if isinstance(pdf, Path):
        try:
            os.close(os.open(pdf, os.O_RDONLY))
        except OSError as exc:
            refuse_out_of_descriptors(pdf, exc)
            return PdfOpenError(f"cannot read the PDF file ({exc.strerror or exc})")
    return PdfOpenError("cannot read the PDF file")


def _unencodable_path(pdf: Path) -> str | None:
    """Why ``pdf`` names no file the OS could have (a lone surrogate that is no undecodable file-name byte), or
    None. A name that is not UTF-8 (a Latin-1 ``r\\xe9sum\\xe9.pdf``) encodes back to its bytes."""
    try:
        os.fsencode(pdf)
    except UnicodeEncodeError:
        return unicode_problem(str(pdf), "the PDF path") or "the PDF path cannot be encoded for the file system"
    return None


def check_pdf_password(password: str | None) -> None:
    """``UsageError`` (exit 2) for a ``--pdf-password`` that is not valid UTF-8 (its bytes kept as lone surrogates
    by Python's argument decoding): PDFium takes passwords as UTF-8, so it could open no PDF."""
    if password is not None and unicode_problem(password):
        raise UsageError("--pdf-password is not valid UTF-8 (PDF passwords are given to PDFium as UTF-8 text)",
                         hint="give it from a UTF-8 terminal or locale (LANG=C.UTF-8)")


def _pypdfium2():
    try:
        import pypdfium2
    except ImportError:
        raise UsageError("PDF input needs pypdfium2, which is not installed", hint="pip install 'tokembed[pdf]'") from None
    return pypdfium2


def _has_no_pages(pdf: Path | bytes, password: str | None) -> bool:
    """pypdfium2 reports a document without pages as a failed load, with PDFium's last error code, which
    PDFium did not set for it (a stale code from an earlier file): load it once more through the raw API
    to tell an empty page tree from a real failure."""
    import pypdfium2.raw as raw

    secret = None if password is None else password.encode("utf-8") + b"\0"  # as pypdfium2 encodes it
    if isinstance(pdf, bytes):
        handle = raw.FPDF_LoadMemDocument64(pdf, len(pdf), secret)
    else:
        handle = raw.FPDF_LoadDocument(os.fsencode(pdf) + b"\0", secret)  # a file name need not be UTF-8
    if not handle:
        return False
    try:
        return raw.FPDF_GetPageCount(handle) == 0
    finally:
        raw.FPDF_CloseDocument(handle)


def _page_item(document, number: int, base_id: str, source: str, row: int, options: SourceOptions) -> Item:
    page = None
    try:
        page = document[number - 1]
        if options.modality == "image":
            size, pixels, digest = render_hashed(page, options.pdf_dpi, options.max_image_pixels)
            return _page_row(base_id, source, row, number, image=page_image(size, pixels), image_sha256=digest)
        return _page_row(base_id, source, row, number, text=page_text(page))
    except Exception as exc:  # PdfiumError, MemoryError, a page over the pixel limit, ...
        refuse_out_of_descriptors(source, exc)
        return _page_row(base_id, source, row, number, error=page_error(options.modality, number, exc))
    finally:
        if page is not None:
            page.close()


def _page_row(base_id: str, source: str, row: int, number: int, text: str | None = None, **fields) -> Item:
    """Page ``number`` of the PDF ``base_id`` as an item: id ``<base_id>#page=N``, with its file and page."""
    return Item(f"{base_id}#page={number}", text, source, row, source_file=base_id, page=number, **fields)


def page_error(modality: str, number: int, exc: Exception) -> str:
    """Why page ``number`` is a bad row (the same text from the reading thread and from a render worker)."""
    what = "render" if modality == "image" else "read the text of"
    return f"cannot {what} page {number}: {str(exc) or type(exc).__name__}"


def render_hashed(page, dpi: float, max_pixels: int) -> tuple[tuple[int, int], bytes, str]:
    """``render_pixels`` and the ``page_digest`` of those pixels."""
    size, pixels = render_pixels(page, dpi, max_pixels)
    return size, pixels, page_digest(size, pixels, dpi)


def render_pixels(page, dpi: float, max_pixels: int) -> tuple[tuple[int, int], bytes]:
    """One page -> ``((width, height), RGB pixels row by row)`` at ``dpi``, on white; refuses pages over
    ``max_pixels`` before rendering. PDFium writes the channels in RGB order (``rev_byteorder``): the pixels
    ``PdfBitmap.to_pil`` gives from its BGR bitmap, without that conversion pass."""
    scale = dpi / POINTS_PER_INCH
    width, height = page.get_size()  # points, rotation applied
    pixels = round(width * scale) * round(height * scale)
    if pixels > max_pixels:
        raise ValueError(
            f"{width:.0f}x{height:.0f} pt at {dpi:g} dpi is {pixels} pixels, over the limit of {max_pixels} "
            "(lower --pdf-dpi or raise --max-image-pixels)"
        )
    bitmap = page.render(scale=scale, fill_color=WHITE, may_draw_forms=True, rev_byteorder=True)
    try:
        if bitmap.n_channels == 3 and bitmap.stride == bitmap.width * 3:  # rows unpadded, as pypdfium2 allocates them
            return (bitmap.width, bitmap.height), bytes(memoryview(bitmap.buffer).cast("B"))
        image = bitmap.to_pil().convert("RGB")  # another layout: let Pillow read it
        return image.size, image.tobytes()
    finally:
        bitmap.close()


def page_image(size: tuple[int, int], pixels: bytes):
    from PIL import Image

    return Image.frombytes("RGB", size, pixels)


def page_digest(size: tuple[int, int], pixels: bytes, dpi: float) -> str:
    """sha256 of what an image model sees of a page: the DPI, the size and the RGB pixels."""
    digest = hashlib.sha256(f"pdf page {size[0]}x{size[1]} at {dpi:g} dpi\0".encode())
    digest.update(pixels)
    return digest.hexdigest()


def page_text(page) -> str:
    textpage = page.get_textpage()
    try:
        return textpage.get_text_range()
    finally:
        textpage.close()


# -- PDFs in a Parquet/JSONL column ---------------------------------------------------------------------


def pdf_in_value(value: Any, base: Path) -> bytes | Path | None:
    """The PDF a cell holds (its bytes, or its file), or None when the cell holds no PDF."""
    if isinstance(value, dict):
        if value.get("bytes") is not None:  # the bytes are the content; the path is only a name then
            return pdf_in_value(value["bytes"], base)
        path = value.get("path")
        return pdf_in_value(path, base) if isinstance(path, str) else None
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        return data if data[:1024].lstrip().startswith(b"%PDF-") else None
    if isinstance(value, str) and value.lower().endswith(PDF_SUFFIX) and not value.startswith("data:"):
        return cell_path(value, base)
    return None


def row_pages(item: Item, value: Any, base: Path, options: SourceOptions) -> Iterator[Item]:
    """A row whose cell holds a PDF -> one item per page, ids ``<row id>#page=N``."""
    pdf = pdf_in_value(value, base)
    if pdf is None:
        reason = "null PDF" if value is None else f"the {options.pdf_column!r} value is not a PDF (bytes, a .pdf path or {{bytes, path}})"
        yield Item(item.id, None, item.source, item.row, error=reason)
        return
    if isinstance(pdf, Path):
        refuse_misread_cell(pdf, f"{item.location}: PDF file")
        if problem := file_problem(pdf, str(pdf), "PDF"):  # a NUL (ValueError), a folder ("not found")
            yield Item(item.id, None, item.source, item.row, error=problem, source_file=item.id)
            return
    yield from pdf_pages(pdf, item.id, item.source, item.row, options)
