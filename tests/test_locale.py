"""Runs whatever the locale and the standard streams: a name is its bytes taken as UTF-8 under a locale that is not
UTF-8 (a cron line's ``LANG=en_US.ISO-8859-1``; ``LC_ALL=C`` with ``PYTHONUTF8=0``), a standard output whose
encoding lacks a character does not stop a command, and neither does a closed stderr.

Real processes where the locale or descriptor 2 is what is tested: both are set before Python starts.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest

from helpers import exec_after, read_index, write_jsonl

# LC_ALL (not LANG): Python coerces a bare C locale to C.UTF-8 otherwise; PYTHONUTF8=0: no UTF-8 mode either
NOT_UTF8 = {**{k: v for k, v in os.environ.items() if k != "PYTHONIOENCODING"},
            "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0", "HF_HUB_OFFLINE": "1"}
PROGRAM = "from cli.launch import main; main()"  # what the installed `tokembed` runs
DOCUMENTS = {"plain.txt": "hello world", "résumé.txt": "bonjour café", "東京.txt": "tokyo tower"}
ROWS = [{"id": f"dök-{i}-日本", "text": f"Ünïcödé text number {i} about café 東京"} for i in range(6)]


def _text_folder(root):
    docs = root / "docs"
    docs.mkdir()
    for name, text in DOCUMENTS.items():
        (docs / name).write_text(text, encoding="utf-8")
    return docs


@pytest.fixture(scope="module")
def unicode_index(tmp_path_factory, checkpoint_store):
    """An index at ``idx-é`` of rows whose ids are not ASCII, built under the tests' own (UTF-8) locale."""
    from cli.main import run

    root = tmp_path_factory.mktemp("locale")
    model = checkpoint_store("pylate_bert")
    index = root / "idx-é"
    assert run(["encode", str(write_jsonl(root / "rows.jsonl", ROWS)), "-o", str(index), "-m", str(model), "-q"]) == 0
    (root / "queries.txt").write_text("café naïve\n東京\n", encoding="utf-8")
    return root, model, index


def test_a_rerun_under_a_locale_that_is_not_utf8_keeps_every_id(tmp_path, checkpoint_store, cli):
    """The ids were the names decoded as ASCII ("not UTF-8": bad rows), or as Latin-1 (``rÃ©sumÃ©.txt``: deleted and
    added again, exit 0); and Arrow found no shards in ``idx-é`` (exit 6)."""
    docs, model, index = _text_folder(tmp_path), checkpoint_store("pylate_bert"), tmp_path / "idx-é"
    assert cli("encode", docs, "-o", index, "-m", model, "-q").exit_code == 0
    assert sorted(read_index(index)) == sorted(DOCUMENTS)

    done = subprocess.run([sys.executable, "-c", PROGRAM, "encode", str(docs), "-o", str(index), "-m", str(model)],
                          capture_output=True, env=NOT_UTF8, timeout=300)
    stderr = done.stderr.decode("utf-8", "backslashreplace")
    assert done.returncode == 0, stderr
    assert "added 0, updated 0, deleted 0, unchanged 3, failed 0" in stderr
    assert sorted(read_index(index)) == sorted(DOCUMENTS)


def test_score_and_info_under_a_locale_that_is_not_utf8_read_the_index(unicode_index):
    root, _, index = unicode_index
    for command in (["score", str(root / "queries.txt"), str(index), "--top-k", "1", "--format", "tsv"],
                    ["info", str(index)]):
        done = subprocess.run([sys.executable, "-m", "cli.main", *command], capture_output=True, env=NOT_UTF8, timeout=300)
        assert done.returncode == 0, done.stderr.decode("utf-8", "backslashreplace")
    assert done.stdout.decode("utf-8").split()[:4] == ["index", str(index), "rows", "6"]


