"""PDFs in, pages out (issue #18): folders and columns of PDFs become one row per page, rendered for image
models (pixel-identical to pypdfium2) and read as text for text models; incremental by page; bad PDFs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from helpers import manifest, read_index, write_jsonl, write_manifest, write_parquet
from pdfs import encrypt, extract_directly, image_pdf, render_directly, text_pdf, zero_page_pdf
from tokembed.sources import SourceOptions, open_sources

SAMPLE_IMAGES = Path(__file__).resolve().parent.parent / "sample_data" / "images"
PAGES = ["ColBERT scores with MaxSim\nover token vectors", "", "PDF pages are rows\nof the index"]
COLORS = [(250, 250, 250), (200, 220, 255), (255, 230, 200), (220, 255, 220)]


@pytest.fixture(scope="module")
def colpali(tmp_path_factory):
    from vision_checkpoints import build_colpali

    return build_colpali(tmp_path_factory.mktemp("vision") / "colpali")


def read_items(paths, **options):
    return [item for chunk in open_sources([Path(p) for p in paths], SourceOptions(**options)) for item in chunk]


def shard_columns(out: Path) -> dict[str, tuple]:
    """id -> (source_file, page) as stored in the shards."""
    from tokembed.index import open_index

    rows = {}
    for batch in open_index(out).iter_batches(["id", "source_file", "page"]):
        for item_id, source, page in zip(*(batch.column(n).to_pylist() for n in ("id", "source_file", "page"))):
            rows[item_id] = (source, page)
    return rows


def test_text_model_reads_text_layer_one_row_per_page(cli, checkpoint, tmp_path):
    from tokembed.embedder import Embedder
    from tokembed.settings import EncodeFlags

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("a plain text file")
    text_pdf(docs / "t.pdf", PAGES)
    (docs / "b.docx").write_bytes(b"PK\x03\x04 not read")
    out, model = tmp_path / "index", checkpoint("stanford")
    result = cli("encode", docs, "--model", model, "-o", out, "--store-dtype", "float32")
    assert result.exit_code == 0, result.output
    assert "ignored 1 file(s)" in result.stderr and "b.docx" in result.stderr
    assert "1 PDF page(s) without a text layer" in result.stderr
    rows = read_index(out)
    assert list(rows) == ["a.txt", "t.pdf#page=1", "t.pdf#page=2", "t.pdf#page=3"]
    embedder = Embedder.load(str(model), EncodeFlags(store_dtype="float32"))
    for number in (1, 3):
        text = extract_directly(docs / "t.pdf", number)
        assert text.split() == PAGES[number - 1].split()  # the text layer came through
        (alone, ids), = embedder.embed([text])
        stored, stored_ids = rows[f"t.pdf#page={number}"]
        assert stored_ids.tolist() == ids.tolist() and np.abs(alone - stored).max() <= 1e-5
    assert rows["t.pdf#page=2"][0].shape[0] == 0  # no text layer: a row with no tokens
    data = manifest(out)
    assert data["empty_pages"] == [{"id": "t.pdf#page=2", "source_file": "t.pdf", "page": 2}]
    assert data["ignored"] == [str(docs / "b.docx")]
    assert data["pdf"]["files"] == 1 and data["pdf"]["pages"] == 3
    assert shard_columns(out) == {"a.txt": (None, None), **{f"t.pdf#page={n}": ("t.pdf", n) for n in (1, 2, 3)}}
    info = cli("info", out, "--json")
    facts = json.loads(info.stdout)
    assert facts["pdf_files"] == 1 and facts["pdf_pages"] == 3 and facts["ignored_files"] == 1
    summary = cli("encode", docs, "--model", model, "-o", out, "--store-dtype", "float32", "--log-format", "json")
    stats = json.loads(summary.stdout)
    assert stats["ignored"] == 1 and stats["ignored_files"] == [str(docs / "b.docx")] and stats["unchanged"] == 4


def test_rendered_pages_are_pypdfium2_pixels_and_their_vectors(cli, colpali, tmp_path):
    from tokembed.embedder import Embedder
    from tokembed.settings import EncodeFlags

    folder = tmp_path / "mixed"
    (folder / "manuals").mkdir(parents=True)
    image = sorted(SAMPLE_IMAGES.iterdir())[0]
    (folder / image.name).write_bytes(image.read_bytes())
    image_pdf(folder / "manuals" / "m.pdf", COLORS[:2])
    text_pdf(folder / "t.pdf", PAGES[:1])

    items = read_items([folder], modality="image", pdf_dpi=100)
    assert [item.id for item in items] == [image.name, "manuals/m.pdf#page=1", "manuals/m.pdf#page=2", "t.pdf#page=1"]
    for item in items[1:]:
        direct = render_directly(folder / item.source_file, item.page, 100)
        assert item.image.mode == "RGB" and np.array_equal(np.asarray(item.image), np.asarray(direct))
    # on white: a page without any drawing renders white, not black or transparent
    assert np.asarray(items[3].image)[-1, -1].tolist() == [255, 255, 255]

    out = tmp_path / "index"
    result = cli("encode", folder, "--model", colpali, "-o", out, "--store-dtype", "float32", "--pdf-dpi", 100)
    assert result.exit_code == 0, result.output
    rows = read_index(out)
    assert list(rows) == [item.id for item in items]
    embedder = Embedder.load(str(colpali), EncodeFlags(store_dtype="float32"))
    (alone, ids), = embedder.embed([items[2].image])
    assert ids.tolist() == rows["manuals/m.pdf#page=2"][1].tolist()
    assert np.abs(alone - rows["manuals/m.pdf#page=2"][0]).max() <= 1e-5
    assert manifest(out)["pdf"] == {"files": 2, "pages": 3, "dpi": 100.0}
    scored = cli("score", out, "--query", "a manual page", "-f", "jsonl", "-k", 4)
    assert scored.exit_code == 0, scored.output
    assert {json.loads(line)["doc_id"] for line in scored.stdout.splitlines()} == set(rows)


def test_one_edited_page_is_the_only_row_re_encoded(cli, colpali, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    image_pdf(docs / "report.pdf", COLORS)
    image_pdf(docs / "other.pdf", COLORS[:1])
    out = tmp_path / "index"

    def run(*extra):
        result = cli("encode", docs, "--model", colpali, "-o", out, "--pdf-dpi", 72, "--log-format", "json", *extra)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    run()
    before = read_index(out)
    image_pdf(docs / "report.pdf", [COLORS[0], (10, 90, 160), *COLORS[2:]])  # page 2 edited
    summary = run()
    assert (summary["updated"], summary["unchanged"], summary["added"], summary["deleted"]) == (1, 4, 0, 0)
    after = read_index(out)
    assert list(after) == list(before)  # ids stable
    changed = [key for key in after if not np.array_equal(after[key][0], before[key][0])]
    assert changed == ["report.pdf#page=2"]

    image_pdf(docs / "report.pdf", [COLORS[0], (10, 90, 160), COLORS[2]])  # page 4 removed
    summary = run()
    assert summary["deleted"] == 1 and summary["unchanged"] == 4
    assert "report.pdf#page=4" not in read_index(out)
    (docs / "other.pdf").unlink()  # a removed PDF leaves the index
    summary = run()
    assert summary["deleted"] == 1 and list(read_index(out)) == [f"report.pdf#page={n}" for n in (1, 2, 3)]
    full = run("--full")  # every row re-encoded, counted against the index it replaces
    assert (full["added"], full["updated"], full["unchanged"], full["deleted"]) == (0, 3, 0, 0)


def test_bad_pdfs_fail_or_skip_naming_file_and_page(cli, checkpoint, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    text_pdf(docs / "good.pdf", ["fine text"])
    out, model = tmp_path / "index", checkpoint("stanford")
    assert cli("encode", docs, "--model", model, "-o", out).exit_code == 0
    committed = (out / "manifest.json").read_bytes()

    encrypt(text_pdf(docs / "secret.pdf", ["hidden words"]), "s3cret")
    failed = cli("encode", docs, "--model", model, "-o", out)
    assert failed.exit_code == 3 and "secret.pdf" in failed.stderr and "--pdf-password" in failed.stderr
    assert (out / "manifest.json").read_bytes() == committed  # previous index untouched
    wrong = cli("encode", docs, "--model", model, "-o", out, "--pdf-password", "nope")
    assert wrong.exit_code == 3 and "not its password" in wrong.stderr
    opened = cli("encode", docs, "--model", model, "-o", out, "--pdf-password", "s3cret")
    assert opened.exit_code == 0, opened.output
    assert "secret.pdf#page=1" in read_index(out)

    whole = text_pdf(tmp_path / "whole.pdf", ["some text", "more text"]).read_bytes()
    (docs / "cut.pdf").write_bytes(whole[: len(whole) // 2])
    zero_page_pdf(docs / "zero.pdf")
    committed = (out / "manifest.json").read_bytes()
    failed = cli("encode", docs, "--model", model, "-o", out, "--pdf-password", "s3cret")
    assert failed.exit_code == 3 and "cut.pdf" in failed.stderr and "truncated or corrupt" in failed.stderr
    assert (out / "manifest.json").read_bytes() == committed
    skipped = cli("encode", docs, "--model", model, "-o", out, "--pdf-password", "s3cret", "--on-error", "skip")
    assert skipped.exit_code == 0, skipped.output
    reasons = {entry["id"]: entry["reason"] for entry in manifest(out)["skipped"]}
    assert set(reasons) == {"cut.pdf", "zero.pdf"}
    assert "truncated or corrupt" in reasons["cut.pdf"] and "zero pages" in reasons["zero.pdf"]
    (docs / "loop.pdf").symlink_to("loop.pdf")  # a link to itself: pypdfium2's RuntimeError was exit 1
    looped = cli("encode", docs, "--model", model, "-o", out, "--pdf-password", "s3cret", "--on-error", "skip")
    assert looped.exit_code == 0, looped.output
    assert "Symlink loop" in {entry["id"]: entry["reason"] for entry in manifest(out)["skipped"]}["loop.pdf"]
    (docs / "loop.pdf").unlink()
    assert sorted(read_index(out)) == ["good.pdf#page=1", "secret.pdf#page=1"]

    (docs / "cut.pdf").unlink()  # a PDF with zero pages alone is a recorded skip, even under --on-error fail
    alone = cli("encode", docs, "--model", model, "-o", out, "--pdf-password", "s3cret", "--log-format", "json")
    assert alone.exit_code == 0, alone.output
    assert [entry["id"] for entry in manifest(out)["skipped"]] == ["zero.pdf"]


def test_an_owner_password_only_pdf_opens_whatever_pdf_password_says(tmp_path):
    """PDFium does not fall back to the empty user password: given --pdf-password for another PDF, a PDF
    restricted by an owner password alone (it opens with no password) was a bad row, "--pdf-password is not
    its password", and a cron run deleted its pages. Read for its text, rendered inline and by --pdf-workers."""
    docs = tmp_path / "docs"
    docs.mkdir()
    encrypt(text_pdf(docs / "restricted.pdf", ["owner only words"]), "", owner_password="own")
    encrypt(text_pdf(docs / "secret.pdf", ["hidden words"]), "s3cret")
    expected = {"restricted.pdf#page=1": "owner only words", "secret.pdf#page=1": "hidden words"}
    for password in (None, "s3cret", "own"):
        items = {item.id: item for item in read_items([docs], pdf_password=password)}
        assert items["restricted.pdf#page=1"].error is None, password
        assert items["restricted.pdf#page=1"].text.split() == ["owner", "only", "words"], password
    opened = {item.id: item.text.strip() for item in read_items([docs], pdf_password="s3cret")}
    assert opened == expected
    wrong = {item.id: item.error for item in read_items([docs], pdf_password="nope")}
    assert wrong == {"restricted.pdf#page=1": None, "secret.pdf": "encrypted PDF: --pdf-password is not its password"}
    direct = np.asarray(render_directly(docs / "restricted.pdf", 1, 72))
    for workers in (0, 1):
        pages = {item.id: item for item in read_items([docs], modality="image", pdf_dpi=72, pdf_password="s3cret",
                                                      pdf_workers=workers)}
        assert sorted(pages) == sorted(expected) and all(page.error is None for page in pages.values()), workers
        assert np.array_equal(np.asarray(pages["restricted.pdf#page=1"].image), direct), workers


