"""eval: generate greedily with each model on each benchmark, score, aggregate, write the outputs.

The loop is: load every benchmark once (images undecoded) -> per model: load it, build the
generation backend (the one GRPO rolls out with), generate in chunks (images decoded per
chunk, prompts of similar length batched together), judge every response, aggregate per
benchmark -> the report table, chart, predictions table and flat metrics.

One sample that cannot be generated (a corrupt image, a processor or generate error) is
logged, scored wrong with its error in the predictions, and the run continues.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from components.common.answers import warm_up
from components.common.config import BenchmarkSpec, ModelConfig, PipelineConfig
from components.common.generation import Completion, PromptInput, SamplingConfig
from components.eval.benchmarks import EvalSample, load_benchmark, load_images
from components.eval.report import bar_chart, markdown_report, score_table
from components.eval.scoring import aggregate, judge, slug

log = logging.getLogger(__name__)

PREDICTION_COLUMNS = (
    "model",
    "benchmark",
    "id",
    "response",
    "extracted",
    "gold",
    "correct",
    "finish_reason",
    "error",
    "num_tokens",
    "info",
)
KFP_METRICS = ("score", "accuracy")  # per benchmark; the kfp Metrics artifact stays small
TABLE_FILE = "predictions.json"  # the predictions in MLflow's table layout (JSON, orient "split")
CHUNK_BATCHES = 8  # images are decoded this many generation batches at a time


@dataclass
class EvalRun:
    """What one eval stage run produced; `results[model][benchmark]` holds the aggregate metrics."""

    results: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    predictions: list[dict[str, Any]] = field(default_factory=list)
    benchmarks: list[str] = field(default_factory=list)
    metric_of: dict[str, str] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """Flat, slash-namespaced: `eval/<model>/<benchmark>/<metric>` and `eval/<model>/average`."""
        flat: dict[str, float] = {}
        table = score_table(self.results, self.benchmarks)
        for model, per_bench in self.results.items():
            prefix = f"eval/{slug(model)}"
            for bench, values in per_bench.items():
                flat.update({f"{prefix}/{bench}/{k}": v for k, v in values.items()})
            flat[f"{prefix}/average"] = table[model]["Avg."] / 100.0
        return {k: v for k, v in flat.items() if not math.isnan(v)}


def kfp_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """The few numbers for the kfp Metrics artifact, underscore-named: `sft_rl_mathvista_score`,
    `..._accuracy` per benchmark and `<model>_average`; breakdowns stay in MLflow."""
    keep = (*tuple(f"/{m}" for m in KFP_METRICS), "/average")
    return {
        k.removeprefix("eval/").replace("/", "_"): v for k, v in metrics.items() if k.endswith(keep)
    }


# --------------------------------------------------------------------------- backends


def make_eval_backend(cfg: PipelineConfig, model_dir: Path, max_images: int = 1):
    """The generation backend for one model, greedy: HF generate (CPU/GPU) or vLLM (GPU, `gpu` extra)."""
    from components.common.generation import make_backend
    from components.common.models import load_model, load_processor

    ev = cfg.eval
    processor = load_processor(model_dir, ev.min_pixels, ev.max_pixels)
    if ev.backend == "vllm":
        return make_backend(
            "vllm",
            str(model_dir),
            processor,
            ev.system_prompt,
            gpu_memory_utilization=ev.gpu_memory_utilization,
            max_model_len=ev.max_model_len,
            dtype=cfg.model.torch_dtype,
            min_pixels=ev.min_pixels,
            max_pixels=ev.max_pixels,
            max_images_per_prompt=max(1, max_images),
        )
    import torch

    model = load_model(model_dir, cfg.model.torch_dtype, cfg.model.attn_implementation)
    if torch.cuda.is_available():
        model.to("cuda")
    return make_backend("hf", model, processor, ev.system_prompt, batch_size=ev.batch_size)


def resolve_model(ref: str, cfg: PipelineConfig, cache_dir: Path) -> Path:
    """A model directory for a directory, an s3:// prefix (downloaded) or 'tiny'."""
    from components.common.models import check_model_dir, resolve_model_dir

    model = ModelConfig(name_or_path=ref, tiny=cfg.model.tiny)
    return check_model_dir(
        resolve_model_dir(model, cache_dir, cfg.data.min_pixels, cfg.data.max_pixels)
    )


def _shutdown(backend: Any) -> None:
    """A vLLM engine holds a process group and GPU memory until torn down; HF needs nothing."""
    if not hasattr(backend, "llm"):
        return
    try:
        from vllm.distributed.parallel_state import (
            destroy_distributed_environment,
            destroy_model_parallel,
        )

        destroy_model_parallel()
        destroy_distributed_environment()
    except ImportError:  # pragma: no cover - only with the gpu extra
        pass


