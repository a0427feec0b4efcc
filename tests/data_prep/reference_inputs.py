"""Inputs with every image case data_prep meets, and a digest of its outputs.

The digest of today's outputs on these inputs is stored in `reference/outputs.json` (computed
with the in-memory data_prep that streaming replaced), so a change to the writer that alters a
row, its order, id or pixels fails `test_streaming.py`.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from PIL import Image

from coldstart.common.config import PipelineConfig, config_from_dict
from coldstart.common.saved_datasets import load_with_images

REFERENCE = Path(__file__).parent / "reference" / "outputs.json"
COLS = {"problem": "q", "answer": "a", "images": "img"}


def encoded(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def gradient(size: tuple[int, int], seed: int, mode: str = "RGB") -> Image.Image:
    """A deterministic image with structure (so resizing and hashing see real pixels)."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([(x * 7 + seed * 31) % 256, (y * 5 + seed * 17) % 256, (x + y + seed) % 256], -1)
    image = Image.fromarray(rgb.astype(np.uint8), "RGB")
    return image if mode == "RGB" else image.convert(mode)


def _parquet(path: Path, rows: list[dict[str, Any]]) -> str:
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    return str(path)


def build_inputs(root: Path) -> PipelineConfig:
    """SFT parquet (sizes below, inside and above the bounds; RGBA, palette, JPEG; repeats),
    RL jsonl with relative image paths and a bad row, eval as a save_to_disk DatasetDict."""
    root.mkdir(parents=True, exist_ok=True)
    small, inside, large = (30, 20), (80, 60), (300, 200)
    sft = [
        {"q": "Up?", "a": "1", "img": [encoded(gradient(small, 1), "PNG")], "s": "a \\boxed{1}"},
        {"q": "In?", "a": "2", "img": [encoded(gradient(inside, 2), "PNG")], "s": "b \\boxed{2}"},
        {"q": "Down?", "a": "3", "img": [encoded(gradient(large, 3), "PNG")], "s": "c \\boxed{3}"},
        {
            "q": "Alpha?",
            "a": "4",
            "img": [encoded(gradient(inside, 4, "RGBA"), "PNG")],
            "s": "d \\boxed{4}",
        },
        {
            "q": "Palette?",
            "a": "5",
            "img": [encoded(gradient(inside, 5, "P"), "PNG")],
            "s": "e \\boxed{5}",
        },
        {"q": "Jpeg?", "a": "6", "img": [encoded(gradient(inside, 6), "JPEG")], "s": ""},
        {
            "q": "Two?",
            "a": "\\boxed{7}",
            "img": [encoded(gradient(inside, 7), "PNG"), encoded(gradient(large, 8), "PNG")],
            "s": None,
        },
        {"q": "  up? ", "a": "1", "img": [encoded(gradient(small, 1), "PNG")], "s": "again"},
        {"q": "Leak?", "a": "9", "img": [encoded(gradient(inside, 9), "PNG")], "s": "f \\boxed{9}"},
    ]
    for row in sft:
        if row["s"] == "":
            row["s"] = "g \\boxed{6}"
    (root / "imgs").mkdir(exist_ok=True)
    for i in range(4):
        gradient(large if i % 2 else inside, 20 + i).save(root / "imgs" / f"{i}.png")
    rl = [
        {"problem": f"RL {i}?", "answer": str(i), "images": [f"imgs/{i}.png"], "id": f"r{i}"}
        for i in range(4)
    ]
    rl.insert(2, {"problem": "bad", "answer": "0", "images": ["imgs/missing.png"], "id": "rx"})
    rl.append({"problem": "Leak?", "answer": "9", "images": [], "id": "rnoimg"})
    (root / "rl.jsonl").write_text("\n".join(json.dumps(r) for r in rl) + "\n")
    feats = datasets.Features(
        {
            "problem": datasets.Value("string"),
            "answer": datasets.Value("string"),
            "images": datasets.List(datasets.Image()),
        }
    )
    ev = datasets.Dataset.from_dict(
        {
            "problem": ["Leak?", "Eval only?", "Eval only?"],
            "answer": ["9", "10", "10"],
            "images": [[gradient(inside, 9)], [gradient(large, 10)], [gradient(large, 10)]],
        },
        features=feats,
    )
    datasets.DatasetDict({"test": ev}).save_to_disk(str(root / "ev"))
    return config_from_dict(
        {
            "output_dir": str(root / "out"),
            "data": {
                "source": "files",
                "sft_files": [
                    {
                        "uri": _parquet(root / "sft.parquet", sft),
                        "columns": dict(COLS, solution="s"),
                    }
                ],
                "rl_files": [{"uri": str(root / "rl.jsonl")}],
                "eval_files": [{"uri": str(root / "ev"), "split": "test"}],
                "min_pixels": 3136,
                "max_pixels": 12544,
                "skip_invalid": True,
                "sft_holdout_fraction": 0.3,
            },
        }
    )


def image_digest(image: Image.Image) -> list[Any]:
    rgb = np.asarray(image.convert("RGB"))
    return [image.mode, list(image.size), hashlib.sha256(rgb.tobytes()).hexdigest()[:16]]


def digest_dataset(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Every row of every split, with each image as (mode, size, hash of its RGB pixels); image
    keys are looked up in the image store beside the dataset."""
    loaded = load_with_images(path)
    parts = loaded if isinstance(loaded, datasets.DatasetDict) else {"": loaded}
    return {
        name: [
            {
                **{k: v for k, v in row.items() if k != "images"},
                "images": list(map(image_digest, row["images"])),
            }
            for row in part
        ]
        for name, part in parts.items()
    }


def digest_outputs(root: Path) -> dict[str, Any]:
    return {name: digest_dataset(root / name) for name in ("sft", "rl", "eval")}