def test_a_page_that_fails_to_render_names_file_and_page(cli, colpali, tmp_path, monkeypatch):
    import tokembed.sources.pdf as pdf

    docs = tmp_path / "docs"
    docs.mkdir()
    image_pdf(docs / "scan.pdf", COLORS[:3])
    real = pdf.render_pixels

    def failing(page, dpi, max_pixels):
        if page.get_size()[0] > 0 and failing.calls == 1:
            failing.calls += 1
            raise RuntimeError("PDFium could not render this page")
        failing.calls += 1
        return real(page, dpi, max_pixels)

    failing.calls = 0
    monkeypatch.setattr(pdf, "render_pixels", failing)
    out = tmp_path / "index"
    failed = cli("encode", docs, "--model", colpali, "-o", out, "--pdf-dpi", 72)
    assert failed.exit_code == 3 and "scan.pdf page 2" in failed.stderr and "cannot render page 2" in failed.stderr
    assert not (out / "manifest.json").exists()
    failing.calls = 0
    skipped = cli("encode", docs, "--model", colpali, "-o", out, "--pdf-dpi", 72, "--on-error", "skip")
    assert skipped.exit_code == 0, skipped.output
    assert manifest(out)["skipped"] == [
        {"id": "scan.pdf#page=2", "source": str(docs / "scan.pdf"), "row": 0, "reason": "cannot render page 2: PDFium could not render this page", "page": 2}
    ]
    assert list(read_index(out)) == ["scan.pdf#page=1", "scan.pdf#page=3"]