def _free_memory() -> None:
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- generation


def _order(samples: Sequence[EvalSample], by_length: bool) -> list[int]:
    """Longest prompts first: similar lengths share a batch, and an out-of-memory shows up at once."""
    indices = list(range(len(samples)))
    if by_length:
        indices.sort(key=lambda i: (len(samples[i].images), len(samples[i].prompt)), reverse=True)
    return indices


def _generate_isolated(
    backend: Any, prompts: list[PromptInput], sampling: SamplingConfig
) -> list[list[Completion]]:
    """`backend.generate`, retried prompt by prompt if the whole call fails (vLLM raises for the batch)."""
    if not prompts:
        return []
    try:
        return backend.generate(prompts, sampling)
    except (RuntimeError, ValueError) as exc:
        if len(prompts) == 1:
            return [[Completion("", [], "error", error=str(exc))]]
        log.warning("generation of %d prompts failed (%s); retrying one by one", len(prompts), exc)
        return [group for p in prompts for group in _generate_isolated(backend, [p], sampling)]


def generate_responses(
    backend: Any,
    samples: Sequence[EvalSample],
    sampling: SamplingConfig,
    batch_size: int,
    by_length: bool = True,
) -> list[Completion]:
    """One greedy completion per sample, in sample order; failures become `finish_reason="error"`."""
    out: list[Completion | None] = [None] * len(samples)
    order = _order(samples, by_length)
    chunk = max(1, batch_size * CHUNK_BATCHES)
    desc = f"eval {samples[0].benchmark}" if samples else "eval"
    progress = tqdm(total=len(order), desc=desc, unit="sample", mininterval=1.0)
    for start in range(0, len(order), chunk):
        ids = order[start : start + chunk]
        prompts, ok_ids = [], []
        for i in ids:
            try:
                prompts.append(PromptInput(samples[i].prompt, load_images(samples[i])))
                ok_ids.append(i)
            except ValueError as exc:
                out[i] = Completion("", [], "error", error=f"image: {exc}")
        for i, completions in zip(
            ok_ids, _generate_isolated(backend, prompts, sampling), strict=False
        ):
            out[i] = (
                completions[0]
                if completions
                else Completion("", [], "error", error="no completion")
            )
        progress.update(len(ids))
    progress.close()
    for i, completion in enumerate(out):
        if completion is not None and completion.finish_reason == "error":
            sample = samples[i]
            log.error(
                "%s/%s: generation failed (%s); scored as wrong",
                sample.benchmark,
                sample.id,
                completion.error,
            )
    return [c if c is not None else Completion("", [], "error", error="missing") for c in out]


# --------------------------------------------------------------------------- scoring


