"""Hashes of several variable fields never let two different contents run together into the same bytes.

A text (or an id) may hold NUL: joined with NUL and no lengths, the Ray engine's staged-chunk key of the rows
["alpha\\0Tbeta", "gamma"] was that of ["alpha", "beta\\0Tgamma"] (the second chunk reused the first's staged
file: other rows' vectors, exit 0), a text "a\\0image sha256:D" hashed as the text "a" with image D (an
incremental run carried the wrong vectors), and a run journal's chunk digest could take one row for two.
"""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import numpy as np
import pytest

from tokembed.sources.base import Item

RUN_TOGETHER = (["alpha\0Tbeta", "gamma"], ["alpha", "beta\0Tgamma"])
MARK = "lstrip tokens past a window"


def item(item_id: str, text: str | None = "", image_sha256: str | None = None) -> Item:
    return Item(item_id, text, "corpus.jsonl", 0, image_sha256=image_sha256)


# -- the Ray engine's staged chunks ----------------------------------------------------------------
def test_chunk_keys_of_inputs_that_run_together_differ(tmp_path):
    from PIL import Image

    from tokembed.engine.ray_staging import chunk_key
    from tokembed.sources.video import Video

    first, second = RUN_TOGETHER
    assert chunk_key(b"p", first) != chunk_key(b"p", second)
    assert chunk_key(b"p", ["a", "b"]) != chunk_key(b"p", ["a\0Tb"]) != chunk_key(b"p", ["ab"])
    assert chunk_key(b"p\0", ["x"]) != chunk_key(b"p", ["\0x"])  # the prefix ends where its length says
    gray = Image.new("L", (2, 1), 7)
    assert chunk_key(b"p", [gray]) != chunk_key(b"p", [gray.resize((1, 2))]) != chunk_key(b"p", [gray.tobytes().decode()])
    # a video (it has no mode nor pixels: the key raised AttributeError): its bytes, or its file's size and mtime
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"one")
    held, filed = Video("v", None, b"one", 3, 1.0, 4, 4), Video("v", str(clip), None, 3, 1.0, 4, 4)
    keys = {chunk_key(b"p", [held]), chunk_key(b"p", [Video("v", None, b"two", 3, 1.0, 4, 4)]), chunk_key(b"p", [filed])}
    clip.write_bytes(b"other")
    assert len(keys | {chunk_key(b"p", [filed])}) == 4


def test_a_chunk_that_runs_together_with_a_staged_one_is_encoded_not_reused(checkpoint_store, tmp_path):
    from tokembed.embedder import Embedder
    from tokembed.engine.ray import ChunkWorker
    from tokembed.engine.ray_staging import chunk_key, read_staged
    from tokembed.engine.runner import run_chunk
    from tokembed.settings import EncodeFlags

    flags = EncodeFlags(store_dtype="float32")
    embedder = Embedder.load(str(checkpoint_store("pylate_bert")), flags)
    staging = tmp_path / "staging"
    staging.mkdir()
    worker = ChunkWorker(embedder.spec(flags), 0, "cpu", 1)
    keys = [chunk_key(b"settings", texts) for texts in RUN_TOGETHER]
    assert [worker.encode(key, texts, 64, str(staging))["reused"] for key, texts in zip(keys, RUN_TOGETHER)] == [False, False]
    for key, texts in zip(keys, RUN_TOGETHER):
        staged = read_staged(staging / f"chunk-{key}.arrow", len(texts), embedder.output_dim, key)
        local = run_chunk(embedder.encoder, texts, 64, "cpu")
        for got, want in zip(staged.vectors + staged.token_ids, local.vectors + local.token_ids, strict=True):
            assert np.array_equal(got, want)
    assert len(list(staging.iterdir())) == 2


