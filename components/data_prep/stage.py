"""data_prep: build the SFT, RL and eval datasets (HF `save_to_disk` folders) from one config.

Sources are the built-in synthetic generator or users' files. Rows stream from the sources
through worker processes into per-split parts on disk (`shard.py`), then a merge reads the parts
in the input's order, drops duplicates and eval leaks by content key, holds out the SFT
validation rows and writes the final datasets, a record batch at a time: memory stays flat in
the number of rows. The three datasets share one image store (images/): an image that several
rows or splits use is written once, and the datasets hold its key. A sharded run
(pipelines/data_shards.py) is the same two steps with several shards, one pod each, and the
same output.
"""

from __future__ import annotations

import heapq
import logging
import random
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coldstart.common.config import DataConfig, PipelineConfig
from coldstart.data_prep.arrow_files import (
    DatasetWriter,
    ImageStoreWriter,
    finish_dataset,
    finish_dataset_dict,
    order_of,
    part_path,
    part_writer,
    read_rows,
)
from coldstart.data_prep.records import DataError, content_key, encode_image, fit_pixels
from coldstart.data_prep.shard import COUNTS_FILE, prepare_shard, shard_counts
from coldstart.data_prep.synthetic import Scene, generate, structured_cot

log = logging.getLogger(__name__)


@dataclass
class DataPrepOutputs:
    sft: Path
    rl: Path
    eval: Path
    images: Path  # the image store the three datasets' keys point into

    @classmethod
    def under(cls, root: Path) -> DataPrepOutputs:
        """The usual layout: sft/, rl/, eval/ and images/ in one folder."""
        return cls(root / "sft", root / "rl", root / "eval", root / "images")


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
                slipped = bucket is splits.sft and teacher_slips(scene, syn.teacher_slip, data.seed)
                bucket.append(
                    {
                        "id": f"{family}-{scene.uid}",
                        "images": [fit_pixels(scene.image, data.min_pixels, data.max_pixels)],
                        "problem": scene.problem,
                        "answer": scene.answer,
                        "solution": structured_cot(scene, slipped),
                        "category": f"{family}/d{scene.difficulty}",
                    }
                )
    splits.rl = [dict(r, solution="") for r in splits.sft]
    return splits


def teacher_slips(scene: Scene, rate: float, seed: int) -> bool:
    """Whether the teacher's CoT for this SFT problem is its wrong one: a draw of its own per
    problem (seeded by the problem, not the draw order), so the same problems slip whatever else
    the split holds. The answer column keeps the truth: only the imitated reasoning is wrong."""
    return scene.slip is not None and random.Random(f"slip:{seed}:{scene.uid}").random() < rate


def write_synthetic_shard(data: DataConfig, shard_dir: Path) -> None:
    """The synthetic splits as one shard's parts, images encoded as `synthetic.image_format`."""
    splits = synthetic_splits(data)
    fmt = data.synthetic.image_format.upper()
    for split in ("eval", "sft", "rl"):
        writer = part_writer(shard_dir, split)
        for index, record in enumerate(getattr(splits, split)):
            images = record["images"]
            writer.write(
                dict(
                    record,
                    images=[{"bytes": encode_image(im, fmt), "path": None} for im in images],
                    key=content_key(record["problem"], images),
                    source_index=0,
                    file_index=0,
                    row_index=index,
                )
            )
        writer.finalize()
    (shard_dir / COUNTS_FILE).write_text('{"rows": 0, "skipped_invalid": 0}')


@dataclass
class DedupCounts:
    duplicates: int = 0
    leaked: int = 0


def merged(shard_dirs: Sequence[Path], split: str) -> Iterator[dict[str, Any]]:
    """The split's rows of every shard, back in the input's order (each part is in order)."""
    return heapq.merge(*(read_rows(part_path(d, split)) for d in shard_dirs), key=order_of)


def deduped(
    rows: Iterable[dict[str, Any]],
    exclude: set[str],
    counts: DedupCounts,
    seen: set[str] | None = None,
) -> Iterator[dict[str, Any]]:
    """Rows whose key is new and not in `exclude` (the eval set); `seen` collects the keys kept."""
    seen = set() if seen is None else seen
    for row in rows:
        if row["key"] in exclude:
            counts.leaked += 1
        elif row["key"] in seen:
            counts.duplicates += 1
        else:
            seen.add(row["key"])
            yield row


