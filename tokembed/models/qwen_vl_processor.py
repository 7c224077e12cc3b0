"""A Qwen-VL processor built from its parts: the tokenizer, the image processor (PIL backend) and the family's
prompts, for the Qwen3-VL / Qwen3.5 retrieval families (ColQwen3.5 here; ColQwen3, Ops-ColQwen3 and Nemotron
ColEmbed can use it the same way).

Stage: models (before the forward). Why not ``AutoProcessor``: without torchvision, transformers 5.x refuses to
build a ``Qwen3VLProcessor`` with its video processor (``check_argument_for_proper_class`` looks the class up in a
video-processor mapping that is empty without torchvision: ``AttributeError ... _extra_content``), and the video
processor's ``__call__`` calls torchvision to convert and resize frames (``NameError: name 'tvF' is not defined``). Nothing here patches transformers:
the tokenizer is ``AutoTokenizer``, images go through ``Qwen2VLImageProcessorPil`` (transformers' own PIL
backend of the image processor these checkpoints name), and the prompt logic is the few lines of
``Qwen3VLProcessor.__call__`` and colpali-engine's processors that matter for retrieval.

API (what a family needs):

* ``QwenVLPrompts``                 the family's prompts: the image prompt (holding the image placeholder once),
                                    the query prefix and suffix, optionally a video prompt.
* ``QwenVLProcessor.from_pretrained(path, prompts)``   reads the tokenizer and the processor settings
                                    (``preprocessor_config.json`` / ``video_preprocessor_config.json``, or the
                                    ``image_processor`` / ``video_processor`` entries of ``processor_config.json``).
* ``process_images(images)``        colpali-engine's ``process_images``: the image prompt, each ``<|image_pad|>``
                                    expanded to t*h*w / merge² tokens, ``pixel_values`` padded per image to
                                    ``[B, max_patches, patch_dim]``, ``image_grid_thw`` [B, 3].
* ``image_refusal(image)``         why ``process_images`` would refuse an image, from its size (checked where rows are
                                    planned: ``VisionEncoder.input_problem``), or None.
* ``process_queries(texts)``        prefix + text + suffix (colpali-engine: ``query_prefix + q + augmentation × 10``).
* ``process_videos(videos)``        ``sources.video.Video`` (decoded here: the frames ``video_plan`` picks, resized as
                                    they come) or ``VideoFrames`` -> the video prompt with Qwen3-VL's per-frame-group
                                    timestamps, ``pixel_values_videos`` padded per video, ``video_grid_thw`` [B, 3].
* ``video_plan(total, fps, h, w)``  which frames the video processor takes and the size every frame is resized to,
                                    with the settings ``Qwen3VLVideoProcessor.__call__`` passes (``do_sample_frames``,
                                    ``num_frames`` / ``fps``, ``cap_pixels_per_frame`` / ``max_video_tokens``,
                                    ``do_resize``); a setting transformers refuses is a ModelError naming it.

Every output also carries ``attention_mask`` and ``mm_token_type_ids`` (0 text, 1 image, 2 video: Qwen3-VL and
Qwen3.5 compute their M-RoPE positions from it). Batches are left-padded, as colpali-engine's processors pad.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tokembed.errors import ModelError
from tokembed.sources.video import Video, VideoFrames

IMAGE_TOKEN = "<|image_pad|>"
VIDEO_TOKEN = "<|video_pad|>"
VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"


@dataclass(frozen=True)
class QwenVLPrompts:
    image: str  # the document prompt, with IMAGE_TOKEN once where the image goes
    query_prefix: str = ""
    query_suffix: str = ""
    video: str | None = None  # with VIDEO_TOKEN once where the frames go (expanded with timestamps); None: no video


class QwenVLProcessor:
    """Tokenizer + PIL image processor (+ video settings) + prompts; see the module doc for the methods."""

    def __init__(self, tokenizer: Any, image_processor: Any, prompts: QwenVLPrompts, video_processor: Any = None) -> None:
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.video_processor = video_processor
        self.prompts = prompts
        self.settings_dir: Path | None = None  # where the settings were read (named in refusals)
        self.video_refusal: str | None = None  # why videos cannot be encoded (vision_check: settings vs the model)
        self.image_token_id = _token_id(tokenizer, IMAGE_TOKEN)
        self.video_token_id = _token_id(tokenizer, VIDEO_TOKEN)

    @classmethod
    def from_pretrained(cls, path: Path, prompts: QwenVLPrompts) -> "QwenVLProcessor":
        from transformers import AutoTokenizer
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        path = Path(path)
        image_settings, video_settings = read_processor_settings(path)
        if image_settings is None:
            raise ModelError(
                f"{path}: no image processor settings (preprocessor_config.json, or image_processor in processor_config.json)"
            )
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            image_processor = Qwen2VLImageProcessorPil.from_dict(image_settings)
            video_processor = _video_processor(video_settings) if prompts.video is not None and video_settings is not None else None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelError(f"{path}: cannot build the Qwen-VL processor from its parts: {exc}") from exc
        processor = cls(tokenizer, image_processor, prompts, video_processor)
        processor.settings_dir = path
        return processor

    # -- text ---------------------------------------------------------------------------------------
    def process_texts(self, texts: list[str]):
        return self._tokenize(list(texts))

    def process_queries(self, texts: list[str]):
        prompts = self.prompts
        return self._tokenize([prompts.query_prefix + text + prompts.query_suffix for text in texts])

    # -- images -------------------------------------------------------------------------------------
    def process_images(self, images: list):
        """colpali-engine ``ColQwen3_5Processor.process_images`` (and ``ColQwen2Processor``'s), from parts."""
        images = [image.convert("RGB") for image in images]
        vision = self.image_processor(images=images, return_tensors="pt")
        grid = vision["image_grid_thw"]  # [B, 3]
        merge = int(self.image_processor.merge_size) ** 2
        texts = [self.prompts.image.replace(IMAGE_TOKEN, IMAGE_TOKEN * (int(thw.prod()) // merge), 1) for thw in grid]
        batch = self._tokenize(texts)
        batch["pixel_values"] = _pad_per_item(vision["pixel_values"], grid)
        batch["image_grid_thw"] = grid
        return batch

    def image_refusal(self, image) -> str | None:
        """Why ``process_images`` would refuse ``image``, told from its size alone (no pixels processed), or None."""
        from tokembed.models.vision_inputs import qwen_image_tokens

        try:
            qwen_image_tokens(image.size, self.image_processor)
        except ValueError as exc:
            return str(exc)
        return None

    # -- videos -------------------------------------------------------------------------------------
    def video_plan(self, total_frames: int, fps: float, height: int, width: int) -> tuple[np.ndarray, tuple[int, int]]:
        """The frame numbers the video processor takes from a ``total_frames`` video at ``fps`` and the (height,
        width) every frame is resized to, with the settings ``Qwen3VLVideoProcessor.__call__`` passes: every frame
        without ``do_sample_frames``, else ``sample_frames`` with its ``num_frames`` and ``fps``."""
        processor = self._require_video()
        _check_frame_rate(fps)
        if not processor.do_sample_frames:
            indices = np.arange(int(total_frames), dtype=np.int64)
        else:
            indices = self._sampled_frames(int(total_frames), fps)
        return indices, self._frame_size(len(indices), height, width)

    def video_input_refusal(self, video: Video) -> str | None:
        """Why ``process_videos`` would refuse ``video``, told from its frame count, rate and size (no frame
        decoded), or None; also None where every video is refused (``_require_video``: exit 4 when one is encoded)."""
        if self.video_processor is None or self.video_refusal is not None:
            return None
        try:
            self.video_plan(video.total_frames, video.fps, video.height, video.width)
        except ValueError as exc:
            return str(exc)
        return None

    def _sampled_frames(self, total_frames: int, fps: float) -> np.ndarray:
        from transformers.video_utils import VideoMetadata

        processor = self.video_processor
        metadata = VideoMetadata(total_num_frames=total_frames, fps=fps)
        for setting in ("num_frames", "fps"):
            value = getattr(processor, setting)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise self._video_setting_error(setting, repr(value), "not a number")
        try:
            indices = processor.sample_frames(metadata, num_frames=processor.num_frames, fps=processor.fps)
        except (ValueError, TypeError) as exc:  # num_frames and fps both set: transformers refuses every video
            raise self._video_setting_error("num_frames", processor.num_frames, f"with fps {processor.fps}: {exc}") from exc
        indices = np.asarray(indices, dtype=np.int64)
        if len(indices) == 0:
            raise self._video_setting_error("num_frames", processor.num_frames, "samples no frame")
        return indices

    def _frame_size(self, n_frames: int, height: int, width: int) -> tuple[int, int]:
        from transformers.models.qwen3_vl.video_processing_qwen3_vl import smart_resize

        processor = self.video_processor
        temporal, factor = int(processor.temporal_patch_size), int(processor.patch_size) * int(processor.merge_size)
        if not processor.do_resize:  # frames patchified at their own size, which must be whole merged patches
            if height % factor or width % factor:
                # the video's size, not the settings, is at fault: a bad row (ValueError), as such an image is
                raise ValueError(f"do_resize is false and its {width}x{height} frames are not whole {factor}-pixel patches")
            return height, width
        size = processor.size
        # fewer frames than temporal_patch_size (a 1-frame video): smart_resize raises ValueError, as in transformers
        return smart_resize(
            num_frames=n_frames, height=height, width=width, temporal_factor=temporal,
            factor=factor, min_pixels=size["shortest_edge"], max_pixels=self._video_max_pixels(n_frames, factor),
        )

    def _video_max_pixels(self, n_frames: int, factor: int) -> int:
        """``Qwen3VLVideoProcessor.resize``'s pixel budget for the whole clip: ``size["longest_edge"]``, or with
        ``cap_pixels_per_frame`` at most ``max_video_tokens`` patches (or the budget's even share) per frame, at
        least 1.05 x ``shortest_edge``."""
        processor = self.video_processor
        size = processor.size
        if not processor.cap_pixels_per_frame:
            return size["longest_edge"]
        tokens = processor.max_video_tokens
        if tokens is None:
            raise self._video_setting_error("max_video_tokens", None, "cap_pixels_per_frame needs a number")
        per_frame = max(min(int(tokens) * factor * factor, size["longest_edge"] // n_frames), int(size["shortest_edge"] * 1.05))
        return per_frame * n_frames

    def _video_setting_error(self, setting: str, value: Any, why: str) -> ModelError:
        from tokembed.models.vision_check import settings_file

        where = settings_file(self.settings_dir, "video_processor", setting) if self.settings_dir else "the video processor"
        return ModelError(f"{where}: video setting {setting} {value} cannot be applied as transformers applies it ({why})")

    def process_videos(self, videos: list):
        """Qwen3-VL's video path, from parts: resize every frame of a video to one ``smart_resize`` size (PIL
        bicubic, as the image path), rescale, normalize, ``patchify`` (the video processor's own), and expand the
        placeholder into ``<{t:.1f} seconds><|vision_start|>`` + tokens + ``<|vision_end|>`` per frame group."""
        self._require_video()
        patches, grids, texts = [], [], []
        for video in videos:
            if isinstance(video, Video):
                video = video.decode(self.video_plan, resample=int(self.video_processor.resample))
            _check_frame_rate(video.fps)
            pixel_values, grid = self._video_patches(video)
            patches.append(pixel_values)
            grids.append(grid)
            texts.append(self.prompts.video.replace(VIDEO_TOKEN, self._video_placeholder(video, grid), 1))
        grid = torch.tensor(grids, dtype=torch.long)
        batch = self._tokenize(texts)
        batch["pixel_values_videos"] = _pad_per_item(torch.cat(patches), grid)
        batch["video_grid_thw"] = grid
        return batch

    def _video_patches(self, video: VideoFrames) -> tuple[torch.Tensor, list[int]]:
        from PIL import Image

        processor = self.video_processor
        frames = np.asarray(video.frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
            raise ModelError(f"a video must be frames [n, height, width, 3]; got shape {frames.shape}")
        temporal, patch, merge = int(processor.temporal_patch_size), int(processor.patch_size), int(processor.merge_size)
        height, width = video.source_size or frames.shape[1:3]
        resized_height, resized_width = self._frame_size(len(frames), height, width)
        resample = Image.Resampling(int(processor.resample))
        resized = np.stack([_resize(frame, resized_height, resized_width, resample) for frame in frames])
        pixels = torch.from_numpy(resized).permute(0, 3, 1, 2).float()  # [T, C, H, W]
        if processor.do_rescale:
            pixels = pixels * float(processor.rescale_factor)
        if processor.do_normalize:
            mean = torch.tensor(processor.image_mean, dtype=torch.float32).view(1, 3, 1, 1)
            std = torch.tensor(processor.image_std, dtype=torch.float32).view(1, 3, 1, 1)
            pixels = (pixels - mean) / std
        flat, grid_t, grid_h, grid_w = processor.patchify(pixels[None], patch_size=patch, merge_size=merge, temporal_patch_size=temporal)
        return flat[0], [int(grid_t), int(grid_h), int(grid_w)]

    def _video_placeholder(self, video: VideoFrames, grid: list[int]) -> str:
        """``Qwen3VLProcessor.replace_video_token``: one ``<t seconds>`` + vision block per temporal patch."""
        merge = int(self.video_processor.merge_size) ** 2
        per_group = grid[1] * grid[2] // merge
        stamps = frame_group_timestamps(video.indices, video.fps, int(self.video_processor.temporal_patch_size))
        return "".join(f"<{stamp:.1f} seconds>{VISION_START}{VIDEO_TOKEN * per_group}{VISION_END}" for stamp in stamps[: grid[0]])

    def _require_video(self):
        if self.video_processor is None:
            raise ModelError(
                "this model's processor has no video settings (video_processor in processor_config.json, or "
                "video_preprocessor_config.json): videos are refused"
            )
        if self.video_refusal is not None:
            raise ModelError(self.video_refusal)
        return self.video_processor

    # -- shared -------------------------------------------------------------------------------------
    def _tokenize(self, texts: list[str]):
        # padding_side per call, not set on the tokenizer: that is shared with other threads (and with the caller)
        batch = self.tokenizer(texts, padding="longest", padding_side="left", return_tensors="pt", return_token_type_ids=False)
        ids = batch["input_ids"]
        types = torch.zeros_like(ids)
        types[ids == self.image_token_id] = 1
        types[ids == self.video_token_id] = 2
        batch["mm_token_type_ids"] = types
        return batch


def _resize(frame: np.ndarray, height: int, width: int, resample) -> np.ndarray:
    from PIL import Image

    if frame.shape[:2] == (height, width):
        return frame  # decoded at this size already (``Video.decode`` resizes as it decodes, with PIL too)
    return np.asarray(Image.fromarray(frame).resize((width, height), resample=resample))


def _check_frame_rate(fps: float | None) -> None:
    """A rate of 0 (or none) divides by zero in ``sample_frames`` and in the frames' timestamps (transformers fails
    there too): the processor's refusal of this video, a bad row."""
    if fps is None or not fps > 0:
        raise ValueError(f"the video's frame rate is {fps}: its frames can be neither sampled nor timed")


def frame_group_timestamps(indices: np.ndarray, fps: float, temporal_patch_size: int) -> list[float]:
    """``Qwen3VLProcessor._calculate_timestamps``: seconds of each sampled frame, padded to whole temporal
    patches with the last frame, averaged over the first and last frame of each patch."""
    indices = [int(i) for i in indices]
    if len(indices) % temporal_patch_size:
        indices += [indices[-1]] * (temporal_patch_size - len(indices) % temporal_patch_size)
    seconds = [i / fps for i in indices]
    return [(seconds[i] + seconds[i + temporal_patch_size - 1]) / 2 for i in range(0, len(seconds), temporal_patch_size)]


def read_processor_settings(path: Path) -> tuple[dict | None, dict | None]:
    """The image and video processor settings, in transformers' order (``get_image_processor_dict`` /
    ``get_video_processor_dict``): the ``image_processor`` / ``video_processor`` nested in ``processor_config.json``
    first, then ``preprocessor_config.json`` / ``video_preprocessor_config.json``. Video settings only in
    ``preprocessor_config.json`` (transformers then builds a Qwen2-VL video processor from the image settings,
    which tokembed does not reproduce) give None: videos are refused."""
    nested = _read(path / "processor_config.json")
    nested = nested if isinstance(nested, dict) else {}
    image = nested.get("image_processor")
    if image is None:
        image = _read(path / "preprocessor_config.json")
    video = nested.get("video_processor")
    if video is None:
        video = _read(path / "video_preprocessor_config.json")
    return image, video


def _video_processor(settings: dict):
    """The Qwen3-VL video processor object, for its settings, ``sample_frames`` and ``patchify`` (none of which
    need torchvision; its ``__call__`` does)."""
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    settings = {key: value for key, value in settings.items() if key != "video_processor_type"}
    return Qwen3VLVideoProcessor.from_dict(settings)


def _pad_per_item(flat: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """[sum of t*h*w, D] -> [B, max t*h*w, D], zero-padded: colpali-engine's per-image split + ``pad_sequence``."""
    sizes = [int(thw.prod()) for thw in grid]
    return torch.nn.utils.rnn.pad_sequence(list(torch.split(flat, sizes)), batch_first=True)


def _token_id(tokenizer: Any, token: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == getattr(tokenizer, "unk_token_id", None):
        raise ModelError(f"the tokenizer has no {token} token (not a Qwen-VL tokenizer?)")
    return int(token_id)


def _read(file: Path) -> dict | None:
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{file}: unreadable processor settings ({exc})") from exc
