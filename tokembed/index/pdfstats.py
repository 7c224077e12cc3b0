"""How many PDFs and pages a generation holds, read from its shards' ``source_file``/``page`` columns.

Computed at commit time from the shards the manifest will list (resumed shards included), one column
pair at a time through the memory map, so the figures are right however the rows got there.
"""

from __future__ import annotations

from pathlib import Path

from tokembed.index.arrow_file import ShardReader


def pdf_totals(folder: Path, shards: list[dict], sources=None) -> dict | None:
    """``{"files", "pages", "dpi"}`` for an index holding PDF pages, else None."""
    import pyarrow as pa
    import pyarrow.compute as pc

    files = pages = 0
    last = None  # pages of one PDF are consecutive rows (ids are unique, inputs read in order)
    for shard in shards:
        with pa.memory_map(str(folder / shard["file"]), "r") as mapped:
            reader = ShardReader(mapped, folder / shard["file"])
            if "page" not in reader.names:
                continue
            for number in range(reader.num_record_batches):
                batch = reader.get_batch(number).select(["source_file", "page"])
                has_page = pc.is_valid(batch.column("page"))
                pages += pc.sum(has_page).as_py() or 0
                for name in pc.filter(batch.column("source_file"), has_page).to_pylist():
                    if name != last:
                        files, last = files + 1, name
    if not pages:
        return None
    return {"files": files, "pages": pages, "dpi": getattr(sources, "pdf_dpi", None) if sources is not None and sources.modality == "image" else None}
