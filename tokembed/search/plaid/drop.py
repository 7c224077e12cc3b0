"""Compressed-only indexes (``compress --drop-vectors``): the shards lose their vectors, the codes stay.

``drop_vectors`` turns a generation that has a search structure into one whose shards hold no vectors:

* each shard is rewritten record batch by record batch without its ``embeddings`` column (a new
  ``part-NNNNNN.arrow``: temp name, fsync, rename). ``id``, ``token_ids``, ``content_hash`` and the PDF
  columns stay, so a row's token count is still its ``token_ids`` length, as in its codes' ``doc_offsets``;
* its code file is hard-linked (copied where links fail) under the name that belongs to the new shard,
  ``codes_name(new shard sha256, codec sha256)``: the same bytes, and code file names stay a function of
  the shard's bytes, so later runs keep unchanged files as they do for any index. Where the committed
  generation's codes hold that name with other bytes (an ``encode --full`` whose re-encoded vectors code
  differently), the codes' own sha256 is added to the name;
* the manifest's ``search`` section gets ``"vectors": "dropped"``.

Nothing is committed here. Once the caller has replaced the manifest, the old shards and code file names are
unlisted and removed, which frees the vectors' disk space. ``plaid/drop-pending.json`` records the shards
already rewritten for the generation being dropped, so a run killed half way resumes after them (and the
result is the same bytes).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from tokembed._testhooks import fault_point
from tokembed.index.atomic import atomic_write_bytes, replacing, sha256_file, write_error
from tokembed.index.format import DATA_DIR, SEARCH, VECTORS, VECTORS_DROPPED, shard_name, vectorless_schema, vectors_dropped
from tokembed.search.plaid.codes import CODES_DIR, codes_name
from tokembed.search.plaid.files import check_structure_lists_shards, verify_file

PENDING = f"{CODES_DIR}/drop-pending.json"


def drop_vectors(folder: Path, manifest: dict, log=print) -> dict:
    """The manifest of the same generation without vectors (new shards and code file names written, durable)."""
    from tokembed.search.plaid.build import open_generation

    if vectors_dropped(manifest):
        return manifest
    structure = manifest[SEARCH]
    check_structure_lists_shards(folder, manifest)
    codec_sha = structure["codec"]["sha256"]
    key = {"shards": [shard["sha256"] for shard in manifest["shards"]], "codec": codec_sha}
    done = _resumable(folder, key)
    resumed = len(done)
    index = open_generation(folder, manifest)
    shards, entries = [], []
    for number, (shard, entry) in enumerate(zip(manifest["shards"], structure["shards"]), start=1):
        dropped = done.get(shard["sha256"]) or _rewrite_shard(index, shard)
        entries.append(_link_codes(folder, entry, dropped, codec_sha))
        shards.append(dropped)
        if shard["sha256"] not in done:
            done[shard["sha256"]] = dropped
            atomic_write_bytes(folder / PENDING, json.dumps({"key": key, "done": done}).encode())
        fault_point("drop", number)
    before, after = sum(s["bytes"] for s in manifest["shards"]), sum(s["bytes"] for s in shards)
    log(f"vectors dropped: {len(shards)} shards, {before} -> {after} bytes ({resumed} kept from an interrupted run)")
    totals = {**manifest.get("totals", {}), "bytes": after}
    return {**manifest, "shards": shards, "totals": totals,
            SEARCH: {**structure, "shards": entries, VECTORS: VECTORS_DROPPED}}


def remove_abandoned_drop(folder: Path, manifest: dict) -> None:
    """After a commit that did not drop: the shards a killed drop had already rewritten (named by its pending
    record, which the commit leaves unlisted) are unlisted too, and nothing would resume from them."""
    from tokembed.index.atomic import remove_unused

    try:
        pending = json.loads((folder / PENDING).read_text())
    except (OSError, ValueError):
        return
    listed = {shard["file"] for shard in manifest["shards"]}
    for entry in (pending.get("done") or {}).values():
        name = entry.get("file", "") if isinstance(entry, dict) else ""
        path = folder / name
        # the very file it wrote (a later encode may have reused the number for a shard its journal resumes from)
        if (name.startswith(f"{DATA_DIR}/") and name not in listed and path.is_file()
                and path.stat().st_size == entry.get("bytes") and sha256_file(path) == entry.get("sha256")):
            remove_unused(path)


def _resumable(folder: Path, key: dict) -> dict[str, dict]:
    """Shards a killed run already rewrote for this very generation (source sha256 -> entry), checked."""
    try:
        pending = json.loads((folder / PENDING).read_text())
    except (OSError, ValueError):
        return {}
    if pending.get("key") != key:
        return {}
    done = {}
    for source, entry in pending.get("done", {}).items():
        path = folder / entry["file"]
        if path.is_file() and path.stat().st_size == entry["bytes"] and sha256_file(path) == entry["sha256"]:
            done[source] = entry
    return done


def _rewrite_shard(index, shard: dict) -> dict:
    """A new shard with every column of ``shard`` but ``embeddings``; its manifest entry."""
    import pyarrow as pa

    from tokembed.index.writer import next_shard_number
    from tokembed.search.maxsim import shard_batches

    data = index.folder / DATA_DIR
    final = data / shard_name(next_shard_number(data))
    schema = vectorless_schema(index.open_shard(shard).schema)
    try:
        with replacing(final) as tmp, pa.ipc.new_file(str(tmp), schema) as writer:
            # sha256 checked first: what is copied out of this shard outlives it
            for batch in shard_batches(index, shard, verify=True):
                writer.write_batch(batch.select(schema.names))
    except OSError as exc:
        raise write_error(final, exc, f"{final}: cannot write the shard without vectors ({exc})") from exc
    return {"file": f"{DATA_DIR}/{final.name}", "rows": shard["rows"], "tokens": shard["tokens"],
            "bytes": final.stat().st_size, "sha256": sha256_file(final)}


def _link_codes(folder: Path, entry: dict, dropped: dict, codec_sha: str) -> dict:
    """The shard's code file under the new shard's name (same bytes); its ``search.shards`` entry.

    A shard without vectors can have the bytes of the committed generation's while its codes differ: an
    ``encode --full`` of a compressed-only index re-encodes the same rows, and other batches move a vector by a
    rounding step, enough to change a code. The name is then taken by codes the committed manifest vouches for,
    which must stay until the commit: these get a name of their own (with their sha256)."""
    name = codes_name(dropped["sha256"], codec_sha)
    other = _holds_other_bytes(folder / name, entry)
    if other:
        name = codes_name(dropped["sha256"], codec_sha, entry["sha256"])
        other = _holds_other_bytes(folder / name, entry)
    target = folder / name
    if other is not False:
        verify_file(folder, entry, checksum=True)
        try:
            with replacing(target) as tmp:
                try:
                    os.link(folder / entry["file"], tmp)  # no second copy of the codes on disk
                except OSError:
                    shutil.copyfile(folder / entry["file"], tmp)
        except OSError as exc:
            raise write_error(target, exc, f"{target}: cannot write ({exc})") from exc
    return {**entry, "shard": dropped["file"], "file": name}


def _holds_other_bytes(path: Path, entry: dict) -> bool | None:
    """None: no such file; False: it holds ``entry``'s bytes (a drop resumed, or the same codes); True: others."""
    if not path.is_file():
        return None
    return path.stat().st_size != entry["bytes"] or sha256_file(path) != entry["sha256"]
