"""Decode the image values users' datasets hold: one decoder for data_prep and eval.

Datasets carry images as raw bytes, paths relative to the data file, PIL images, or datasets'
`{bytes, path}` dicts. Both stages must accept exactly the same forms and say the same thing
about a bad one, so the decoding lives here; callers add the file and row to the message.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError


class ImageDecodeError(ValueError):
    """An image value that cannot become a picture; the message says why, callers say where."""


def decode_image(value: Any, base_dir: Path | None) -> Image.Image:
    """Return an RGB image for bytes, a path (relative to `base_dir`), PIL, or a {bytes, path} dict."""
    return open_image(value, base_dir).image.convert("RGB")


@dataclass
class OpenedImage:
    """A decoded image and, when it came encoded, its file bytes: a writer that does not change
    the pixels can keep those bytes instead of re-encoding (data_prep keeps a JPEG a JPEG)."""

    image: (
        Image.Image
    )  # loaded, in its own mode; `image.format` names the codec (None for PIL input)
    encoded: bytes | None


def open_image(value: Any, base_dir: Path | None) -> OpenedImage:
    """Decode any of the forms `decode_image` takes, keeping the mode and the encoded bytes."""
    if isinstance(value, Image.Image):
        return OpenedImage(value, None)
    if isinstance(value, Mapping):
        if value.get("bytes"):
            return open_image(value["bytes"], base_dir)
        if value.get("path"):
            return open_image(value["path"], base_dir)
        raise ImageDecodeError("image dict has neither 'bytes' nor 'path'")
    if isinstance(value, (bytes, bytearray)):
        return _load(bytes(value), "image bytes cannot be decoded")
    if isinstance(value, str):
        path = Path(value) if Path(value).is_absolute() or base_dir is None else base_dir / value
        if not path.exists():
            raise ImageDecodeError(f"image file {path} does not exist")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ImageDecodeError(f"image file {path} cannot be read ({exc})") from None
        return _load(data, f"image file {path} cannot be decoded")
    raise ImageDecodeError(
        f"image of type {type(value).__name__} is not supported (use bytes, a path or a PIL image)"
    )


def _load(data: bytes, what: str) -> OpenedImage:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError) as exc:
        raise ImageDecodeError(f"{what} ({exc})") from None
    return OpenedImage(image, data)
