"""Image models on the worker pool: ``--devices cpu:2`` spreads image batches (pixel payloads, batched by
visual tokens) over two worker processes and writes the same shards, byte for byte, as ``--devices cpu``.

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
