#!/usr/bin/env python3
"""Build sample_data/pdfs/handbook.pdf, the PDF of the README's PDF quickstart, from sample_data itself.

Pages 1-4: four passages of sample_data/passages/part1.jsonl as text (standard Helvetica, a real text
layer: what text models read). Pages 5-7: three page images of sample_data/images placed as scans
(no text layer: text models index them as empty rows, image models see them rendered).
Generated with pypdfium2 only (pip install 'tokembed[pdf]'); deterministic page content.

Usage: python sample_data/make_pdf.py
"""

import ctypes
import json
import textwrap
from pathlib import Path

import pypdfium2 as pdfium
import pypdfium2.raw as raw
from PIL import Image

HERE = Path(__file__).resolve().parent
OUT = HERE / "pdfs" / "handbook.pdf"
LETTER = (612.0, 792.0)  # points
SCANS = ["02-sales-table.png", "05-invoice.png", "13-boarding-pass.png"]


def add_text_page(document, title: str, text: str) -> None:
    page = document.new_page(*LETTER)
    lines = [title, ""] + textwrap.wrap(text, 88)
    for number, line in enumerate(lines):
        size = 16.0 if number == 0 else 11.0
        obj = raw.FPDFPageObj_NewTextObj(document.raw, b"Helvetica-Bold" if number == 0 else b"Helvetica", size)
        encoded = ctypes.create_string_buffer((line + "\0").encode("utf-16-le"))
        raw.FPDFText_SetText(obj, ctypes.cast(encoded, ctypes.POINTER(raw.FPDF_WCHAR)))
        raw.FPDFPageObj_Transform(obj, 1, 0, 0, 1, 60, LETTER[1] - 72 - 16 * number)
        raw.FPDFPage_InsertObject(page.raw, obj)
    raw.FPDFPage_GenerateContent(page.raw)
    page.close()


def add_scan_page(document, image_path: Path) -> None:
    page = document.new_page(*LETTER)
    with Image.open(image_path) as image:
        pil = image.convert("RGB")
    scale = min((LETTER[0] - 72) / pil.width, (LETTER[1] - 72) / pil.height)
    width, height = pil.width * scale, pil.height * scale
    obj = pdfium.PdfImage.new(document)
    bitmap = pdfium.PdfBitmap.from_pil(pil)
    obj.set_bitmap(bitmap)
    obj.set_matrix(pdfium.PdfMatrix().scale(width, height).translate((LETTER[0] - width) / 2, LETTER[1] - 36 - height))
    page.insert_obj(obj)
    page.gen_content()
    bitmap.close()
    page.close()


def main() -> None:
    passages = [json.loads(line) for line in (HERE / "passages" / "part1.jsonl").read_text().splitlines()[:4]]
    document = pdfium.PdfDocument.new()
    for passage in passages:
        add_text_page(document, passage["id"], passage["text"])
    for name in SCANS:
        add_scan_page(document, HERE / "images" / name)
    OUT.parent.mkdir(exist_ok=True)
    document.save(str(OUT))
    document.close()
    print(f"{OUT.relative_to(HERE.parent)}: {len(passages) + len(SCANS)} pages")


if __name__ == "__main__":
    main()
