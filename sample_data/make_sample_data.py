#!/usr/bin/env python3
"""Build the tokembed demo corpus from sample_data/passages/*.jsonl.

Outputs (all next to this script):
  corpus.parquet   columns id (string), text (string); row_group_size 64
  texts/<id>.txt   one UTF-8 file per passage; a fixed set of ids is written
                   as texts/<id>.md with a markdown heading line instead.

texts/ is deleted and rewritten on every run, so the output is deterministic.
Also checks that every doc id in qrels.tsv exists, if that file is present.
Usage: python sample_data/make_sample_data.py
"""
import json
import shutil
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
PASSAGES = HERE / "passages"
CORPUS = HERE / "corpus.parquet"
TEXTS = HERE / "texts"
QUERIES = HERE / "queries.txt"
QRELS = HERE / "qrels.tsv"
ROW_GROUP_SIZE = 64

# Passages written as markdown (<id>.md) with this heading line prepended.
MARKDOWN_TITLES = {
    "doc-0006": "The Silk Road",
    "doc-0018": "Apollo 11",
    "doc-0041": "Gutenberg and the Printing Press",
    "doc-0053": "The Byzantine Empire",
    "doc-0076": "Darwin and Natural Selection",
    "doc-0087": "The Industrial Revolution",
    "doc-0111": "The Human Heart",
    "doc-0146": "A Short History of the Internet",
    "doc-0181": "The Human Genome Project and CRISPR",
    "doc-0188": "Hubble and Webb",
}


def load_passages():
    files = sorted(PASSAGES.glob("*.jsonl"))
    if not files:
        sys.exit(f"no passage files found in {PASSAGES}")
    rows, seen = [], set()
    for path in files:
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                obj = json.loads(line)
                doc_id, text = obj["id"], obj["text"]
                if not text.strip():
                    sys.exit(f"{path.name}:{lineno}: empty text for {doc_id}")
                if doc_id in seen:
                    sys.exit(f"{path.name}:{lineno}: duplicate id {doc_id}")
                seen.add(doc_id)
                rows.append((doc_id, text))
    missing = set(MARKDOWN_TITLES) - seen
    if missing:
        sys.exit(f"markdown ids not in corpus: {sorted(missing)}")
    return rows


def write_parquet(rows):
    table = pa.table(
        {
            "id": pa.array([r[0] for r in rows], type=pa.string()),
            "text": pa.array([r[1] for r in rows], type=pa.string()),
        }
    )
    pq.write_table(table, CORPUS, row_group_size=ROW_GROUP_SIZE)


def write_texts(rows):
    if TEXTS.exists():
        shutil.rmtree(TEXTS)
    TEXTS.mkdir()
    for doc_id, text in rows:
        if doc_id in MARKDOWN_TITLES:
            path = TEXTS / f"{doc_id}.md"
            content = f"# {MARKDOWN_TITLES[doc_id]}\n\n{text}\n"
        else:
            path = TEXTS / f"{doc_id}.txt"
            content = text + "\n"
        with path.open("w", encoding="utf-8", newline="\n") as fh:
            fh.write(content)


def check_qrels(ids):
    if not QRELS.exists():
        return 0
    n_queries = 0
    if QUERIES.exists():
        n_queries = len(QUERIES.read_text(encoding="utf-8").splitlines())
    count = 0
    for lineno, line in enumerate(QRELS.read_text(encoding="utf-8").splitlines(), 1):
        qline, doc_id = line.split("\t")
        if doc_id not in ids:
            sys.exit(f"qrels.tsv:{lineno}: unknown doc id {doc_id}")
        if n_queries and not 1 <= int(qline) <= n_queries:
            sys.exit(f"qrels.tsv:{lineno}: query line {qline} out of range")
        count += 1
    return count


def main():
    rows = load_passages()
    write_parquet(rows)
    write_texts(rows)
    n_qrels = check_qrels({r[0] for r in rows})
    n_md = len(MARKDOWN_TITLES)
    print(
        f"wrote {len(rows)} passages to {CORPUS.name}; "
        f"{len(rows) - n_md} .txt + {n_md} .md files in {TEXTS.name}/; "
        f"{n_qrels} qrels checked"
    )


if __name__ == "__main__":
    main()
