"""``tokembed score``: options, progress and output formatting; the work is ``tokembed.search.search``.

Results go to stdout (or ``--output``); progress, warnings and the final rate line go to stderr.
"""

from __future__ import annotations

import json
import math
import sys
import time
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from cli._clock import since_start
from cli._output_file import (
    is_standard_output, open_output, refuse_output_over_inputs, refuse_output_that_cannot_be_written,
)
from cli._paths import checked_path, column_named, path_given, query_texts, refuse_columns_queries_lack
from cli._stdout import as_stdout_holds
from cli.progress import LineProgress, libraries_quiet, warnings_logged


class Format(str, Enum):
    table = "table"
    jsonl = "jsonl"
    tsv = "tsv"
    trec = "trec"


def score(
    args: list[str] = typer.Argument(
        ..., metavar="QUERIES INDEX_DIR",
        help="A query file (.txt one per line, .tsv id<TAB>text (later columns ignored), .jsonl, .parquet; a regular file, "
        "not a pipe) and the index folder. "
        "With --query, the index folder alone.",
    ),
    query: Optional[list[str]] = typer.Option(
        None, "--query", help="A query text (repeatable); ids q1, q2, ... An empty or blank one is refused (exit 2).",
    ),
    top_k: int = typer.Option(
        10, "--top-k", "-k", help="Documents per query (all of them if the index is smaller). With a search structure, "
        "only documents in the lists of the centroids the query probes: fewer where those hold fewer (--exact: all).",
    ),
    fmt: Optional[Format] = typer.Option(
        None, "--format", "-f", help="table, jsonl, tsv or trec. Default: from --output's suffix (.tsv: tsv; .trec, .run: trec; "
        "else jsonl), else table on a terminal and jsonl otherwise. jsonl, tsv and trec are UTF-8, on stdout too, whatever the "
        "locale; a table escapes what the terminal's encoding lacks (\\u6771)."
    ),
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", parser=path_given("--output", "a file for the results ('-': stdout)"),
        help="Write results to this file instead of stdout ('-': stdout). /dev/stdout, /dev/stderr, /dev/fd/N: that "
        "descriptor, written where the shell opened it (>> appends); another file is replaced once the results are complete.",
    ),
    model: Optional[str] = typer.Option(
        None, "--model", "-m", help="Where the index's checkpoint is (folder or hub id). Default: the one in the manifest."
    ),
    base_model: Optional[str] = typer.Option(
        None, "--base-model", help="Where the base checkpoint of the index's PEFT adapter is (folder or hub id; a base "
        "folder that moved), as encode's --base-model. Default: the one in the manifest. Checked like --model.",
    ),
    allow_model_mismatch: bool = typer.Option(
        False, "--allow-model-mismatch", help="Score even if --model is not the checkpoint the index was built with."
    ),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow checkpoints that ship their own Python code."),
    device: str = typer.Option(
        "auto", help="auto (first CUDA device, else CPU), cpu, cuda or cuda:N: encodes the queries and runs the scan, or "
        "with a search structure its candidate stages (the exact re-rank reads the vectors on the CPU)."
    ),
    block_tokens: int = typer.Option(
        262_144, help="Document tokens scored per block; peak memory grows with it (about block-tokens x dim x 4 bytes)."
    ),
    id_column: Optional[str] = typer.Option(
        None, help="Id field/column of .jsonl/.parquet query files (default id; the line/row number when the file has "
        "none). A column named here must exist. In a .tsv file, the first name of the header line that is skipped. "
        "Refused (exit 2) with a .txt file or --query alone: they have no columns.",
    ),
    text_column: Optional[str] = typer.Option(
        None, help="Text field/column of .jsonl/.parquet query files (default text); a .tsv header's second name. "
        "Refused (exit 2) with a .txt file or --query alone.",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Nothing on stderr but errors (and the JSON summary that --log-format json asks for)."),
    log_format: str = typer.Option(
        "text", "--log-format", help="text, or json: the summary (with load/query/search seconds) is one JSON object on stderr."
    ),
    exact: bool = typer.Option(
        False, "--exact", help="Scan every document even when the index has a search structure (tokembed compress). "
        "Refused (exit 2) on a compressed-only index (compress --drop-vectors): it has no vectors to scan.",
    ),
    probe: Optional[int] = typer.Option(
        None, "--probe", help="Search structure: centroids probed per query token (default 24). Without a structure, or "
        "with --exact, not used (a warning).",
    ),
    candidates: Optional[int] = typer.Option(
        None, "--candidates", help="Search structure: documents re-ranked with exact MaxSim per query (default 384; 5x as "
        "many are pre-scored from their centroids); fewer than --top-k re-ranks --top-k. Without a structure, or with "
        "--exact, not used (a warning).",
    ),
) -> None:
    """MaxSim top-k search: encode the queries as the index prescribes, then search with the index's structure
    (tokembed compress: candidates, re-ranked exactly) or, without one or with --exact, scan every shard; print the best."""
    from tokembed.search import search
    from tokembed.search.queries import Queries, check_queries, inline_queries, read_queries

    from tokembed.errors import UsageError

    if log_format not in ("text", "json"):
        raise UsageError(f"--log-format {log_format!r}: must be text or json")
    query = query_texts(query)  # a blank one: exit 2 before anything is opened
    query_file, index = _split_args(args, bool(query))
    refuse_columns_queries_lack(query_file, id_column, text_column)
    output = None if output is not None and str(output) == "-" else output  # "-o -": standard output, as the default
    refuse_output_over_inputs(output, index, query_file)
    refuse_output_that_cannot_be_written(output)
    queries = read_queries(
        query_file, column_named(id_column, "--id-column") or "id", column_named(text_column, "--text-column") or "text",
        id_required=id_column is not None,
    ) if query_file else Queries()
    queries = queries.add(inline_queries(query))
    if query_file and query:  # a file's q1 and the first --query's would otherwise be one query
        check_queries(queries, f"{query_file} and --query")
    log = LineProgress(quiet=quiet).log
    for warning in queries.warnings:
        log(f"warning: {warning}")
    progress = ScanProgress(quiet or log_format == "json")
    timings = {}
    with warnings_logged(log), libraries_quiet(quiet):  # warnings as lines, none with --quiet
        started, startup = time.perf_counter(), since_start()  # start-up (interpreter, imports, queries read): load
        hits = search(
            index, dict(zip(queries.ids, queries.texts)), top_k=top_k, model=model, device=device,
            block_tokens=block_tokens, allow_model_mismatch=allow_model_mismatch,
            trust_remote_code=trust_remote_code, progress=progress, exact=exact, probe=probe, candidates=candidates,
            timings=timings, base_model=base_model,
        )
        seconds = startup + time.perf_counter() - started  # as load_seconds, from the process start; the parts add up to it
    _write_or_say_why(queries, hits, _pick_format(fmt, output), None if is_standard_output(output) else output)
    if log_format == "json":
        _log_json_summary(len(queries), progress, startup, seconds, timings)
        return
    log(
        f"{len(queries)} queries, {progress.rows} documents ({progress.tokens} tokens) in {seconds:.2f}s "
        f"(load {startup + timings['load_seconds']:.2f}s, queries {timings['query_seconds']:.2f}s, "
        f"search {timings['search_seconds']:.2f}s): "
        f"{len(queries) / seconds:,.1f} queries/s, {_search_rate(progress, timings)}"
    )


