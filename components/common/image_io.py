"""Decode the image values users' datasets hold: one decoder for data_prep and eval.

Datasets carry images as raw bytes, paths relative to the data file, PIL images, or datasets'
`{bytes, path}` dicts. Both stages must accept exactly the same forms and say the same thing
about a bad one, so the decoding lives here; callers add the file and row to the message.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError


class ImageDecodeError(ValueError):
    """An image value that cannot become a picture; the message says why, callers say where."""


def decode_image(value: Any, base_dir: Path | None) -> Image.Image:
    """Return an RGB image for bytes, a path (relative to `base_dir`), PIL, or a {bytes, path} dict."""
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, Mapping):
        if value.get("bytes"):
            return decode_image(value["bytes"], base_dir)
        if value.get("path"):
            return decode_image(value["path"], base_dir)
        raise ImageDecodeError("image dict has neither 'bytes' nor 'path'")
    if isinstance(value, (bytes, bytearray)):
        try:
            with Image.open(io.BytesIO(value)) as img:
                return img.convert("RGB")
        except (UnidentifiedImageError, OSError) as exc:
            raise ImageDecodeError(f"image bytes cannot be decoded ({exc})") from None
    if isinstance(value, str):
        path = Path(value) if Path(value).is_absolute() or base_dir is None else base_dir / value
        if not path.exists():
            raise ImageDecodeError(f"image file {path} does not exist")
        try:
            with Image.open(path) as img:
                return img.convert("RGB")
        except (UnidentifiedImageError, OSError) as exc:
            raise ImageDecodeError(f"image file {path} cannot be decoded ({exc})") from None
    raise ImageDecodeError(
        f"image of type {type(value).__name__} is not supported (use bytes, a path or a PIL image)"
    )
