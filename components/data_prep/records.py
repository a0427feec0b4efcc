"""Turn one raw row of a user's file into a validated record of the common schema.

The common schema is the authors' (`images`, `problem`, `answer`) plus optional `id`,
`solution` (the SFT response) and `category`. Every check names the file and the row, because
the person fixing a 200k-row parquet needs to find the row, not a stack trace.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image

from components.common.errors import InputError
from components.common.image_io import ImageDecodeError, decode_image

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
        images = [fit_pixels(decode_image(v, base_dir), min_pixels, max_pixels) for v in raw_images]
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
        "images": images,
        "problem": problem,
        "answer": answer,
        "solution": solution,
        "category": str(row.get(columns["category"]) or "") if "category" in columns else "",
    }


def content_key(record: Mapping[str, Any]) -> str:
    """Two rows are the same problem when the normalised text and the image pixels match."""
    digest = hashlib.sha1(" ".join(record["problem"].lower().split()).encode())
    for image in record["images"]:
        digest.update(image.tobytes())
    return digest.hexdigest()