def test_a_staged_file_not_written_for_its_key_is_encoded_again(checkpoint_store, tmp_path):
    """A file under a chunk's name whose metadata names another key, or none (an earlier release's), is never
    reused by an actor nor read by the driver as that chunk."""
    import pyarrow as pa

    from tokembed.embedder import Embedder
    from tokembed.engine.ray import ChunkWorker
    from tokembed.engine.ray_staging import chunk_key, read_staged, staged_key
    from tokembed.errors import DeviceError
    from tokembed.settings import EncodeFlags

    flags = EncodeFlags(store_dtype="float32")
    embedder = Embedder.load(str(checkpoint_store("pylate_bert")), flags)
    staging = tmp_path / "staging"
    staging.mkdir()
    worker = ChunkWorker(embedder.spec(flags), 0, "cpu", 1)
    (first, second), dim = RUN_TOGETHER, embedder.output_dim
    key, other = chunk_key(b"settings", first), chunk_key(b"settings", second)
    worker.encode(key, first, 64, str(staging))
    path, moved = staging / f"chunk-{key}.arrow", staging / f"chunk-{other}.arrow"
    path.rename(moved)  # the first chunk's rows under the second's name
    with pytest.raises(DeviceError, match=f"written for another chunk \\({key}\\), expected {other}"):
        read_staged(moved, len(second), dim, other)
    assert not worker.encode(other, second, 64, str(staging))["reused"] and staged_key(moved) == other
    assert worker.encode(other, second, 64, str(staging))["reused"]
    table = pa.ipc.open_file(pa.memory_map(str(moved))).read_all()
    unkeyed = table.replace_schema_metadata({"real_tokens": "1"})  # what an earlier release wrote
    with pa.OSFile(str(moved), "wb") as sink, pa.ipc.new_file(sink, unkeyed.schema) as writer:
        writer.write_table(unkeyed)
    assert staged_key(moved) is None and staged_key(staging / "absent.arrow") is None
    with pytest.raises(DeviceError, match="written for another chunk \\(no key\\)"):
        read_staged(moved, len(second), dim, other)
    assert not worker.encode(other, second, 64, str(staging))["reused"]
    assert read_staged(moved, len(second), dim, other).real_tokens > 1


# -- content hashes (incremental runs) and chunk digests (run journals) ------------------------------
def test_a_text_holding_nul_never_hashes_as_another_items_content():
    from tokembed.plan import _content_hashes

    image = "ab" * 32
    marks = SimpleNamespace(content_mark=lambda text: MARK if text == "T" else "")
    as_image = _content_hashes([item("x", f"foo\0image sha256:{image}"), item("x", "foo", image)], "fp", None)
    as_mark = _content_hashes([item("x", f"T\0{MARK}"), item("x", "T")], "fp", marks)
    assert as_image[0] != as_image[1] and as_mark[0] != as_mark[1]
    apart = _content_hashes([item("x", "a\0b"), item("x", "a\0b", image), item("x", "a\0b", ""), item("x", "a\0c")], "fp", None)
    assert len(set(apart)) == 4


def test_a_text_without_nul_hashes_as_earlier_releases_did():
    """Their indexes stay current: only rows whose text holds NUL are encoded again once."""
    from tokembed.plan import _content_hashes

    image = "cd" * 32
    marks = SimpleNamespace(content_mark=lambda text: MARK if text == "T" else "")
    items = [item("a", "plain text"), item("b", None, image), item("c", "caption", image), item("d", "T")]
    earlier = [b"plain text", f"\0image sha256:{image}".encode(), f"caption\0image sha256:{image}".encode(), f"T\0{MARK}".encode()]
    assert _content_hashes(items, "fp", marks) == [hashlib.sha256(b"fp\0" + content).digest() for content in earlier]


def test_chunk_digests_of_ids_holding_nul_differ():
    from tokembed.plan import chunk_digest

    first, second = b"A" * 32, b"B" * 32
    assert chunk_digest([item("p"), item("q")], [first, second]) != chunk_digest([item("p\0" + "A" * 32 + "q")], [second])
    # an id without NUL digests as before: an interrupted run's journal is still resumed after an upgrade
    assert chunk_digest([item("p"), item("q")], [first, second]) == hashlib.sha256(b"p\0" + first + b"q\0" + second).hexdigest()