def test_the_library_refuses_a_name_the_locale_would_misread(tmp_path, checkpoint_store, cli, unicode_index):
    """A library caller gets no UTF-8 mode from tokembed: a name that is not ASCII is a UsageError saying what to
    set, never another id (a re-run's deletes) or an index reported corrupt."""
    docs, model = _text_folder(tmp_path), checkpoint_store("pylate_bert")
    assert cli("encode", docs, "-o", tmp_path / "idx", "-m", model, "-q").exit_code == 0
    code = (
        "import sys\n"
        "from tokembed import EncodeJob, encode_corpus\n"
        "from tokembed.errors import UsageError\n"
        "from tokembed.index import open_index\n"
        "docs, index, model, unicode_index = sys.argv[1:]\n"
        "for call in (lambda: open_index(unicode_index), lambda: encode_corpus(EncodeJob([docs], index, model=model))):\n"
        "    try:\n"
        "        call()\n"
        "        print('TAKEN')\n"
        "    except UsageError as exc:\n"
        "        print('REFUSED', exc, exc.hint)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(docs), str(tmp_path / "idx"), str(model), str(unicode_index[2])],
                          capture_output=True, encoding="utf-8", errors="backslashreplace", env=NOT_UTF8, timeout=300)
    lines = done.stdout.splitlines()
    assert done.returncode == 0 and len(lines) == 2, done.stderr
    assert all(line.startswith("REFUSED") and "this locale (C) reads file names as" in line and "PYTHONUTF8=1" in line
               for line in lines), lines
    assert "résumé.txt in input folder" in lines[1]  # the bytes of the name, as the child wrote them
    assert sorted(read_index(tmp_path / "idx")) == sorted(DOCUMENTS)


# Run under NOT_UTF8 and in UTF-8 mode: each call with names a library caller writes (escapes keep the code ASCII).
_CELLS_AND_MODEL = (
    "import sys\n"
    "from pathlib import Path\n"
    "from tokembed import EncodeJob, encode_corpus\n"
    "from tokembed.errors import UsageError\n"
    "from tokembed.models import resolve_model\n"
    "from tokembed.sources import SourceOptions, open_sources\n"
    "root = Path(sys.argv[1])\n"
    "def rows(cell):\n"
    "    return [i.error for c in open_sources([root / f'{cell}.jsonl'], SourceOptions(modality='image')) for i in c]\n"
    "calls = [lambda cell=cell: rows(cell) for cell in ('image', 'video', 'pdf')]\n"
    "calls.append(lambda: resolve_model(str(root / 'b\\u00ebrt-\\u6a21\\u578b')).name)\n"
    "if sys.argv[2:]:\n"
    "    calls.append(lambda: encode_corpus(EncodeJob([str(root / 'r\\u00e9sum\\u00e9.txt')], str(root / 'idx'))))\n"
    "for call in calls:\n"
    "    try:\n"
    "        print('TAKEN', ascii(call()))\n"
    "    except UsageError as exc:\n"
    "        print('REFUSED', str(exc).encode('ascii', 'backslashreplace').decode(), exc.hint)\n"
)


