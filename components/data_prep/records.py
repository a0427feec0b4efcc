"""Turn one raw row of a user's file into a validated record of the common schema.

The common schema is the authors' (`images`, `problem`, `answer`) plus optional `id`,
`solution` (the SFT response) and `category`. Every check names the file and the row, because
the person fixing a 200k-row parquet needs to find the row, not a stack trace.

A record carries its images encoded (datasets' `{bytes, path}`), never decoded: that is what
the Arrow writer stores, and it keeps a worker's reply to the writer small. An image already
within the pixel bounds keeps its original bytes; a resized one is re-encoded in its own format.
The record's `key` (problem text + pixels) is all dedup and eval-leak removal need to keep.
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from coldstart.common.errors import InputError
from coldstart.common.image_io import ImageDecodeError, open_image

SCHEMA_COLUMNS = ("images", "problem", "answer")
OPTIONAL_COLUMNS = ("id", "solution", "category")


class DataError(InputError):
    """Bad input data; the message names the file, the row and what to do."""


class RowError(DataError):
    """One row is unusable; with `skip_invalid` it is skipped and counted instead of raised."""


def resolve_columns(
    available: list[str], mapping: Mapping[str, str], where: str, required: tuple[str, ...]
) -> dict[str, str]:
    """Map schema names to the file's column names, failing on the first missing one."""
    unknown = sorted(set(mapping) - set(SCHEMA_COLUMNS) - set(OPTIONAL_COLUMNS))
    if unknown:
        raise DataError(
            f"{where}: columns mapping has unknown schema names {unknown}; valid: {list(SCHEMA_COLUMNS + OPTIONAL_COLUMNS)}"
        )
    resolved: dict[str, str] = {}
    for name in required + OPTIONAL_COLUMNS:
        column = mapping.get(name, name)
        if column in available:
            resolved[name] = column
        elif name in required:
            raise DataError(
                f"{where}: missing column {column!r} for {name!r} (columns present: {available}); "
                f"rename it or map it in the config: columns: {{{name}: <your column>}}"
            )
    return resolved


def fit_pixels(image: Image.Image, min_pixels: int, max_pixels: int) -> Image.Image:
    """Rescale, keeping the aspect ratio, so that width x height lies in [min_pixels, max_pixels]."""
    w, h = image.size
    area = w * h
    if min_pixels <= area <= max_pixels:
        return image
    scale = math.sqrt((min_pixels if area < min_pixels else max_pixels) / area)
    rounding = math.ceil if area < min_pixels else math.floor
    new = (max(1, rounding(w * scale)), max(1, rounding(h * scale)))
    # max_pixels is a memory bound and wins when min == max leaves no integer size in between.
    while new[0] * new[1] > max_pixels:
        new = (max(1, new[0] - 1), max(1, new[1] - 1))
    return image.resize(new, Image.Resampling.BICUBIC)


def image_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


# Formats a resized image is written back in; others (GIF, TIFF, BMP, ...) become PNG.
KEPT_FORMATS = {"JPEG": {"quality": 90}, "PNG": {}, "WEBP": {"quality": 90}}


def encode_image(image: Image.Image, fmt: str | None) -> bytes:
    """Encode in `fmt` when it is a format we keep (JPEG stays JPEG), else losslessly as PNG."""
    fmt = fmt if fmt in KEPT_FORMATS else "PNG"
    buf = io.BytesIO()
    image.save(buf, format=fmt, **KEPT_FORMATS[fmt])
    return buf.getvalue()


def prepare_image(
    value: Any, base_dir: Path, min_pixels: int, max_pixels: int
) -> tuple[bytes, Image.Image]:
    """The image's bytes as they will be stored, and its RGB pixels (for the content key).

    Original bytes are kept when the pixels need no change (RGB and within the bounds): no
    re-encoding loss, and the output stays the size of the input.
    """
    opened = open_image(value, base_dir)
    rgb = opened.image if opened.image.mode == "RGB" else opened.image.convert("RGB")
    fitted = fit_pixels(rgb, min_pixels, max_pixels)
    if fitted is rgb and opened.encoded is not None and opened.image.mode == "RGB":
        return opened.encoded, fitted
    return encode_image(fitted, opened.image.format), fitted


def build_record(
    row: Mapping[str, Any],
    columns: dict[str, str],
    *,
    base_dir: Path,
    min_pixels: int,
    max_pixels: int,
    needs_solution: bool,
    fallback_id: str,
) -> dict[str, Any]:
    """Validate and normalise one row; raises RowError describing the problem (no location)."""
    problem = str(row.get(columns["problem"]) or "").strip()
    answer = "" if row.get(columns["answer"]) is None else str(row[columns["answer"]]).strip()
    if not problem:
        raise RowError("empty problem")
    if not answer:
        raise RowError("empty answer")
    raw_images = image_list(row.get(columns["images"]))
    if not raw_images:
        raise RowError("no image")
    try:
        images = [prepare_image(v, base_dir, min_pixels, max_pixels) for v in raw_images]
    except ImageDecodeError as exc:
        raise RowError(str(exc)) from None
    solution = (
        str(row.get(columns.get("solution", ""), "") or "").strip() if "solution" in columns else ""
    )
    if needs_solution and not solution:
        # The authors' SFT sets carry the whole response in `answer`; accept that only if it is a response.
        if "\\boxed" not in answer:
            raise RowError(
                "no assistant answer: map a 'solution' column, or give an answer that contains \\boxed{}"
            )
        solution = answer
    return {
        "id": str(row.get(columns["id"]))
        if "id" in columns and row.get(columns["id"]) is not None
        else fallback_id,
        "images": [{"bytes": data, "path": None} for data, _ in images],
        "problem": problem,
        "answer": answer,
        "solution": solution,
        "category": str(row.get(columns["category"]) or "") if "category" in columns else "",
        "key": content_key(problem, [pixels for _, pixels in images]),
    }


def content_key(problem: str, images: list[Image.Image]) -> str:
    """Two rows are the same problem when the normalised text and the image pixels match."""
    digest = hashlib.sha1(" ".join(problem.lower().split()).encode())
    for image in images:
        digest.update(image.tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class RowSpec:
    """What a worker needs to turn the raw rows of one unit into records."""

    columns: dict[str, str]
    base_dir: Path
    min_pixels: int
    max_pixels: int
    needs_solution: bool
    stem: str  # fallback ids are f"{stem}-{row index}"


@dataclass(frozen=True)
class Chunk:
    """A few consecutive rows of one unit: (row index, values or None, why unreadable or None)."""

    spec: RowSpec
    rows: list[tuple[int, dict[str, Any] | None, str | None]]


def prepare_chunk(chunk: Chunk) -> list[tuple[int, dict[str, Any] | None, str | None]]:
    """Records for a chunk (the work a worker process does): (index, record, None) for a good row,
    (index, None, reason) for a bad one; the caller names the file and skips or raises."""
    out: list[tuple[int, dict[str, Any] | None, str | None]] = []
    spec = chunk.spec
    for index, values, error in chunk.rows:
        if values is None:
            out.append((index, None, error))
            continue
        try:
            record = build_record(
                values,
                spec.columns,
                base_dir=spec.base_dir,
                min_pixels=spec.min_pixels,
                max_pixels=spec.max_pixels,
                needs_solution=spec.needs_solution,
                fallback_id=f"{spec.stem}-{index}",
            )
        except RowError as exc:
            out.append((index, None, str(exc)))
            continue
        out.append((index, record, None))
    return out
