"""ColQwen3.5 (colpali-engine 0.3.18 ``ColQwen3_5`` save format), loaded natively.

The reference is composed here from transformers' building blocks, independently of tokembed's code:
``Qwen3_5Model.from_pretrained`` (vision + hybrid text model) + a ``Linear`` holding the checkpoint's
``custom_text_proj.{weight,bias}``; the prompts are colpali-engine's (``ColQwen3_5Processor``), expanded with the
image processor's grid (PIL backend); vectors = normalize(proj(last hidden state)) x mask (``ColQwen3_5.forward``).
Videos: Qwen3-VL's video path (``Qwen3VLVideoProcessor.sample_frames`` / ``smart_resize`` / ``patchify`` and
``Qwen3VLProcessor``'s timestamped placeholders), frames decoded here with PyAV.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import av  # PyAV: the test extra installs it (tokembed[video])
import numpy as np
import pytest
import torch
from PIL import Image

import qwen_checkpoints
from helpers import assert_score_equals_brute_force, manifest, read_index
from helpers import encode_chunk as encode
from tokembed.models import LoadOptions, describe_families, detect, load_model
from tokembed.settings import EncodeFlags, resolve

TOLERANCE = 1e-5
IMAGE_PROMPT = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe the image.<|im_end|><|endoftext|>"
SIZES = [(50, 40), (30, 100), (64, 64), (90, 20)]  # (width, height)
QUERIES = ["what is the capital of france?", "hello", ""]


def noise_images() -> list[Image.Image]:
    rng = np.random.default_rng(3)
    return [Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)) for w, h in SIZES]


def write_video(path: Path, frames: int, fps: int, size=(64, 48), codec: str = "mpeg4") -> Path:
    rng = np.random.default_rng(frames)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(frames):
            pixels = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
            pixels[:, : (i * 5) % size[0]] = 200  # motion, so that frames differ
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return qwen_checkpoints.build_colqwen3_5(tmp_path_factory.mktemp("colqwen3_5") / "ckpt")


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("videos")
    write_video(folder / "clip.mp4", frames=20, fps=10)
    write_video(folder / "short.webm", frames=7, fps=5, size=(40, 56), codec="libvpx")
    return folder


@pytest.fixture(scope="module")
def model(checkpoint):
    return load_model(checkpoint, LoadOptions())


class Reference:
    """colpali-engine's ColQwen3_5 semantics from transformers' blocks (see the module doc)."""

    def __init__(self, path: Path, bidirectional: bool = False) -> None:
        from safetensors.torch import load_file
        from transformers import AutoTokenizer, Qwen3_5Config, Qwen3_5Model
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
        from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

        config = Qwen3_5Config.from_pretrained(path)
        if bidirectional:
            config.text_config.is_causal = False
        self.backbone = Qwen3_5Model.from_pretrained(path, config=config).eval()
        tensors = load_file(path / "model.safetensors")
        weight, bias = tensors["custom_text_proj.weight"], tensors["custom_text_proj.bias"]
        self.proj = torch.nn.Linear(weight.shape[1], weight.shape[0])
        self.proj.load_state_dict({"weight": weight, "bias": bias})
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        settings = json.loads((path / "processor_config.json").read_text())
        self.images = Qwen2VLImageProcessorPil.from_dict(settings["image_processor"])
        video = {k: v for k, v in settings["video_processor"].items() if k != "video_processor_type"}
        self.videos = Qwen3VLVideoProcessor.from_dict(video)
        self.ids = {t: self.tokenizer.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>")}

    @torch.inference_mode()
    def forward(self, text: str, **vision) -> tuple[list[int], np.ndarray]:
        ids = torch.tensor([self.tokenizer(text)["input_ids"]])
        mask = torch.ones_like(ids)
        types = (ids == self.ids["<|image_pad|>"]).long() + 2 * (ids == self.ids["<|video_pad|>"]).long()
        hidden = self.backbone(input_ids=ids, attention_mask=mask, mm_token_type_ids=types, **vision).last_hidden_state
        proj = self.proj(hidden)
        vectors = proj / proj.norm(dim=-1, keepdim=True) * mask.unsqueeze(-1)
        return ids[0].tolist(), vectors[0].numpy()

    def image(self, image: Image.Image):
        out = self.images(images=[image.convert("RGB")], return_tensors="pt")
        grid = out["image_grid_thw"]
        text = IMAGE_PROMPT.replace("<|image_pad|>", "<|image_pad|>" * (int(grid.prod()) // 4))
        return self.forward(text, pixel_values=out["pixel_values"], image_grid_thw=grid)

    def query(self, query: str):
        return self.forward(query + "<|endoftext|>" * 10)

    def video(self, file: Path):
        from transformers.models.qwen3_vl.video_processing_qwen3_vl import smart_resize
        from transformers.video_utils import VideoMetadata

        with av.open(str(file)) as container:
            stream = container.streams.video[0]
            fps = float(stream.average_rate)
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
        vp = self.videos
        indices = vp.sample_frames(VideoMetadata(total_num_frames=len(frames), fps=fps))
        height, width = frames[0].shape[:2]
        h, w = smart_resize(num_frames=len(indices), height=height, width=width, temporal_factor=2, factor=16,
                            min_pixels=vp.size["shortest_edge"], max_pixels=vp.size["longest_edge"])
        picked = [np.asarray(Image.fromarray(frames[i]).resize((w, h), Image.Resampling.BICUBIC)) for i in indices]
        pixels = torch.from_numpy(np.stack(picked)).permute(0, 3, 1, 2).float() / 255.0
        pixels = (pixels - 0.5) / 0.5
        patches, t, gh, gw = vp.patchify(pixels[None], patch_size=8, merge_size=2, temporal_patch_size=2)
        indices = list(indices) + [indices[-1]] * (len(indices) % 2)
        stamps = [(indices[i] + indices[i + 1]) / 2 / fps for i in range(0, len(indices), 2)]
        block = "".join(f"<{s:.1f} seconds><|vision_start|>{'<|video_pad|>' * (gh * gw // 4)}<|vision_end|>" for s in stamps)
        text = f"<|im_start|>user\n{block}Describe the video.<|im_end|><|endoftext|>"
        return self.forward(text, pixel_values_videos=patches[0], video_grid_thw=torch.tensor([[t, gh, gw]]))


@pytest.fixture(scope="module")
def reference(checkpoint) -> Reference:
    return Reference(checkpoint)




def assert_same(results, expected) -> None:
    for (vectors, ids), (want_ids, want) in zip(results, expected):
        assert ids.dtype == np.int32 and ids.tolist() == want_ids
        assert vectors.shape == want.shape
        assert np.abs(vectors - want).max() <= TOLERANCE


def test_detected_natively_and_listed(checkpoint, model):
    from safetensors import safe_open

    assert detect(checkpoint) == "ColQwen3_5" == model.family  # no --trust-remote-code
    with safe_open(checkpoint / "model.safetensors", "pt") as handle:
        assert any(name.startswith("mtp.") for name in handle.keys())  # present, ignored, and the load succeeded
    assert model.embedding_dim == qwen_checkpoints.COLQWEN3_5_DIM and model.extra["attention"] == "causal"
    info = {f.key: f for f in describe_families()}["ColQwen3_5"]
    assert "videos" in info.modes and "colpali-engine 0.3.18" in info.reference and "causal" in info.needs


def test_image_documents_match_the_reference(model, reference):
    images = noise_images()
    results = encode(model, "document", images, budget=200)  # several right-padded batches of mixed lengths
    assert_same(results, [reference.image(image) for image in images])
    image_pad = reference.ids["<|image_pad|>"]
    assert len({int((ids == image_pad).sum()) for _, ids in results}) > 1  # aspect ratio sets the token count
    for vectors, _ in results:
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=-1), 1.0, atol=1e-5)


def test_queries_match_the_reference(model, reference):
    results = encode(model, "query", QUERIES, budget=30)
    assert_same(results, [reference.query(query) for query in QUERIES])
    eot = reference.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    empty = results[QUERIES.index("")][1].tolist()
    assert empty == [eot] * 10  # no prefix, no trailing newline: only the augmentation tokens, all kept
    raw = encode(model, "query", QUERIES, normalize=False)  # --no-normalize: custom_text_proj's output (bias included)
    for (unit, _), (vectors, _) in zip(results, raw):
        norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
        assert np.abs(norms - 1).max() > 0.01 and np.abs(vectors / norms - unit).max() <= TOLERANCE


def test_video_documents_match_the_reference(model, reference, videos):
    from tokembed.sources import SourceOptions, open_sources

    items = [item for chunk in open_sources([videos], SourceOptions(modality="image")) for item in chunk]
    assert [item.id for item in items] == ["clip.mp4", "short.webm"] and all(item.error is None for item in items)
    mixed = [items[0].image, noise_images()[0], items[1].image]  # one batch holding videos and an image
    results = encode(model, "document", mixed)
    expected = [reference.video(videos / "clip.mp4"), reference.image(noise_images()[0]), reference.video(videos / "short.webm")]
    assert_same(results, expected)
    video_pad = reference.ids["<|video_pad|>"]
    assert int((results[0][1] == video_pad).sum()) > 0 and int((results[1][1] == video_pad).sum()) == 0


def test_attention_follows_the_checkpoints_is_causal(tmp_path, model, reference):
    path = qwen_checkpoints.build_colqwen3_5(tmp_path / "bidirectional", is_causal=False)
    bidirectional = load_model(path)
    assert bidirectional.extra["attention"] == "bidirectional"
    images, queries = noise_images()[:2], QUERIES[:2]
    documents, texts = encode(bidirectional, "document", images, budget=100), encode(bidirectional, "query", queries)
    ref = Reference(path, bidirectional=True)
    assert_same(documents, [ref.image(image) for image in images])
    assert_same(texts, [ref.query(query) for query in queries])
    causal = encode(model, "query", queries)  # same weights, causal: the vectors before the last token differ
    assert np.abs(causal[0][0][:-1] - texts[0][0][:-1]).max() > 1e-3


def _copy(checkpoint: Path, target: Path) -> Path:
    shutil.copytree(checkpoint, target)
    return target


def _edit_weights(path: Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(path / "model.safetensors")
    edit(tensors)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.pop("custom_text_proj.bias"), r"not in the checkpoint .*custom_text_proj\.bias"),
        (lambda t: t.__setitem__("pooler.dense.weight", torch.zeros(2, 2)), r"not used: pooler\.dense\.weight"),
    ],
    ids=["missing-projection-bias", "extra-unknown-tensor"],
)
def test_a_checkpoint_that_does_not_match_is_exit_4_and_writes_nothing(cli, checkpoint, tmp_path, edit, message):
    import re

    path = _copy(checkpoint, tmp_path / "ckpt")
    _edit_weights(path, edit)
    pages = tmp_path / "pages"
    pages.mkdir()
    noise_images()[0].save(pages / "page.png")
    out = tmp_path / "index"
    result = cli("encode", pages, "--model", path, "-o", out, "--quiet")
    assert result.exit_code == 4, result.output
    assert re.search(message, result.output) and "model.safetensors" in result.output
    assert not (out / "manifest.json").exists()


def test_a_dim_that_is_not_a_positive_whole_number_is_refused(checkpoint, tmp_path):
    """``dim`` 24.5 over a 24-row projection loaded as 24 (colpali-engine's nn.Linear refuses a float)."""
    from tokembed.errors import ModelError

    path = _copy(checkpoint, tmp_path / "ckpt")
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "dim": qwen_checkpoints.COLQWEN3_5_DIM + 0.5}))
    with pytest.raises(ModelError, match=r"config\.json: dim is 24\.5, not a positive whole number"):
        load_model(path, LoadOptions())