def test_the_library_refuses_path_cells_and_a_model_folder_the_locale_would_misread(tmp_path, checkpoint_store):
    """Were an image, video or PDF that is there 'not found' (under ``on_error="skip"`` every such row dropped,
    added 0), or a UnicodeEncodeError (also for an input, from the refusal's own lookup); and a checkpoint folder
    that is there ModelNotFoundError 'no such checkpoint folder'."""
    import shutil

    from PIL import Image
    from pdfs import image_pdf

    for folder in ("imgs-ü", "vids-é", "docs-ö"):
        (tmp_path / folder).mkdir()
    Image.new("RGB", (32, 24), (200, 10, 10)).save(tmp_path / "imgs-ü" / "páge.png")
    (tmp_path / "vids-é" / "clîp.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")  # refused before it is probed
    image_pdf(tmp_path / "docs-ö" / "résumé.pdf", [(0, 200, 0)])
    for cell, value in (("image", "imgs-ü/páge.png"), ("video", "vids-é/clîp.mp4"), ("pdf", "docs-ö/résumé.pdf")):
        write_jsonl(tmp_path / f"{cell}.jsonl", [{"id": cell, "image": value}])
    shutil.copytree(checkpoint_store("pylate_bert"), tmp_path / "bërt-模型")
    (tmp_path / "résumé.txt").write_text("bonjour", encoding="utf-8")
    tests = os.path.dirname(__file__)
    env = {**NOT_UTF8, "PYTHONPATH": os.pathsep.join([tests, os.path.dirname(tests)])}

    def child(env, *more):
        done = subprocess.run([sys.executable, "-c", _CELLS_AND_MODEL, str(tmp_path), *more], capture_output=True,
                              encoding="utf-8", errors="backslashreplace", env=env, timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stdout.splitlines()

    refused = child(env, "with the input")
    assert len(refused) == 5 and all(line.startswith("REFUSED") and "this locale (C) reads file names as" in line
                                     and "PYTHONUTF8=1" in line for line in refused), refused
    assert "image.jsonl row 0: image file '" in refused[0] and "imgs-\\xfc/p\\xe1ge.png'" in refused[0]
    assert "video.jsonl row 0: video file" in refused[1] and "pdf.jsonl row 0: PDF file" in refused[2]
    assert refused[3].startswith("REFUSED --model ") and refused[4].startswith("REFUSED inputs[0] ")
    assert not (tmp_path / "idx").exists()

    taken = child({**env, "PYTHONUTF8": "1"})  # the same names in UTF-8 mode: the files are there
    assert taken[0] == "TAKEN [None]" and taken[2] == "TAKEN [None]", taken
    assert taken[1].startswith("TAKEN [") and "not found" not in taken[1], taken  # the bytes are no video: a bad row
    assert taken[3].startswith("TAKEN '") and taken[3].endswith("b\\xebrt-\\u6a21\\u578b'"), taken


def _ascii_stdout(monkeypatch) -> io.TextIOWrapper:
    """Standard output as ``PYTHONIOENCODING=ascii`` (or a Latin-1 terminal, for CJK ids) makes it."""
    stream = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    monkeypatch.setattr(sys, "stdout", stream)
    return stream


def _written(stream: io.TextIOWrapper) -> bytes:
    stream.flush()
    return stream.buffer.getvalue()


@pytest.mark.parametrize("fmt", ["jsonl", "tsv", "trec"])
def test_results_on_an_ascii_stdout_are_utf8_as_in_a_file(unicode_index, monkeypatch, tmp_path, fmt):
    """Was UnicodeEncodeError, exit 1: jsonl, tsv and trec are files for other programs, UTF-8 as ``-o`` writes."""
    from cli.main import run

    root, _, index = unicode_index
    args = ["score", str(root / "queries.txt"), str(index), "--top-k", "2", "--format", fmt]
    assert run([*args, "-o", str(tmp_path / "results")]) == 0
    stdout = _ascii_stdout(monkeypatch)
    assert run(["score", "--query", "ünï", *args[2:]]) == 0
    assert run(args) == 0
    written = _written(stdout)
    assert written.endswith((tmp_path / "results").read_bytes()) and "日本".encode() in written
    if fmt == "jsonl":
        assert json.loads(written.splitlines()[0])["query"] == "ünï"


@pytest.mark.parametrize("command", [["score", "{queries}", "{index}", "--format", "table"], ["info", "{index}"],
                                     ["info", "{index}", "--verify"]])
def test_tables_on_an_ascii_stdout_escape_what_it_lacks(unicode_index, monkeypatch, capsys, command):
    """Was UnicodeEncodeError, exit 1: what people read has the characters escaped, as Python's stderr has them."""
    from cli.main import run

    root, _, index = unicode_index
    stdout = _ascii_stdout(monkeypatch)
    assert run([part.format(queries=root / "queries.txt", index=index) for part in command]) == 0, capsys.readouterr().err
    shown = _written(stdout).decode("ascii")
    assert r"idx-\xe9" in shown if command[0] == "info" else r"d\xf6k-" in shown and r"\u6771\u4eac" in shown


def _with_stderr_closed(*args) -> subprocess.CompletedProcess:
    """``tokembed ARGS 2>&-``: Python starts with ``sys.stderr`` None."""
    command = exec_after("os.close(2)", [sys.executable, "-m", "cli.main", *args])
    return subprocess.run(command, stdout=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                          timeout=300)


def test_encode_and_compress_run_with_stderr_closed(tmp_path, checkpoint_store, cli):
    """Was ``'NoneType' object has no attribute 'isatty'`` (exit 1, nothing indexed); and an error line, with no
    stderr to go to, was printed into stdout (``print(file=None)``)."""
    pytest.importorskip("faiss")
    model, index = checkpoint_store("pylate_bert"), tmp_path / "idx"
    first = write_jsonl(tmp_path / "first.jsonl", ROWS)
    assert cli("encode", first, "-o", index, "-m", model, "-q").exit_code == 0
    more = write_jsonl(tmp_path / "more.jsonl", [{"id": "new", "text": "a new row"}])

    assert _with_stderr_closed("encode", first, more, "-o", index, "-m", model).returncode == 0
    assert len(read_index(index)) == len(ROWS) + 1
    assert _with_stderr_closed("compress", index, "--nbits", "2", "--centroids", "4").returncode == 0
    assert "search_structure" in json.loads(cli("info", index, "--json").stdout)
    missing = _with_stderr_closed("info", tmp_path / "nowhere")
    assert (missing.returncode, missing.stdout) == (6, "")


def test_commands_run_with_stderr_open_for_reading_only(tmp_path, checkpoint_store):
    """A pyenv shim (a shell script) hands ``2>&-`` on as its own file, read-only: the first write to stderr raised
    EBADF, exit 1 (encode wrote no index, info printed a traceback nowhere)."""
    model, index, unreadable = checkpoint_store("pylate_bert"), tmp_path / "idx", tmp_path / "script"
    unreadable.write_text("#!/bin/sh\n")
    corpus = write_jsonl(tmp_path / "first.jsonl", ROWS)

    def run(*args) -> subprocess.CompletedProcess:
        with open(unreadable) as read_only:
            return subprocess.run([sys.executable, "-m", "cli.main", *map(str, args)], stdout=subprocess.PIPE,
                                  stderr=read_only, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)

    assert run("encode", corpus, "-o", index, "-m", model).returncode == 0
    assert len(read_index(index)) == len(ROWS)
    assert run("info", index).returncode == 0
    assert (run("info", tmp_path / "nowhere").returncode, unreadable.read_text()) == (6, "#!/bin/sh\n")


def test_commands_run_on_when_stderr_cannot_be_written(tmp_path, checkpoint_store):
    """A log reader gone (``2>&1 | head -1``, a dead log pipe) or a log file on a full disk: the first write to stderr
    raised, click made it exit 1 with no message, before anything was indexed (a resumed run, at its first progress
    line: never finished). Now the run's lines are dropped, as for a closed stderr, and the exit code is its own."""
    model, index = checkpoint_store("pylate_bert"), tmp_path / "idx"
    corpus = write_jsonl(tmp_path / "first.jsonl", ROWS)
    reader, broken = os.pipe()
    os.close(reader)  # every write to ``broken`` fails with EPIPE

    def run(*args, stderr=broken) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cli.main", *map(str, args)], stdout=subprocess.PIPE,
                              stderr=stderr, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)

    try:
        assert run("encode", corpus, "-o", index, "-m", model).returncode == 0
        assert len(read_index(index)) == len(ROWS)
        shown = run("info", index, "--json")
        assert (shown.returncode, json.loads(shown.stdout)["rows"]) == (0, len(ROWS))
        assert run("encode", tmp_path / "nowhere.jsonl", "-o", tmp_path / "other", "-m", model).returncode == 3
    finally:
        os.close(broken)
    with open("/dev/full", "w") as full:
        assert run("info", tmp_path / "nowhere", stderr=full).returncode == 6
        assert run("info", index, stderr=full).returncode == 0


