"""The image + text processor for Qwen2.5-VL, buildable without torchvision.

The stock `Qwen2_5_VLProcessor` insists on a video processor, whose fast implementation needs
torchvision; CPU machines here have no torchvision build, and `AutoProcessor` then quietly
returns a bare tokenizer (the model would be trained text-only). `ImageQwen2_5_VLProcessor`
is the same processor with the video part removed: identical `__call__` for images and text,
identical files on disk, so a Qwen2.5-VL-7B checkpoint loads through it too.
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase, Qwen2_5_VLProcessor
from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil


class ImageQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
    """Qwen2.5-VL processor for images and text only (no video processor)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=None,
            chat_template=chat_template,
            **kwargs,
        )

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs) -> ImageQwen2_5_VLProcessor:  # type: ignore[override]
        """Load tokenizer and PIL image processor from a model dir; pixels bounds may be overridden."""
        min_pixels = kwargs.pop("min_pixels", None)
        max_pixels = kwargs.pop("max_pixels", None)
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        image_processor = Qwen2VLImageProcessorPil.from_pretrained(path, **kwargs)
        if min_pixels or max_pixels:
            set_pixel_bounds(image_processor, min_pixels, max_pixels)
        return cls(
            image_processor=image_processor,
            tokenizer=tokenizer,
            chat_template=tokenizer.chat_template,
        )


def build_image_processor(min_pixels: int, max_pixels: int) -> Qwen2VLImageProcessorPil:
    return Qwen2VLImageProcessorPil(
        size={"shortest_edge": min_pixels, "longest_edge": max_pixels}, patch_size=14, merge_size=2
    )


def set_pixel_bounds(
    image_processor: Qwen2VLImageProcessorPil, min_pixels: int | None, max_pixels: int | None
) -> None:
    """Qwen's processor reads the pixel bounds from `size` (the min_pixels/max_pixels form is deprecated)."""
    size = dict(image_processor.size)
    if min_pixels:
        size["shortest_edge"] = min_pixels
    if max_pixels:
        size["longest_edge"] = max_pixels
    image_processor.size = size


def make_processor(
    image_processor: Qwen2VLImageProcessorPil, tokenizer: PreTrainedTokenizerBase
) -> ImageQwen2_5_VLProcessor:
    return ImageQwen2_5_VLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=tokenizer.chat_template
    )
