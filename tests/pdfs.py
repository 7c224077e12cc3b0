"""PDFs built by the tests, never downloaded: Pillow writes image-only multi-page PDFs, pypdfium2 adds
pages with a text layer (standard Helvetica, no font file needed), pypdf encrypts."""

from __future__ import annotations

import ctypes
import io
from pathlib import Path


def image_pdf(path: Path, colors: list[tuple[int, int, int]], size=(120, 160), resolution: float = 72.0) -> Path:
    """One page per colour, each with a dark bar whose place depends on the page number (pages differ);
    ``size`` in pixels, pages of ``size`` / ``resolution`` inches."""
    from PIL import Image, ImageDraw

    pages = []
    for number, color in enumerate(colors):
        page = Image.new("RGB", size, color)
        ImageDraw.Draw(page).rectangle([10, 10 + 12 * (number % 10), 110, 18 + 12 * (number % 10)], fill=(20, 20, 20))
        pages.append(page)
    buffer = io.BytesIO()
    pages[0].save(buffer, "PDF", save_all=True, append_images=pages[1:], resolution=resolution)
    path.write_bytes(buffer.getvalue())
    return path


def text_pdf(path: Path, texts: list[str], size=(200.0, 260.0)) -> Path:
    """One page per text (lines split on newlines); an empty text makes a page without a text layer."""
    import pypdfium2 as pdfium
    import pypdfium2.raw as raw

    document = pdfium.PdfDocument.new()
    for text in texts:
        page = document.new_page(*size)
        for line_number, line in enumerate(text.splitlines()):
            obj = raw.FPDFPageObj_NewTextObj(document.raw, b"Helvetica", 11.0)
            encoded = ctypes.create_string_buffer((line + "\0").encode("utf-16-le"))
            raw.FPDFText_SetText(obj, ctypes.cast(encoded, ctypes.POINTER(raw.FPDF_WCHAR)))
            raw.FPDFPageObj_Transform(obj, 1, 0, 0, 1, 12, size[1] - 24 - 14 * line_number)
            raw.FPDFPage_InsertObject(page.raw, obj)
        raw.FPDFPage_GenerateContent(page.raw)
        page.close()
    buffer = io.BytesIO()
    document.save(buffer)
    document.close()
    path.write_bytes(buffer.getvalue())
    return path


def encrypt(path: Path, password: str, owner_password: str | None = None) -> Path:
    """``password`` opens it; ``password=""`` with an ``owner_password``: an owner-password-only PDF (permissions
    restricted, opened by anyone without a password)."""
    from pypdf import PdfWriter

    writer = PdfWriter(clone_from=io.BytesIO(path.read_bytes()))
    writer.encrypt(password, owner_password)
    buffer = io.BytesIO()
    writer.write(buffer)
    path.write_bytes(buffer.getvalue())
    return path


def zero_page_pdf(path: Path) -> Path:
    from pypdf import PdfWriter

    buffer = io.BytesIO()
    PdfWriter().write(buffer)
    path.write_bytes(buffer.getvalue())
    return path


def render_directly(path: Path, number: int, dpi: float):
    """What pypdfium2 itself renders for page ``number`` (1-based): the reference for pixel identity."""
    import pypdfium2 as pdfium

    document = pdfium.PdfDocument(str(path))
    try:
        return document[number - 1].render(scale=dpi / 72).to_pil().convert("RGB")
    finally:
        document.close()


def extract_directly(path: Path, number: int) -> str:
    import pypdfium2 as pdfium

    document = pdfium.PdfDocument(str(path))
    try:
        return document[number - 1].get_textpage().get_text_range()
    finally:
        document.close()