def write_all(rows: Iterable[dict[str, Any]], folder: Path, store: ImageStoreWriter) -> int:
    writer = DatasetWriter(folder)
    for row in rows:
        writer.write(store.with_keys(row))
    finish_dataset(writer)
    return writer.rows


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


def write_sft(
    rows: Callable[[], Iterable[dict[str, Any]]],
    n_rows: int,
    data: DataConfig,
    folder: Path,
    store: ImageStoreWriter,
) -> tuple[int, int]:
    """Train and validation splits from two passes over `rows()` (the held-out rows are chosen
    from the row count, as `split_holdout` does on a list); returns both sizes."""
    _, held_out = split_holdout(list(range(n_rows)), data.sft_holdout_fraction, data.seed)
    held = set(held_out)
    writers = {
        "train": DatasetWriter(folder / "train"),
        "validation": DatasetWriter(folder / "validation"),
    }
    for index, row in enumerate(rows()):
        writers["validation" if index in held else "train"].write(store.with_keys(row))
    finish_dataset_dict(folder, writers)
    return writers["train"].rows, writers["validation"].rows


def distilled(
    rows: Iterable[dict[str, Any]], cfg: PipelineConfig, cache_dir: Path
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """The teacher's verified answers as SFT targets (in memory: the teacher is the bottleneck)."""
    from coldstart.common.image_io import decode_image
    from coldstart.data_prep.distill import distill_sft_rows

    records = [
        dict(r, encoded=r["images"], images=[decode_image(i, None) for i in r["images"]])
        for r in rows
    ]
    out, metrics = distill_sft_rows(records, cfg, cache_dir)
    return [dict(r, images=r["encoded"]) for r in out], metrics


def merge_shards(
    cfg: PipelineConfig, shard_dirs: Sequence[Path], out: DataPrepOutputs, cache_dir: Path
) -> dict[str, float]:
    """Dedup across shards, drop eval leaks, hold out SFT validation rows, write the datasets
    and their shared image store."""
    data = cfg.data
    counts = DedupCounts()
    eval_keys: set[str] = set()
    store = ImageStoreWriter(out.images)
    n_eval = write_all(
        deduped(merged(shard_dirs, "eval"), set(), counts, eval_keys), out.eval, store
    )

    def sft_rows(tally: DedupCounts) -> Iterator[dict[str, Any]]:
        return deduped(merged(shard_dirs, "sft"), eval_keys, tally)

    metrics: dict[str, float] = {}
    if data.distill.enabled:
        kept, metrics = distilled(sft_rows(counts), cfg, cache_dir)
        n_sft = len(kept)

        def replay() -> Iterable[dict[str, Any]]:
            return kept
    else:
        n_sft = sum(1 for _ in sft_rows(counts))

        def replay() -> Iterable[dict[str, Any]]:
            return sft_rows(DedupCounts())  # the second pass: already counted

    if not n_sft and cfg.sft.enabled:
        raise DataError(
            "data_prep produced no SFT rows; give data.sft_files or disable sft (sft.enabled: false)"
        )
    n_rl = write_all(deduped(merged(shard_dirs, "rl"), eval_keys, counts), out.rl, store)
    if not n_rl and cfg.grpo.enabled:
        raise DataError(
            "data_prep produced no RL rows; give data.rl_files or disable grpo (grpo.enabled: false)"
        )
    n_train, n_held = write_sft(replay, n_sft, data, out.sft, store)
    n_images = store.finish()
    if data.source == "files":
        metrics["data/skipped_invalid"] = sum(
            shard_counts(d)["skipped_invalid"] for d in shard_dirs
        )
    metrics.update(
        {
            "data/sft_rows": n_train,
            "data/sft_holdout_rows": n_held,
            "data/rl_rows": n_rl,
            "data/eval_rows": n_eval,
            "data/images_stored": n_images,
            "data/duplicates_removed": counts.duplicates,
            "data/eval_overlap_removed": counts.leaked,
        }
    )
    log.info("data_prep: %s", metrics)
    return metrics


def run_data_prep(cfg: PipelineConfig, out: DataPrepOutputs, cache_dir: Path) -> dict[str, float]:
    """Build and write the three datasets and their image store in one process (one shard);
    returns the metrics."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="data_prep-", dir=cache_dir))
    try:
        if cfg.data.source == "synthetic":
            write_synthetic_shard(cfg.data, work)
        else:
            prepare_shard(cfg.data, 0, 1, work, cache_dir)
        return merge_shards(cfg, [work], out, cache_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
