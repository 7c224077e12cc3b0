"""``tokembed info``: what an index holds, read from its manifest (shards checked, not scanned)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from cli._paths import path_given
from cli._stdout import as_stdout_holds


def info(
    index: Path = typer.Argument(..., parser=path_given("INDEX", "the index folder", arrow=True),
                                 help="Index folder (holds manifest.json)."),
    as_json: bool = typer.Option(False, "--json", help="Print the facts as one JSON object."),
    verify: bool = typer.Option(
        False, "--verify", help="Also check the sha256 of every shard and search-structure file against the manifest "
        "(all of them, also those score already found to match and that have not changed since)."),
) -> None:
    """Show rows, tokens, dim, dtypes, model, settings and size of an index."""
    facts = _facts_of_one_generation(index, verify)
    if as_json:
        print(json.dumps(facts))
        return
    _print_table(facts)
    if facts["vectors"] != "dropped":
        print(_export_recipes(index, facts["settings"]), file=sys.stderr)


def _facts_of_one_generation(index: Path, verify: bool) -> dict:
    """The facts of the committed generation; a file of it that vanishes while they are read belongs to one a
    writer just replaced: read the new manifest (as ``score`` does), never report a sound index as corrupt."""
    from tokembed.errors import IndexReplacedError
    from tokembed.index import open_index
    from tokembed.index.reader import kept_changing, replaced_is_not_corrupt

    for _ in range(5):
        opened = open_index(index, structure=False)  # check_structure opens its files a few at a time
        try:
            with replaced_is_not_corrupt(opened):
                return _facts(index, opened, verify)
        except IndexReplacedError:
            continue
    raise kept_changing(index, "read")


def _facts(index: Path, opened, verify: bool) -> dict:
    from tokembed.index.format import vectors_dropped
    from tokembed.search.plaid.report import index_bytes_per_token, structure_facts

    opened.verify(checksums=verify)
    if opened.manifest.get("search"):  # what score checks (a lost codec is as corrupt as a code file), sha256 with --verify
        from tokembed.search.plaid.search import check_structure

        check_structure(opened, checksum=verify)
    manifest = opened.manifest
    on_disk = opened.bytes_on_disk()
    facts = {
        "index": str(index),
        "rows": opened.rows,
        "tokens": opened.tokens,
        "dim": opened.dim,
        "embedding_dtype": manifest["embedding_dtype"],
        "compute_dtype": manifest["settings"]["dtype"],
        "model": manifest["model"]["name"],
        "model_revision": manifest["model"].get("revision"),
        "model_family": manifest["model"]["family"],
        "architecture": manifest["model"]["architecture"],
        "model_fingerprint": manifest["model"]["fingerprint"][:16],
        "base_model": _base_line(manifest["model"].get("base")),
        "mode": manifest["settings"]["mode"],
        "kind": manifest["settings"]["kind"],
        "settings": manifest["settings"],
        "shards": len(opened.shards),
        "skipped": len(manifest.get("skipped", [])),
        "pdf_files": (manifest.get("pdf") or {}).get("files", 0),
        "pdf_pages": (manifest.get("pdf") or {}).get("pages", 0),
        "ignored_files": len(manifest.get("ignored", [])),
        "bytes_on_disk": on_disk,
        "bytes_per_token": round(on_disk / opened.tokens, 2) if opened.tokens else None,
        "vectors": "dropped" if vectors_dropped(manifest) else "stored",
        "bytes_per_token_by_part": index_bytes_per_token(opened, opened.manifest_bytes()),
        "created_at": manifest["created_at"],
        "tokembed_version": manifest["tokembed_version"],
        "search_structure": structure_facts(opened),
    }
    return facts


def _print_table(facts: dict) -> None:
    from rich.console import Console  # here, not at the top: `tokembed --help` stays fast
    from rich.table import Table
    from rich.text import Text

    table = Table(show_header=False, box=None)
    for key, value in facts.items():
        if key in ("base_model", "model_revision") and value is None:
            continue
        if key == "settings":
            value = ", ".join(f"{k}={v}" for k, v in value.items() if v not in (None, "", []))  # False is a setting: normalize=False
        elif key == "vectors" and value == "dropped":
            value = ("dropped by `tokembed compress --drop-vectors`: score re-ranks from the decoded codes; "
                     "score --exact, export and load_document refuse")
        elif key == "bytes_per_token_by_part" and value:
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        elif key == "search_structure" and value:
            value = (f"PLAID nbits {value['nbits']}, {value['centroids']} centroids, {value['bytes']} bytes; B/token "
                     + ", ".join(f"{k} {v}" for k, v in value["bytes_per_token"].items())
                     + f"; memory to search ~{value['search_memory_bytes']} bytes")
        table.add_row(key, Text(as_stdout_holds(str(value))))  # as it is: "[unused1] " is not rich markup
    Console().print(table)


def _export_recipes(index: Path, settings: dict) -> str:
    """How to open the index in tools that read neither Arrow IPC files nor float16 (DuckDB) or want LanceDB:
    shell words quoted for a POSIX shell (a path that starts with '-' as ./-name, not an option), the Parquet
    folder as a DuckDB glob in an SQL string literal read without hive partitioning (a folder named ``id=7-parquet``
    would otherwise be read as a column ``id`` over the file's own), the LanceDB one as a Python literal (any name
    runs as printed)."""
    from tokembed.search.plaid.codec import needs_vector_norms

    name = index.name or "index"
    globbable = name.replace("\\", "_")  # DuckDB splits a glob at a backslash, and no escape keeps one
    parquet, lance = _not_an_option(f"{globbable}-parquet"), _not_an_option(f"{name}-lancedb")
    sql_glob = "'" + f"{_glob_literal(parquet)}/*.parquet".replace("'", "''") + "'"
    sql_from = f"read_parquet({sql_glob}, hive_partitioning = false)"
    cosine = ("  (cosine: these vectors are not unit length, so it does not rank as `tokembed score` does)"
              if needs_vector_norms({"settings": settings}) else "")
    return (
        "open it elsewhere (pyarrow/polars read data/*.arrow as they are):\n"
        f"  DuckDB:  tokembed export {_shell_word(index)} --to {_shell_word(parquet)} --format parquet\n"
        f"           SELECT id, len(embeddings) AS tokens FROM {sql_from}   -- in DuckDB\n"
        f"  LanceDB: tokembed export {_shell_word(index)} --to {_shell_word(lance)} --format lance\n"
        "           # then in Python (query_vectors: one query's [n_tokens, dim] matrix, as score encodes it, or any such numpy array)\n"
        "           import lancedb; from tokembed.index import open_index; from tokembed.search.api import encode_queries\n"
        f"           [query_vectors] = encode_queries(open_index({str(index)!r}), ['how do I sort a list'])\n"
        f"           table = lancedb.connect({lance!r}).open_table('documents')\n"
        "           print(table.search(query_vectors.astype('float32')).limit(5).select(['id', '_distance']).to_arrow())"
        f"  # MaxSim{cosine}"
    )


def _not_an_option(path: str) -> str:
    """``path`` as a command line cannot take for an option (pathlib drops the ``./`` of ``./-idx``), nor DuckDB for
    the home folder: it expands a leading ``~`` in a name the shell left alone (and in ``./~name`` globs), so such a
    name is printed from the current folder down."""
    if path.startswith("~"):
        return str(Path.cwd() / path)
    return f"./{path}" if path.startswith("-") else path


def _shell_word(path: Path | str) -> str:
    from shlex import quote

    return quote(_not_an_option(str(path)))


def _glob_literal(path: str) -> str:
    """``path`` matching only itself in a DuckDB glob (not a sibling export): ``*``, ``?`` and ``[`` each as a
    one-character class; a backslash escapes nothing there."""
    return "".join(f"[{char}]" if char in "*?[" else char for char in path)


def _base_line(base: dict | None) -> str | None:
    """A PEFT adapter index: its base (name, revision, fingerprints of base and adapter files)."""
    if not base:
        return None
    revision = f"@{base['revision']}" if base.get("revision") else ""
    return (f"{base['name']}{revision} (fingerprint {base['fingerprint'][:16]}; "
            f"adapter files {base['adapter_fingerprint'][:16]})")