def test_pdf_render_workers_of_a_caller_in_utf8_mode_by_flag_read_its_names(tmp_path):
    """``python -X utf8`` (the refusal's own hint) sets no variable a render worker inherits: under LC_ALL=C the
    workers ran in ASCII and every page of ``résumé.pdf`` was 'cannot render page 1: 'ascii' codec ...'."""
    script = (
        "import sys; from pathlib import Path; from pdfs import image_pdf; "
        "from tokembed.sources import SourceOptions, open_sources; "
        "from tokembed.sources.pdf_workers import close_render_pool; "
        f"image_pdf(Path({str(tmp_path)!r}) / 'résumé.pdf', [(255, 0, 0), (0, 255, 0)]); "
        f"items = [i for c in open_sources([Path({str(tmp_path)!r})], SourceOptions(modality='image', pdf_workers=2)) for i in c]; "
        "close_render_pool(); print('ERRORS', [i.error for i in items if i.error], 'PAGES', len(items))"
    )
    tests = os.path.dirname(__file__)
    env = {**NOT_UTF8, "PYTHONPATH": os.pathsep.join([tests, os.path.dirname(tests)])}
    done = subprocess.run([sys.executable, "-X", "utf8", "-c", script], capture_output=True, text=True, env=env)
    assert "ERRORS [] PAGES 2" in done.stdout, (done.stdout, done.stderr)


def test_a_host_program_calling_main_is_not_started_again(tmp_path):
    """``cli.main.main()`` called by a host script under such a locale exec'd the host's whole command line again
    (its script ran twice, its stdin already read); only the tokembed program and ``python -m cli.main`` start
    again in UTF-8 mode."""
    script = "print('HOST', flush=True); import sys; sys.argv = ['tokembed', 'models']; from cli.main import main; main()"
    env = {**NOT_UTF8, "PYTHONPATH": os.path.dirname(os.path.dirname(__file__))}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.stdout.count("HOST") == 1 and done.returncode == 0, (done.stdout, done.stderr)