def score_responses(
    model: str, samples: Sequence[EvalSample], completions: Sequence[Completion], timeout_s: float
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Judge each completion; returns the benchmark's aggregate metrics and the prediction rows."""
    rows: list[dict[str, Any]] = []
    judgements = [judge(s, c.text, timeout_s) for s, c in zip(samples, completions, strict=True)]
    for sample, completion, verdict in zip(samples, completions, judgements, strict=False):
        rows.append(
            {
                "model": model,
                "benchmark": sample.benchmark,
                "id": sample.id,
                "response": completion.text,
                "extracted": verdict.extracted,
                "gold": sample.gold,
                "correct": verdict.correct,
                "finish_reason": completion.finish_reason,
                "error": completion.error,
                "num_tokens": len(completion.token_ids),
                "info": json.dumps(sample.info, default=str),
            }
        )
    metrics = aggregate(
        samples[0].benchmark if samples else "",
        samples,
        [j.correct for j in judgements],
        [j.extracted for j in judgements],
        [c.finish_reason == "error" for c in completions],
    )
    return metrics, rows


def headline(spec: BenchmarkSpec, metrics: Mapping[str, float]) -> float:
    """The number in the report's column for this benchmark (accuracy, or We-Math strict/loose)."""
    return metrics.get(spec.metric, float("nan"))


def evaluate_model(
    model: str,
    backend: Any,
    data: Mapping[str, list[EvalSample]],
    specs: Sequence[BenchmarkSpec],
    cfg: PipelineConfig,
) -> tuple[dict[str, dict[str, float]], list[dict]]:
    sampling = SamplingConfig(max_new_tokens=cfg.eval.max_new_tokens)
    per_bench: dict[str, dict[str, float]] = {}
    rows: list[dict[str, Any]] = []
    for spec in specs:
        samples = data[spec.name]
        start = time.perf_counter()
        completions = generate_responses(
            backend, samples, sampling, cfg.eval.batch_size, cfg.eval.sort_by_length
        )
        seconds = time.perf_counter() - start
        metrics, bench_rows = score_responses(
            model, samples, completions, cfg.eval.answer_timeout_s
        )
        metrics["score"] = headline(spec, metrics)
        metrics["seconds"] = seconds
        metrics["samples_per_s"] = len(samples) / seconds if seconds > 0 else float("nan")
        per_bench[spec.name] = metrics
        rows.extend(bench_rows)
        log.info(
            "eval %s on %s: score %.1f%% (%d samples, %.2f samples/s, %d failed)",
            model,
            spec.name,
            100 * metrics["score"],
            len(samples),
            metrics["samples_per_s"],
            int(metrics["errors"]),
        )
    return per_bench, rows


def _evaluate_dir(
    name: str,
    model_dir: Path,
    data: Mapping[str, list[EvalSample]],
    specs: Sequence[BenchmarkSpec],
    cfg: PipelineConfig,
    max_images: int,
) -> tuple[dict[str, dict[str, float]], list[dict]]:
    backend = make_eval_backend(cfg, model_dir, max_images=max_images)
    try:
        return evaluate_model(name, backend, data, specs, cfg)
    finally:
        _shutdown(backend)


def run_eval(
    cfg: PipelineConfig,
    models: Mapping[str, str],
    eval_data_dir: str | Path | None,
    cache_dir: Path,
) -> EvalRun:
    """Evaluate every model (display name -> dir or s3://) on every configured benchmark."""
    if not models:
        from components.common.errors import InputError

        raise InputError("eval needs at least one model (NAME=DIR_OR_S3)")
    specs = cfg.eval.benchmarks
    data = {spec.name: load_benchmark(spec, eval_data_dir, cache_dir) for spec in specs}
    max_images = max(len(s.images) for samples in data.values() for s in samples)
    warm_up()  # start the answer-checking worker while the first model loads
    run = EvalRun(benchmarks=[s.name for s in specs], metric_of={s.name: s.metric for s in specs})
    for name, ref in models.items():
        model_dir = resolve_model(ref, cfg, cache_dir)
        log.info("eval: model %s from %s", name, model_dir)
        run.results[name], rows = _evaluate_dir(name, model_dir, data, specs, cfg, max_images)
        run.predictions.extend(rows)
        _free_memory()  # the model is unreferenced now: release it before the next one loads
    return run


# --------------------------------------------------------------------------- outputs


@dataclass
class EvalOutputs:
    predictions: Path  # folder: predictions.parquet + predictions.csv
    report: Path  # Markdown file
    chart: Path  # PNG file
    metrics_json: Path | None = None
    embed_chart: bool = False  # the KFP UI renders one Markdown artifact: put the chart inside it

    @classmethod
    def in_folder(cls, root: str | Path) -> EvalOutputs:
        root = Path(root)
        return cls(
            root / "predictions", root / "report.md", root / "chart.png", root / "metrics.json"
        )


def write_outputs(run: EvalRun, out: EvalOutputs) -> list[Path]:
    """Predictions table, chart, report (chart embedded for the KFP UI, else linked) and metrics.json."""
    import pandas as pd

    out.predictions.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(run.predictions, columns=list(PREDICTION_COLUMNS))
    frame.to_parquet(out.predictions / "predictions.parquet", index=False)
    frame.to_csv(out.predictions / "predictions.csv", index=False)
    frame.to_json(
        out.predictions / TABLE_FILE, orient="split", index=False
    )  # MLflow's table format
    bar_chart(run.results, run.benchmarks, out.chart)
    link = out.chart.name if out.chart.parent == out.report.parent else str(out.chart)
    report = markdown_report(
        run.results,
        run.benchmarks,
        run.metric_of,
        chart_png=out.chart.read_bytes() if out.embed_chart else None,
        chart_link=link,
    )
    out.report.parent.mkdir(parents=True, exist_ok=True)
    out.report.write_text(report)
    files = [
        out.predictions / name for name in ("predictions.parquet", "predictions.csv", TABLE_FILE)
    ]
    files += [out.chart, out.report]
    if out.metrics_json is not None:
        summary = {
            "table": score_table(run.results, run.benchmarks),
            "metrics": run.metrics(),
            "results": run.results,
        }
        out.metrics_json.write_text(json.dumps(_finite(summary), indent=2))
        files.append(out.metrics_json)
    return files


def _finite(value: Any) -> Any:
    """NaN (a score with nothing to score) as JSON null."""
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    return None if isinstance(value, float) and math.isnan(value) else value