def _search_rate(progress, timings: dict) -> str:
    """How the documents were searched: the scan's rate, or that the structure answered (it reads only the
    candidates' tokens, so a rate over every token would be no rate at all)."""
    if timings.get("searched_with") == "structure":
        return "searched with the index's structure"
    return f"{progress.tokens / max(progress.seconds, 1e-9):,.0f} document tokens/s scanned"


def _log_json_summary(n_queries: int, progress, startup: float, seconds: float, timings: dict) -> None:
    """One JSON object on stderr (stdout holds the results): counts and where the seconds went, the text line's."""
    summary = {
        "queries": n_queries,
        "documents": progress.rows,
        "document_tokens": progress.tokens,
        "load_seconds": round(startup + timings.get("load_seconds", 0.0), 3),  # start-up, index open, model load
        "query_seconds": round(timings.get("query_seconds", 0.0), 3),
        "search_seconds": round(timings.get("search_seconds", 0.0), 3),
        "searched_with": timings.get("searched_with"),
        "seconds": round(seconds, 3),
    }
    print(json.dumps(summary), file=sys.stderr)


def _split_args(args: list[str], have_inline: bool) -> tuple[Path | None, Path]:
    from tokembed.errors import UsageError

    if len(args) == 2:
        return checked_path(args[0], "QUERIES", "a query file"), _index_arg(args[1])
    if len(args) == 1 and have_inline:
        return None, _index_arg(args[0])
    if len(args) == 1:
        raise UsageError("expected QUERIES INDEX_DIR (or --query TEXT INDEX_DIR)")
    raise UsageError(f"expected QUERIES INDEX_DIR, got {len(args)} arguments")


def _index_arg(value: str) -> Path:
    return checked_path(value, "INDEX_DIR", "the index folder", arrow=True)


def _pick_format(fmt: Format | None, output: Path | None) -> Format:
    if fmt is not None:
        return fmt
    if output is not None:
        return {".tsv": Format.tsv, ".trec": Format.trec, ".run": Format.trec}.get(output.suffix.lower(), Format.jsonl)
    return Format.table if sys.stdout.isatty() else Format.jsonl


