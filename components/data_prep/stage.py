"""data_prep: build the SFT, RL and eval datasets (HF `save_to_disk` folders) from one config.

Sources are the built-in synthetic generator or users' files. Eval problems are removed from
the training sets (no leak), duplicates are dropped, and every count lands in the metrics.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
from tqdm import tqdm

from components.common.config import DataConfig, PipelineConfig
from components.data_prep.loaders import LoadStats, iter_records
from components.data_prep.records import DataError, content_key, fit_pixels
from components.data_prep.synthetic import generate, structured_cot

log = logging.getLogger(__name__)

FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "images": datasets.List(datasets.Image()),
        "problem": datasets.Value("string"),
        "answer": datasets.Value("string"),
        "solution": datasets.Value("string"),
        "category": datasets.Value("string"),
    }
)


@dataclass
class DataPrepOutputs:
    sft: Path
    rl: Path
    eval: Path


@dataclass
class Splits:
    sft: list[dict[str, Any]] = field(default_factory=list)
    rl: list[dict[str, Any]] = field(default_factory=list)
    eval: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)


def synthetic_splits(data: DataConfig) -> Splits:
    """Test problems are drawn first, and the train draw excludes them: no shared problems."""
    syn = data.synthetic
    splits = Splits()
    for family in syn.families:
        test = list(
            generate(family, syn.test_per_family, syn.difficulties, syn.image_size, data.seed + 1)
        )
        taken = {s.uid for s in test}
        train = list(
            generate(
                family, syn.train_per_family, syn.difficulties, syn.image_size, data.seed, taken
            )
        )
        for scenes, bucket in ((test, splits.eval), (train, splits.sft)):
            for scene in scenes:
                bucket.append(
                    {
                        "id": f"{family}-{scene.uid}",
                        "images": [fit_pixels(scene.image, data.min_pixels, data.max_pixels)],
                        "problem": scene.problem,
                        "answer": scene.answer,
                        "solution": structured_cot(scene),
                        "category": f"{family}/d{scene.difficulty}",
                    }
                )
    splits.rl = [dict(r, solution="") for r in splits.sft]
    return splits


def file_splits(data: DataConfig, cache_dir: Path) -> Splits:
    splits = Splits()
    stats = LoadStats()
    kinds = (
        ("sft", data.sft_files, True),
        ("rl", data.rl_files, False),
        ("eval", data.eval_files, False),
    )
    for name, sources, needs_solution in kinds:
        bucket: list[dict[str, Any]] = getattr(splits, name)
        for source in sources:
            records = iter_records(
                source,
                cache_dir=cache_dir,
                min_pixels=data.min_pixels,
                max_pixels=data.max_pixels,
                needs_solution=needs_solution,
                skip_invalid=data.skip_invalid,
                stats=stats,
            )
            bucket.extend(
                tqdm(records, desc=f"data_prep {name}: {source.uri}", unit="row", leave=False)
            )
    splits.metrics["data/skipped_invalid"] = stats.skipped
    return splits


def dedup(
    records: Iterable[dict[str, Any]], exclude: set[str]
) -> tuple[list[dict[str, Any]], int, int]:
    """Drop repeats and rows whose problem is in `exclude` (the eval set); return counts of both."""
    seen: set[str] = set()
    kept, duplicates, leaked = [], 0, 0
    for record in records:
        key = content_key(record)
        if key in exclude:
            leaked += 1
        elif key in seen:
            duplicates += 1
        else:
            seen.add(key)
            kept.append(record)
    return kept, duplicates, leaked


def _table(records: list[dict[str, Any]]) -> datasets.Dataset:
    columns = {name: [r[name] for r in records] for name in FEATURES}
    return datasets.Dataset.from_dict(columns, features=FEATURES)


def split_holdout(records: list[dict[str, Any]], fraction: float, seed: int) -> tuple[list, list]:
    if fraction <= 0 or len(records) < 2:
        return records, []
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_hold = max(1, round(fraction * len(records)))
    held = set(order[:n_hold])
    return [r for i, r in enumerate(records) if i not in held], [
        r for i, r in enumerate(records) if i in held
    ]


def run_data_prep(cfg: PipelineConfig, out: DataPrepOutputs, cache_dir: Path) -> dict[str, float]:
    """Build and write the three datasets; returns the metrics the stage logs."""
    data = cfg.data
    splits = synthetic_splits(data) if data.source == "synthetic" else file_splits(data, cache_dir)
    eval_rows, dup_eval, _ = dedup(splits.eval, set())
    eval_keys = {content_key(r) for r in eval_rows}
    sft_rows, dup_sft, leak_sft = dedup(splits.sft, eval_keys)
    rl_rows, dup_rl, leak_rl = dedup(splits.rl, eval_keys)
    if data.distill.enabled:  # the SFT targets become the teacher's verified answers
        from components.data_prep.distill import distill_sft_rows

        sft_rows, distill_metrics = distill_sft_rows(sft_rows, cfg, cache_dir)
        splits.metrics.update(distill_metrics)
    if not sft_rows and cfg.sft.enabled:
        raise DataError(
            "data_prep produced no SFT rows; give data.sft_files or disable sft (sft.enabled: false)"
        )
    if not rl_rows and cfg.grpo.enabled:
        raise DataError(
            "data_prep produced no RL rows; give data.rl_files or disable grpo (grpo.enabled: false)"
        )
    sft_train, sft_val = split_holdout(sft_rows, data.sft_holdout_fraction, data.seed)
    datasets.DatasetDict({"train": _table(sft_train), "validation": _table(sft_val)}).save_to_disk(
        str(out.sft)
    )
    _table(rl_rows).save_to_disk(str(out.rl))
    _table(eval_rows).save_to_disk(str(out.eval))
    metrics = dict(splits.metrics)
    metrics.update(
        {
            "data/sft_rows": len(sft_train),
            "data/sft_holdout_rows": len(sft_val),
            "data/rl_rows": len(rl_rows),
            "data/eval_rows": len(eval_rows),
            "data/duplicates_removed": dup_eval + dup_sft + dup_rl,
            "data/eval_overlap_removed": leak_sft + leak_rl,
        }
    )
    log.info("data_prep: %s", metrics)
    return metrics