def test_encode_images_and_videos_then_score_equals_brute_force_maxsim(cli, checkpoint, videos, tmp_path):
    corpus = tmp_path / "corpus"
    shutil.copytree(videos, corpus)
    for number, image in enumerate(noise_images()):
        image.save(corpus / f"page{number}.png")
    (corpus / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    out = tmp_path / "index"
    result = cli("encode", corpus, "--model", checkpoint, "-o", out, "--store-dtype", "float32", "--on-error", "skip", "--quiet")
    assert result.exit_code == 0, result.output
    data = manifest(out)
    rows = read_index(out)
    assert data["model"]["family"] == "ColQwen3_5"
    assert sorted(rows) == sorted(["clip.mp4", "short.webm"] + [f"page{n}.png" for n in range(len(SIZES))])
    assert "broken.mp4" in json.dumps(data)  # recorded as skipped, with its reason
    assert_score_equals_brute_force(cli, out, ["capital of france", "hello"])


def test_video_cells_of_parquet_and_jsonl_files(videos, tmp_path):
    import base64

    from helpers import write_jsonl, write_parquet
    from tokembed.sources import SourceOptions, open_sources
    from tokembed.sources.video import Video

    clip = (videos / "clip.mp4").read_bytes()
    shutil.copy(videos / "short.webm", tmp_path / "short.webm")
    write_parquet(tmp_path / "videos.parquet", [{"id": "bytes", "video": clip}, {"id": "bad", "video": b"not a video"}])
    write_parquet(tmp_path / "paths.parquet", [{"id": "path", "video": "short.webm"}])
    write_jsonl(tmp_path / "rows.jsonl", [
        {"id": "struct", "video": {"bytes": base64.b64encode(clip).decode(), "path": None}},
        {"id": "in-image-field", "image": "short.webm"},  # a video in the image field is read as a video
    ])
    options = SourceOptions(modality="image")
    items = {item.id: item for path in ("videos.parquet", "paths.parquet", "rows.jsonl") for chunk in open_sources([tmp_path / path], options) for item in chunk}
    assert sorted(items) == ["bad", "bytes", "in-image-field", "path", "struct"]
    assert "cannot open the video" in items["bad"].error and items["bad"].image is None
    for name, frames, fps in (("bytes", 20, 10), ("struct", 20, 10), ("path", 7, 5), ("in-image-field", 7, 5)):
        video = items[name].image
        assert isinstance(video, Video) and (video.total_frames, video.fps) == (frames, fps), name
    from tokembed.plan import content_hash

    hashed = {name: content_hash("settings", item.text or "", "", item.image_sha256) for name, item in items.items()}
    assert hashed["bytes"] == hashed["struct"] != hashed["path"]  # hashed on the stored bytes
    with pytest.raises(Exception, match="no video column 'clips'"):
        list(open_sources([tmp_path / "videos.parquet"], SourceOptions(modality="image", video_column="clips", video_column_given=True)))


def test_a_model_without_a_video_path_refuses_videos_by_name(videos):
    from tokembed.errors import BadInputError
    from tokembed.models.vision import VisionEncoder
    from tokembed.sources.video import probe_video

    video = probe_video(str(videos / "clip.mp4"), path=str(videos / "clip.mp4"))

    class Model:  # the minimum a VisionEncoder reads of a family without videos
        architecture, projection, processor = "ColPaliForRetrieval", "proj", None
        tokenizer = type("T", (), {"pad_token_id": 0})()

    encoder = VisionEncoder(Model(), resolve(EncodeFlags(kind="document"), None, 512))
    with pytest.raises(BadInputError, match=r"clip\.mp4: ColPaliForRetrieval does not encode videos"):
        encoder.tokenize([video])


# -- bonus: colpali-engine 0.3.18 itself (its own ColQwen3_5 and ColQwen3_5Processor), in a separate venv ----------
_COLPALI_ENGINE_SCRIPT = r'''
import json, sys
import numpy as np, torch
from PIL import Image
from colpali_engine.models import ColQwen3_5, ColQwen3_5Processor
from transformers import AutoTokenizer
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
from transformers.processing_utils import ProcessorMixin

path, images, queries, out = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]

class ImagesOnly(ColQwen3_5Processor):
    """colpali-engine's processor minus the video processor (transformers will not build it without torchvision)."""
    def __init__(self, image_processor=None, tokenizer=None, **kwargs):
        ProcessorMixin.__init__(self, image_processor, tokenizer)
        for name, token in (("image", "<|image_pad|>"), ("video", "<|video_pad|>"),
                            ("vision_start", "<|vision_start|>"), ("vision_end", "<|vision_end|>")):
            setattr(self, name + "_token", token)
            setattr(self, name + "_token_id", tokenizer.convert_tokens_to_ids(token))
        self.tokenizer.padding_side = "left"

settings = json.load(open(path + "/processor_config.json"))["image_processor"]
processor = ImagesOnly(Qwen2VLImageProcessor.from_dict(settings), AutoTokenizer.from_pretrained(path))
model = ColQwen3_5.from_pretrained(path).eval()
result = {}
with torch.no_grad():
    for key, batch in [("d%d" % i, processor.process_images([Image.open(f)])) for i, f in enumerate(images)] + \
                      [("q%d" % i, processor.process_queries([q])) for i, q in enumerate(queries)]:
        result[key + "_ids"] = batch["input_ids"][0].numpy()
        result[key] = model(**batch)[0].numpy()
np.savez(out, **result)
'''


@pytest.mark.slow
def test_matches_colpali_engine_itself(model, checkpoint, tmp_path):
    """Against colpali-engine 0.3.18's own classes, run by the Python named in TOKEMBED_COLPALI_ENGINE_PYTHON: a venv
    next to torch 2.13 with ``pip install --no-deps colpali-engine==0.3.18 transformers==5.3.0 tokenizers==0.22.2
    'huggingface-hub>=1.3,<2'`` (``python -m venv --system-site-packages``). Bonus check: skipped without it."""
    import os
    import subprocess

    python = os.environ.get("TOKEMBED_COLPALI_ENGINE_PYTHON")
    if not python:
        pytest.skip("set TOKEMBED_COLPALI_ENGINE_PYTHON to a Python with colpali-engine 0.3.18 (see the docstring)")
    files = []
    for number, image in enumerate(noise_images()):
        files.append(tmp_path / f"page{number}.png")
        image.save(files[-1])
    out = tmp_path / "colpali_engine.npz"
    script = tmp_path / "run_colpali_engine.py"
    script.write_text(_COLPALI_ENGINE_SCRIPT)
    args = [python, str(script), str(checkpoint), json.dumps([str(f) for f in files]), json.dumps(QUERIES), str(out)]
    subprocess.run(args, check=True, capture_output=True, timeout=600)
    want = np.load(out)
    documents = encode(model, "document", [Image.open(f) for f in files], budget=200)
    queries = encode(model, "query", QUERIES, budget=30)
    assert_same(documents, [(want[f"d{i}_ids"].tolist(), want[f"d{i}"]) for i in range(len(files))])
    assert_same(queries, [(want[f"q{i}_ids"].tolist(), want[f"q{i}"]) for i in range(len(QUERIES))])


@pytest.mark.slow  # two CLI encodes of a vision checkpoint for stderr text alone (~12-17 s)
def test_quiet_runs_keep_transformers_notices_off_stderr(checkpoint, tmp_path):
    """The hybrid text model's kernels fall back to torch on the CPU, and transformers logs it during the forward
    pass: every --quiet encode and score printed two [transformers] lines, mail from cron every night."""
    import subprocess
    import sys

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    noise_images()[0].save(corpus / "page.png")
    out = tmp_path / "index"
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TOKEMBED_CACHE": str(tmp_path / "cache")}
    for args in (["encode", corpus, "--model", checkpoint, "-o", out, "--quiet"], ["score", out, "--query", "hello", "--quiet"]):
        result = subprocess.run([sys.executable, "-m", "cli.main", *map(str, args)], capture_output=True, text=True, env=env)
        assert result.returncode == 0 and result.stderr == "", result.stderr