def test_pdf_columns_parquet_bytes_and_jsonl_paths(tmp_path):
    first = text_pdf(tmp_path / "first.pdf", ["alpha page", "beta page"])
    second = text_pdf(tmp_path / "second.pdf", ["gamma page"])
    table = write_parquet(tmp_path / "docs.parquet", [{"id": "r1", "doc": first.read_bytes()}, {"id": "r2", "doc": second.read_bytes()}])
    items = read_items([table], pdf_column="doc", pdf_column_given=True)
    assert [(i.id, i.source_file, i.page, i.text.strip()) for i in items] == [
        ("r1#page=1", "r1", 1, "alpha page"), ("r1#page=2", "r1", 2, "beta page"), ("r2#page=1", "r2", 1, "gamma page"),
    ]
    import base64

    records = write_jsonl(tmp_path / "pdfs.jsonl", [{"id": "j", "doc": {"bytes": base64.b64encode(second.read_bytes()).decode(), "path": None}}, {"id": "k", "doc": None}])
    items = read_items([records], pdf_column="doc", pdf_column_given=True)
    assert [(i.id, i.text.strip() if i.text else None, i.error) for i in items] == [("j#page=1", "gamma page", None), ("k", None, "line 2: null PDF")]
    # PDFs found in the image column of an image corpus: read as pages, next to ordinary images
    image = sorted(SAMPLE_IMAGES.iterdir())[0]
    (tmp_path / image.name).write_bytes(image.read_bytes())
    records = write_jsonl(tmp_path / "mixed.jsonl", [{"id": "img", "image": image.name}, {"id": "doc", "image": "first.pdf"}])
    items = read_items([records], modality="image", pdf_dpi=72)
    assert [item.id for item in items] == ["img", "doc#page=1", "doc#page=2"]
    assert np.array_equal(np.asarray(items[2].image), np.asarray(render_directly(first, 2, 72)))
    parquet_images = write_parquet(tmp_path / "img.parquet", [{"id": "p", "image": {"bytes": second.read_bytes(), "path": None}}])
    assert [item.id for item in read_items([parquet_images], modality="image", pdf_dpi=72)] == ["p#page=1"]


