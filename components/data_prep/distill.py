"""Cold-start SFT data by distillation: rejection sampling from a teacher model.

The paper's SFT set was distilled from a larger model (Qwen2.5-VL-32B) with rejection
sampling. Here: for each SFT problem the teacher samples k chain-of-thought answers under a
structured-reasoning system prompt (observe -> reason step by step -> reflect -> box); a
sample is kept only if it finished (not cut at the token limit) and its last `\\boxed{}`
verifies against the ground truth, with the same extraction and time-bounded verification
the GRPO reward and eval use (`coldstart.common.answers`). Kept samples become the SFT
target (`solution`); the acceptance rate lands in the data_prep metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coldstart.common.answers import extract_boxed, is_equivalent, warm_up
from coldstart.common.config import DistillConfig, ModelConfig, PipelineConfig
from coldstart.common.generation import Completion, PromptInput, SamplingConfig
from coldstart.data_prep.records import DataError

log = logging.getLogger(__name__)


@dataclass
class DistillCounts:
    problems: int = 0
    samples: int = 0
    accepted: int = 0  # samples that verified (before the keep_per_problem cap)
    solved: int = 0  # problems with at least one verified sample
    rows: int = 0  # SFT rows written
    kept_original: int = 0
    errors: int = 0
    truncated: int = 0

    def metrics(self) -> dict[str, float]:
        return {
            "data/distill/problems": self.problems,
            "data/distill/samples": self.samples,
            "data/distill/accepted": self.accepted,
            "data/distill/acceptance_rate": self.accepted / self.samples if self.samples else 0.0,
            "data/distill/problems_solved": self.solved,
            "data/distill/solved_rate": self.solved / self.problems if self.problems else 0.0,
            "data/distill/rows": self.rows,
            "data/distill/kept_original": self.kept_original,
            "data/distill/generation_errors": self.errors,
            "data/distill/truncated": self.truncated,
        }


def gold_answer(answer: str) -> str:
    """The ground truth to verify against; the authors' files keep a whole response in `answer`.

    >>> gold_answer("12"), gold_answer(r"So the area is \\boxed{12}.")
    ('12', '12')
    """
    return (extract_boxed(answer) or answer) if "\\boxed" in answer else answer


def verified(completion: Completion, gold: str, timeout_s: float = 1.0) -> bool:
    """A finished completion whose last `\\boxed{}` is equivalent to `gold` (boxed only, no fallback).

    >>> verified(Completion(r"2 and 2 make \\boxed{4}", [], "stop"), "4")
    True
    >>> verified(Completion(r"\\boxed{4} but then I ran out of", [], "length"), "4")
    False
    """
    if completion.finish_reason != "stop":
        return False
    boxed = extract_boxed(completion.text)
    return bool(boxed) and is_equivalent(boxed, gold, timeout_s=timeout_s)


def select_verified(
    completions: Sequence[Completion], gold: str, keep: int, timeout_s: float = 1.0
) -> tuple[list[str], int]:
    """The texts to keep for one problem (first `keep` distinct verified ones) and how many verified."""
    kept: list[str] = []
    accepted = 0
    for completion in completions:
        if not verified(completion, gold, timeout_s):
            continue
        accepted += 1
        text = completion.text.strip()
        if len(kept) < keep and text not in kept:
            kept.append(text)
    return kept, accepted


def distill_records(
    records: Sequence[dict[str, Any]],
    completions: Sequence[Sequence[Completion]],
    cfg: DistillConfig,
) -> tuple[list[dict[str, Any]], DistillCounts]:
    """Turn each record's sampled completions into SFT rows (`solution` = a verified response)."""
    out: list[dict[str, Any]] = []
    counts = DistillCounts(problems=len(records))
    for record, group in zip(records, completions, strict=True):
        counts.samples += len(group)
        counts.errors += sum(c.finish_reason == "error" for c in group)
        counts.truncated += sum(c.finish_reason == "length" for c in group)
        kept, accepted = select_verified(
            group, gold_answer(record["answer"]), cfg.keep_per_problem, cfg.answer_timeout_s
        )
        counts.accepted += accepted
        counts.solved += bool(kept)
        for j, text in enumerate(kept):
            row_id = record["id"] if len(kept) == 1 else f"{record['id']}-d{j}"
            out.append(dict(record, id=row_id, solution=text))
        if not kept and cfg.unverified == "keep_original" and record.get("solution"):
            out.append(dict(record))
            counts.kept_original += 1
    counts.rows = len(out)
    return out, counts


def teacher_backend(cfg: PipelineConfig, cache_dir: Path):
    """The teacher's generation backend (HF generate or vLLM), from a dir, s3:// prefix, hub id or 'tiny'."""
    import torch

    from coldstart.common.generation import make_backend
    from coldstart.common.models import (
        check_model_dir,
        load_model,
        load_processor,
        resolve_model_dir,
    )

    distill, data = cfg.data.distill, cfg.data
    model_dir = check_model_dir(
        resolve_model_dir(
            ModelConfig(name_or_path=distill.teacher, tiny=cfg.model.tiny),
            cache_dir / "teacher",
            data.min_pixels,
            data.max_pixels,
        )
    )
    processor = load_processor(model_dir, data.min_pixels, data.max_pixels)
    if distill.backend == "vllm":
        return make_backend(
            "vllm",
            str(model_dir),
            processor,
            distill.system_prompt,
            seed=distill.seed,
            gpu_memory_utilization=0.85,
            min_pixels=data.min_pixels,
            max_pixels=data.max_pixels,
        )
    model = load_model(model_dir, cfg.model.torch_dtype, cfg.model.attn_implementation)
    if torch.cuda.is_available():
        model.to("cuda")
    return make_backend(
        "hf", model, processor, distill.system_prompt, batch_size=distill.batch_size
    )


def distill_sft_rows(
    records: list[dict[str, Any]], cfg: PipelineConfig, cache_dir: Path, backend: Any = None
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Sample k answers per SFT problem from the teacher and keep the verified ones."""
    import torch

    distill = cfg.data.distill
    torch.manual_seed(distill.seed)
    backend = backend or teacher_backend(cfg, cache_dir)
    warm_up()
    sampling = SamplingConfig(
        max_new_tokens=distill.max_new_tokens,
        temperature=distill.temperature,
        top_p=distill.top_p,
        n=distill.samples_per_problem,
    )
    prompts = [PromptInput(r["problem"], list(r["images"])) for r in records]
    completions = backend.generate(prompts, sampling)
    rows, counts = distill_records(records, completions, distill)
    metrics = counts.metrics()
    if not rows and cfg.sft.enabled:
        raise DataError(
            f"distillation kept no SFT rows: 0 of {counts.samples} samples from teacher {distill.teacher!r} verified; "
            "use a stronger teacher, raise data.distill.samples_per_problem, or set data.distill.unverified: keep_original"
        )
    log.info(
        "distill: %d of %d samples verified (%.1f%%), %d of %d problems solved, %d SFT rows",
        counts.accepted,
        counts.samples,
        100 * metrics["data/distill/acceptance_rate"],
        counts.solved,
        counts.problems,
        counts.rows,
    )
    return rows, metrics
