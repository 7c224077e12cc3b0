"""Image models on the worker pool: ``--devices cpu:2`` has two worker processes run the processor on the
images and then the batches (pixel payloads, batched by visual tokens), and writes the same shards, byte for
byte, as ``--devices cpu``.

ColQwen2 is the hard case: its images give different numbers of visual tokens (4..16 here, aspect ratio
kept), so batches mix payload shapes that ``collate`` pads. ColModernVBert splits images into a varying
number of tiles. Each run is a real ``python -m cli.main encode`` subprocess; no process may outlive it.
"""

from __future__ import annotations

import pytest

from helpers import manifest, read_index
from test_devices import assert_same_rows, encode, shard_digests

SAMPLE_IMAGES = __import__("conftest").SAMPLE_DATA / "images"
# 14 images -> 3 shards of at most 5; a small token budget so every chunk is several batches.
IMAGE_RUN = ("--shard-rows", 5, "--batch-tokens", 96, "--store-dtype", "float32")


@pytest.mark.slow  # two encode subprocesses, three with workers' model loads: ~40 s each on 2 shared cores
@pytest.mark.parametrize("family", ["colqwen2", "colmodernvbert"])
def test_image_batches_spread_over_workers_give_the_one_device_index(tmp_path_factory, family):
    from vision_checkpoints import VISION_BUILDERS

    root = tmp_path_factory.mktemp(f"image-devices-{family}")
    model = VISION_BUILDERS[family](root / family)
    one, two = root / "cpu", root / "cpu2"
    result = encode(SAMPLE_IMAGES, one, *IMAGE_RUN, "--devices", "cpu", model=model)
    assert result.returncode == 0, result.stderr
    result = encode(SAMPLE_IMAGES, two, *IMAGE_RUN, "--devices", "cpu:2", model=model)
    assert result.returncode == 0, result.stderr
    assert "devices: cpu:0, cpu:1: one worker process each" in result.stderr
    assert "one device" not in result.stderr  # no fallback to a single device
    rows = read_index(one)
    assert len(rows) == len(list(SAMPLE_IMAGES.iterdir())) and len(manifest(one)["shards"]) == 3
    assert len({len(ids) for _, ids in rows.values()}) > 1  # images of different visual token counts
    assert_same_rows(two, one)
    assert shard_digests(two) == shard_digests(one)  # byte-identical shards


@pytest.mark.slow
def test_an_image_worker_that_dies_hands_its_batches_to_the_other(tmp_path_factory):
    from vision_checkpoints import build_colqwen2

    root = tmp_path_factory.mktemp("image-worker-death")
    model = build_colqwen2(root / "colqwen2")
    one, two = root / "cpu", root / "cpu2"
    assert encode(SAMPLE_IMAGES, one, *IMAGE_RUN, "--devices", "cpu", model=model).returncode == 0
    result = encode(SAMPLE_IMAGES, two, *IMAGE_RUN, "--devices", "cpu:2", env={"TOKEMBED_TEST_WORKER_DIE_AT": "1:2"}, model=model)
    assert result.returncode == 0, result.stderr
    assert "worker 1 (cpu:1) died (killed by SIGKILL) holding batch" in result.stderr
    assert shard_digests(two) == shard_digests(one)


@pytest.mark.slow  # two workers load the model: ~30 s on 2 shared cores
def test_pool_workers_run_the_image_processor_and_the_main_process_only_plans(tmp_path, monkeypatch):
    from vision_checkpoints import build_colqwen2

    from tokembed.embedder import Embedder
    from tokembed.engine.local import LocalRunner
    from tokembed.engine.pool import PoolRunner
    from tokembed.errors import BadInputError
    from tokembed.settings import EncodeFlags
    from tokembed.sources.images import decode_image

    flags = EncodeFlags(store_dtype="float32")
    embedder = Embedder.load(str(build_colqwen2(tmp_path / "colqwen2")), flags, "cpu")
    images = [decode_image(path.read_bytes(), 40_000_000).image for path in sorted(SAMPLE_IMAGES.iterdir())]
    chunks = [images[:6], images[6:]]
    expected = list(LocalRunner(embedder, 96).map_chunks(chunks))

    def main_process_processor(inputs):
        raise AssertionError("the pool's main process ran the image processor")

    runner = PoolRunner(embedder.spec(flags), ("cpu:0", "cpu:1"), embedder.encoder, 96)
    try:
        monkeypatch.setattr(embedder.encoder, "tokenize", main_process_processor)
        results = list(runner.map_chunks(chunks))
        for got, want in zip(results, expected, strict=True):
            assert (got.real_tokens, got.computed_tokens) == (want.real_tokens, want.computed_tokens)  # the same plan
            for a, b in zip(got.vectors + got.token_ids, want.vectors + want.token_ids, strict=True):
                assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
        # A processor's refusal in a worker reaches the caller as the error it is in process.
        with pytest.raises(BadInputError, match="encodes documents as images; got text"):
            list(runner.map_chunks([[images[0], "some text"]]))
    finally:
        runner.close()