def test_pdf_rows_stream_a_chunk_at_a_time(tmp_path, monkeypatch):
    """Pages are rendered lazily: reading the first chunk of a long PDF renders that chunk only."""
    import tokembed.sources.pdf as pdf

    long = image_pdf(tmp_path / "long.pdf", [(i * 5 % 256, 100, 150) for i in range(40)], size=(60, 80))
    rendered = []
    real = pdf.render_pixels
    monkeypatch.setattr(pdf, "render_pixels", lambda *args: rendered.append(1) or real(*args))
    chunks = open_sources([long], SourceOptions(modality="image", image_chunk_rows=8))
    first = next(chunks)
    assert len(first) == 8 and len(rendered) == 8
    assert sum(len(chunk) for chunk in chunks) == 32 and len(rendered) == 40


def test_old_shards_without_page_columns_stay_readable(cli, checkpoint, tmp_path):
    """An index written before the source_file/page columns existed still scores and re-runs."""
    import pyarrow.ipc as ipc

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("alpha beta gamma")
    out, model = tmp_path / "index", checkpoint("stanford")
    assert cli("encode", docs, "--model", model, "-o", out).exit_code == 0
    data = manifest(out)
    shard = out / data["shards"][0]["file"]
    table = ipc.open_file(pa.py_buffer(shard.read_bytes())).read_all().drop_columns(["source_file", "page"])
    with ipc.new_file(str(shard), table.schema) as writer:
        writer.write_table(table)
    from tokembed.index.atomic import sha256_file

    data["shards"][0].update(bytes=shard.stat().st_size, sha256=sha256_file(shard))
    write_manifest(out, data)
    assert cli("score", out, "--query", "alpha").exit_code == 0
    assert cli("info", out, "--verify").exit_code == 0
    rerun = cli("encode", docs, "--model", model, "-o", out, "--log-format", "json")
    assert rerun.exit_code == 0 and json.loads(rerun.stdout)["unchanged"] == 1, rerun.output