class ScanProgress(LineProgress):
    """Plain progress lines on stderr (every 10 s), plus what the final rate line needs."""

    def __init__(self, quiet: bool) -> None:
        super().__init__(every=10.0, quiet=quiet)
        self.seconds = 0.0

    def advance(self, rows: int, tokens: int) -> None:
        super().advance(rows, tokens)
        self.seconds = time.perf_counter() - self.started


# ---------------------------------------------------------------------------------------------- output


def _write_or_say_why(queries, hits, fmt: Format, output: Path | None) -> None:
    """``write_results``; a failed write to ``--output`` (a full disk) is a write error (exit 8) naming the file.
    Standard output is every command's (``cli/_stdout.py``): a reader that went away ends it quietly."""
    from tokembed.index.atomic import write_error

    try:
        write_results(queries, hits, fmt, output)
    except OSError as exc:
        if output is None:
            raise
        raise write_error(output, exc, f"{output}: cannot write the results ({exc.strerror or exc})") from exc


def write_results(queries, hits, fmt: Format, output: Path | None) -> None:
    _refuse_ids_the_format_cannot_hold(queries, hits, fmt)
    if fmt == Format.table:
        _write_table(queries, hits, output)
        return
    lines = {Format.jsonl: _jsonl_lines, Format.tsv: _tsv_lines, Format.trec: _trec_lines}[fmt](queries, hits)
    if output is None:
        write = getattr(sys.stdout, "write_utf8", sys.stdout.write)  # a file for other programs: UTF-8 as -o writes
        for line in lines:
            write(line + "\n")
        sys.stdout.flush()
        return
    with open_output(output) as handle:
        for line in lines:
            handle.write(line + "\n")


def _refuse_ids_the_format_cannot_hold(queries, hits, fmt: Format) -> None:
    """trec lines are split on whitespace (trec_eval) and tsv lines on tabs: an id holding one would shift the
    fields of its line (a file name with a space, a PDF page of one), as an empty id does in trec. Exit 2 before
    anything is written."""
    if fmt not in (Format.trec, Format.tsv):
        return
    from tokembed.errors import UsageError

    for qid, _, hit in _rows(queries, hits):
        for kind, value in (("query", qid), ("document", hit.id)):
            if problem := _breaks_its_line(value, fmt):
                raise UsageError(f"--format {fmt.value}: {kind} id {value!r} {problem}, which would split its "
                                 "line into other fields; use --format jsonl (or table)")


def _breaks_its_line(value: str, fmt: Format) -> str | None:
    """What in the id ``value`` would shift the fields of its ``fmt`` line, or None. trec_eval splits on runs of
    whitespace, so an empty id is no field at all there; in a tsv line it is an empty field, read as one."""
    if fmt == Format.trec:
        if not value:
            return "is empty"
        return "contains whitespace" if any(c.isspace() for c in value) else None
    return "contains a tab or a line break" if any(c in "\t\n\r" for c in value) else None


def _score_text(score: float) -> str:
    """Shortest text that reads back as the same float32; -inf for a document with no tokens."""
    import numpy as np

    return str(np.float32(score)) if math.isfinite(score) else ("-inf" if score < 0 else str(score))


def _rows(queries, hits):
    for qid, text, results in zip(queries.ids, queries.texts, hits):
        for hit in results:
            yield qid, text, hit


def _jsonl_lines(queries, hits):
    for qid, text, hit in _rows(queries, hits):
        score = float(_score_text(hit.score)) if math.isfinite(hit.score) else None  # JSON has no -inf
        record = {"query_id": qid, "query": text, "rank": hit.rank, "doc_id": hit.id, "score": score}
        yield json.dumps(record, ensure_ascii=False)


def _tsv_lines(queries, hits):
    yield "query_id\trank\tdoc_id\tscore"
    for qid, _, hit in _rows(queries, hits):
        yield f"{qid}\t{hit.rank}\t{hit.id}\t{_score_text(hit.score)}"


def _trec_lines(queries, hits):
    for qid, _, hit in _rows(queries, hits):
        yield f"{qid} Q0 {hit.id} {hit.rank} {_score_text(hit.score)} tokembed"


def _write_table(queries, hits, output: Path | None) -> None:
    from rich.console import Console
    from rich.table import Table

    from rich.text import Text

    shown = as_stdout_holds if output is None else str  # a file is UTF-8
    table = Table("query_id", "query", "rank", "doc_id", "score")
    for qid, text, hit in _rows(queries, hits):
        first = hit.rank == 1  # Text(): ids and queries are shown as they are, never as rich markup
        cells = (qid if first else "", text if first else "", str(hit.rank), hit.id, _score_text(hit.score))
        table.add_row(*(Text(shown(cell)) for cell in cells))
    if output is None:
        Console().print(table)
        return
    with open_output(output) as handle:
        Console(file=handle, width=200).print(table)