def test_a_pdf_named_in_latin1_bytes_that_does_not_open_is_a_bad_row(tmp_path):
    """A corrupt or encrypted PDF whose file name is not UTF-8 (``r\\xe9sum\\xe9.pdf`` from an old zip) was a
    UnicodeEncodeError (exit 1) where its raw re-load encoded the name as UTF-8: now the open fails with the
    reason an ASCII name gets, and the file is one bad row under its escaped id."""
    import os

    from tokembed.sources.pdf import PdfOpenError, open_pdf

    for kind in ("corrupt", "encrypted"):
        docs = tmp_path / kind
        docs.mkdir()
        ascii_name = docs / "resume.pdf"
        if kind == "corrupt":
            ascii_name.write_bytes(b"%PDF-1.4 garbage\n")
        else:
            encrypt(text_pdf(ascii_name, ["hidden words"]), "s3cret")
        with pytest.raises(PdfOpenError) as expected:
            open_pdf(ascii_name, "wrong")
        latin1 = Path(os.fsdecode(os.fsencode(docs) + b"/r\xe9sum\xe9.pdf"))
        ascii_name.rename(latin1)
        with pytest.raises(PdfOpenError) as raised:
            open_pdf(latin1, "wrong")
        assert str(raised.value) == str(expected.value), kind
        items = read_items([docs], pdf_password="wrong")
        assert [(item.id, item.error is not None) for item in items] == [("r\\udce9sum\\udce9.pdf", True)], kind


def test_a_pdf_password_that_is_not_utf8_is_a_usage_error(cli, tmp_path):
    """``--pdf-password $'p\\xe9'`` in a Latin-1 terminal reaches Python as a lone surrogate: PDFium's UTF-8
    encoding of it crashed on every PDF (exit 1). It is a bad flag value, exit 2, before the model loads."""
    docs = tmp_path / "docs"
    docs.mkdir()
    text_pdf(docs / "a.pdf", ["plain page"])
    result = cli("encode", docs, "-o", tmp_path / "index", "--pdf-password", "p\udce9", "--on-error", "skip")
    assert result.exit_code == 2, result.output
    assert "--pdf-password is not valid UTF-8" in result.stderr and "\udce9" not in result.stderr


def test_jsonl_pdf_column_bad_records_are_bad_rows(tmp_path):
    """A record without the PDF field is a bad row, as one without the text field (it stopped the run, exit 3,
    under --on-error skip); a file where no record has it is exit 3. A path holding JSON's ``\\ud800`` escape is a
    bad row (it was a UnicodeEncodeError, exit 1). An explicit --id-column the first record lacks is exit 3."""
    from tokembed.errors import BadInputError

    text_pdf(tmp_path / "good.pdf", ["plain page"])
    records = tmp_path / "t.jsonl"
    records.write_text('{"id": "a", "pdf": "good.pdf"}\n{"id": "b", "note": "no pdf yet"}\n'
                       '{"id": "c", "pdf": "\\ud800x.pdf"}\n{"id": "d", "pdf": "good.pdf"}\n')
    items = read_items([records], pdf_column_given=True)
    assert [(item.id, item.error) for item in items] == [
        ("a#page=1", None), ("b", "line 2: no PDF field 'pdf' (fields: id, note)"),
        ("c", f"line 3: the PDF path is not valid Unicode (a lone surrogate, U+D800, at character {len(str(tmp_path)) + 1})"),
        ("d#page=1", None),
    ]
    none = write_jsonl(tmp_path / "none.jsonl", [{"id": "a", "doc": "good.pdf"}, {"id": "b", "doc": "good.pdf"}])
    with pytest.raises(BadInputError, match="no record has what this run reads: no PDF field 'pdf'.*--pdf-column"):
        read_items([none], pdf_column_given=True)
    with pytest.raises(BadInputError, match="line 1: no id field 'key'"):
        read_items([records], pdf_column_given=True, id_column="key", id_column_given=True)


def test_a_pdf_path_through_a_linked_folder_and_dotdot_is_the_file_the_kernel_reads(tmp_path, monkeypatch):
    """``corpus -> store/2024/data`` holding a cell ``../pdfs/a.pdf``: store/2024/pdfs/a.pdf, as the cell's stat found;
    the path was made absolute as text (``corpus/..`` dropped) and ./pdfs/a.pdf, another document, was indexed. An
    INPUT ``data/sub/../doc.pdf`` (``sub`` a link) likewise. ``~old/a.pdf`` is test_path_cells.py's."""
    monkeypatch.chdir(tmp_path)
    for folder in ("store/2024/data", "store/2024/pdfs", "pdfs", "real/inner", "data"):
        Path(folder).mkdir(parents=True)
    text_pdf(Path("store/2024/pdfs/a.pdf"), ["the annual report"])
    text_pdf(Path("pdfs/a.pdf"), ["an unrelated draft"])
    Path("store/2024/data/rows.jsonl").write_text('{"id": "report", "pdf": "../pdfs/a.pdf"}\n')
    Path("corpus").symlink_to("store/2024/data")
    items = read_items(["corpus/rows.jsonl"], pdf_column="pdf", pdf_column_given=True)
    assert [(item.id, item.text.strip()) for item in items] == [("report#page=1", "the annual report")]
    text_pdf(Path("real/doc.pdf"), ["the real document"])
    text_pdf(Path("data/doc.pdf"), ["a decoy beside it"])
    Path("data/sub").symlink_to("../real/inner")
    assert [item.text.strip() for item in read_items(["data/sub/../doc.pdf"])] == ["the real document"]
