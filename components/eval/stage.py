"""eval: generate greedily with each model on each benchmark, score in every mode, report.

Per model and benchmark the samples stream through in chunks: images decoded per chunk,
responses generated (prompts of similar length batched together) and appended to a
progress log (`progress.ResponseLog`, so a crashed eval resumes where it stopped), scored
in each mode of `eval.scoring` (`scoring.py`), and written to the predictions table. Only
small per-sample records (info, verdicts) stay in memory for the aggregates, so memory
stays flat as a benchmark grows. Then: per-benchmark aggregates per mode, the reflection
("aha moment") tally per model, the report table, chart, flat metrics.

One sample that cannot be generated (a corrupt image, a processor or generate error) is
logged, scored wrong with its error in the predictions, and the run continues.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from coldstart.common import storage
from coldstart.common.answers import warm_up
from coldstart.common.config import BenchmarkSpec, ModelConfig, PipelineConfig
from coldstart.common.digests import content_digest, json_digest
from coldstart.common.errors import InputError
from coldstart.common.generation import Completion, PromptInput, SamplingConfig
from coldstart.eval.benchmarks import EvalData, EvalSample, iter_benchmark, load_images
from coldstart.eval.extractor import ChatClient
from coldstart.eval.predictions import PredictionWriter, columns_for
from coldstart.eval.progress import ResponseLog
from coldstart.eval.reflection import ReflectionTally, reflection_pattern
from coldstart.eval.report import (
    ReportInputs,
    bar_chart,
    markdown_report,
    score_table,
)
from coldstart.eval.scoring import Judgement, ScoringContext, aggregate, score, slug

log = logging.getLogger(__name__)

KFP_METRICS = ("score", "accuracy")  # per benchmark; the kfp Metrics artifact stays small
CHUNK_BATCHES = (
    8  # samples flow through generation, scoring and writing this many batches at a time
)


@dataclass
class EvalRun:
    """What one eval stage run produced.

    `results[model][mode][benchmark]` holds the aggregate metrics (each with its `score`,
    the benchmark's headline metric); `reflection[model]` the reflection tally's metrics.
    """

    modes: list[str]
    benchmarks: list[str]
    headline_of: dict[str, str]
    extraction: str = "rules"
    results: dict[str, dict[str, dict[str, dict[str, float]]]] = field(default_factory=dict)
    reflection: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def primary(self) -> str:
        return self.modes[0]

    def primary_results(self) -> dict[str, dict[str, dict[str, float]]]:
        return {model: per_mode[self.primary] for model, per_mode in self.results.items()}

    def metrics(self) -> dict[str, float]:
        """Flat, slash-namespaced metrics.

        `eval/<model>/<benchmark>/<mode>/<metric>` for every mode, and without the mode
        (`eval/<model>/<benchmark>/score`, `eval/<model>/average`) for the first mode, the
        report's main table; `eval/<model>/<mode>/average`; `eval/<model>/reflection/*`.
        """
        flat: dict[str, float] = {}
        for mode in self.modes:
            results = {m: per_mode[mode] for m, per_mode in self.results.items()}
            table = score_table(results, self.benchmarks)
            for model, per_bench in results.items():
                prefix = f"eval/{slug(model)}"
                for bench, values in per_bench.items():
                    flat.update({f"{prefix}/{bench}/{mode}/{k}": v for k, v in values.items()})
                    if mode == self.primary:
                        flat.update({f"{prefix}/{bench}/{k}": v for k, v in values.items()})
                flat[f"{prefix}/{mode}/average"] = table[model]["Avg."] / 100.0
                if mode == self.primary:
                    flat[f"{prefix}/average"] = table[model]["Avg."] / 100.0
        for model, values in self.reflection.items():
            flat.update({f"eval/{slug(model)}/reflection/{k}": v for k, v in values.items()})
        return {k: v for k, v in flat.items() if not math.isnan(v)}

    def report_inputs(self) -> ReportInputs:
        return ReportInputs(
            self.results,
            self.modes,
            self.benchmarks,
            self.headline_of,
            self.reflection,
            self.extraction,
        )


def kfp_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """The few numbers for the kfp Metrics artifact, underscore-named: `sft_rl_mathvista_score`,
    `..._accuracy` per benchmark and `<model>_average` (first scoring mode); the rest stays in MLflow."""
    names = "|".join(KFP_METRICS)
    keep = re.compile(rf"eval/[^/]+/(?:[^/]+/(?:{names})|average)")
    return {
        k.removeprefix("eval/").replace("/", "_"): v
        for k, v in metrics.items()
        if keep.fullmatch(k)
    }


# --------------------------------------------------------------------------- backends


def make_eval_backend(cfg: PipelineConfig, model_dir: Path, max_images: int = 1):
    """The generation backend for one model, greedy: HF generate (CPU/GPU) or vLLM (GPU, `gpu` extra)."""
    from coldstart.common.generation import make_backend
    from coldstart.common.models import load_model, load_processor

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
    from coldstart.common.models import check_model_dir, resolve_model_dir

    model = ModelConfig(name_or_path=ref, tiny=cfg.model.tiny)
    return check_model_dir(
        resolve_model_dir(model, cache_dir, cfg.data.min_pixels, cfg.data.max_pixels)
    )


def model_identity(ref: str, cfg: PipelineConfig, cache_dir: Path) -> str:
    """The content digest of a model: an s3:// prefix by its objects' ETags (nothing downloaded),
    else the resolved folder's bytes; its training checkpoints are not the model."""
    from coldstart.common.stage_runner import CHECKPOINTS

    where = ref if storage.is_s3(ref) else resolve_model(ref, cfg, cache_dir)
    return content_digest(where, skip_dirs=(CHECKPOINTS,))


def benchmark_identity(spec: BenchmarkSpec, eval_data: EvalData | None) -> str:
    """The benchmark's settings and the digest of its file (the eval folder for synthetic, whose
    image keys are the images' own hashes)."""
    uri = spec.uri or (str(eval_data.folder) if eval_data is not None else "")
    return json_digest([spec.model_dump(mode="json"), content_digest(uri) if uri else None])


# What changes the responses a model generates; scoring-only settings (scoring, extractor,
# answer_timeout_s, reflection_phrases) and memory settings are left out, so a rescore resumes.
GENERATION_SETTINGS = (
    "system_prompt",
    "max_new_tokens",
    "batch_size",
    "backend",
    "min_pixels",
    "max_pixels",
    "sort_by_length",
    "max_model_len",
)


def progress_key(cfg: PipelineConfig, model_id: str, data_id: str) -> str:
    """The name of a progress log: a digest of the model, the benchmark and the generation settings."""
    settings = cfg.eval.model_dump(mode="json", include=set(GENERATION_SETTINGS))
    model = cfg.model.model_dump(mode="json", include={"torch_dtype", "attn_implementation"})
    return json_digest([model_id, data_id, settings, model])[:16]


def check_model_names(models: Mapping[str, str]) -> None:
    """Two display names with one slug would share progress logs and metric names."""
    by_slug: dict[str, str] = {}
    for name in models:
        if slug(name) in by_slug:
            raise InputError(
                f"models {by_slug[slug(name)]!r} and {name!r} have the same metric name "
                f"{slug(name)!r}: rename one"
            )
        by_slug[slug(name)] = name


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


# --------------------------------------------------------------------------- one benchmark


@dataclass
class Record:
    """What aggregation keeps of one sample: no prompt, image or response."""

    info: dict[str, Any]
    correct: dict[str, bool]
    extracted: dict[str, str | None]
    error: bool
    reflective: bool


def _chunks(samples: Iterable[EvalSample], size: int) -> Iterator[list[EvalSample]]:
    iterator = iter(samples)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _as_record(completion: Completion, sample_id: str) -> dict[str, Any]:
    return {
        "id": sample_id,
        "response": completion.text,
        "finish_reason": completion.finish_reason,
        "error": completion.error,
        "num_tokens": len(completion.token_ids),
    }


class Responses:
    """Responses of one chunk: those the progress log already has (in order), the rest generated."""

    def __init__(
        self, progress: ResponseLog, generate: Callable[[list[EvalSample]], list[Completion]]
    ):
        self.progress = progress
        self.done = progress.read()
        self.generate = generate
        self.generated = 0
        self.seconds = 0.0

    def for_chunk(self, chunk: Sequence[EvalSample]) -> list[dict[str, Any]]:
        known: list[dict[str, Any]] = []
        for sample in chunk:
            record = next(self.done, None)
            if record is None:
                break
            if record["id"] != sample.id:
                raise RuntimeError(
                    f"{self.progress.path}: line {len(known) + 1} of this chunk is sample "
                    f"{record['id']!r}, the benchmark has {sample.id!r} there: the benchmark or "
                    "its where/limit changed since; delete the file (or use a new run id)"
                )
            known.append(record)
        todo = list(chunk[len(known) :])
        if not todo:
            return known
        start = time.perf_counter()
        completions = self.generate(todo)
        self.seconds += time.perf_counter() - start
        self.generated += len(todo)
        new = [_as_record(c, s.id) for s, c in zip(todo, completions, strict=True)]
        self.progress.append(new)
        return known + new


def score_chunk(
    samples: Sequence[EvalSample],
    responses: Sequence[str],
    modes: Sequence[str],
    ctx: ScoringContext,
) -> dict[str, list]:
    """`{mode: [Judgement per sample]}`."""
    return {mode: score(mode, samples, responses, ctx) for mode in modes}


def score_responses(
    samples: Sequence[EvalSample],
    completions: Sequence[Completion],
    mode: str,
    ctx: ScoringContext | None = None,
) -> tuple[dict[str, float], list[Judgement]]:
    """Score a list of completions at once in one mode (tests, benches): aggregate and verdicts."""
    ctx = ctx or ScoringContext()
    judged = score(mode, samples, [c.text for c in completions], ctx)
    metrics = aggregate(
        samples[0].benchmark if samples else "",
        [s.info for s in samples],
        [j.correct for j in judged],
        [j.extracted for j in judged],
        [c.finish_reason == "error" for c in completions],
    )
    return metrics, judged


def _prediction_row(
    model: str,
    sample: EvalSample,
    record: dict[str, Any],
    judged: dict[str, Any],
    modes,
    reflective,
) -> dict[str, Any]:
    row = {
        "model": model,
        "benchmark": sample.benchmark,
        "id": sample.id,
        "response": record["response"],
        "gold": sample.gold,
        "correct": judged[modes[0]].correct,
        "extracted": judged[modes[0]].extracted,
        "reflection": reflective,
        "finish_reason": record["finish_reason"],
        "error": record["error"],
        "num_tokens": record["num_tokens"],
        "info": json.dumps(sample.info, default=str),
    }
    for mode in modes:
        row[f"correct_{mode}"] = judged[mode].correct
        row[f"extracted_{mode}"] = judged[mode].extracted
    return row


@dataclass
class BenchmarkJob:
    """Everything one (model, benchmark) evaluation needs besides the samples."""

    model: str
    spec: BenchmarkSpec
    modes: list[str]
    ctx: ScoringContext
    progress: ResponseLog
    writer: PredictionWriter
    chunk_size: int
    pattern: re.Pattern[str] | None


def evaluate_benchmark(
    job: BenchmarkJob,
    samples: Iterable[EvalSample],
    generate: Callable[[list[EvalSample]], list[Completion]],
    tally: ReflectionTally,
) -> dict[str, dict[str, float]]:
    """Stream the samples: responses (logged or generated), verdicts, predictions rows.

    Returns `{mode: aggregate metrics}`; adds each response to the reflection tally.
    """
    records: list[Record] = []
    responses = Responses(job.progress, generate)
    for chunk in _chunks(samples, job.chunk_size):
        got = responses.for_chunk(chunk)
        texts = [r["response"] or "" for r in got]
        judged = score_chunk(chunk, texts, job.modes, job.ctx)
        rows = []
        for i, (sample, record) in enumerate(zip(chunk, got, strict=True)):
            verdicts = {mode: judged[mode][i] for mode in job.modes}
            reflective = bool(job.pattern and job.pattern.search(texts[i]))
            tally.add(reflective, verdicts[job.modes[0]].correct)
            rows.append(_prediction_row(job.model, sample, record, verdicts, job.modes, reflective))
            records.append(
                Record(
                    sample.info,
                    {m: v.correct for m, v in verdicts.items()},
                    {m: v.extracted for m, v in verdicts.items()},
                    record["finish_reason"] == "error",
                    reflective,
                )
            )
        job.writer.write(rows)
    return _aggregate_modes(job, records, responses)


def _aggregate_modes(
    job: BenchmarkJob, records: Sequence[Record], responses: Responses
) -> dict[str, dict[str, float]]:
    out = {}
    infos = [r.info for r in records]
    errors = [r.error for r in records]
    for mode in job.modes:
        metrics = aggregate(
            job.spec.name,
            infos,
            [r.correct[mode] for r in records],
            [r.extracted[mode] for r in records],
            errors,
        )
        metrics["score"] = metrics.get(job.spec.headline, float("nan"))
        metrics["generated"] = float(responses.generated)
        metrics["seconds"] = responses.seconds
        metrics["samples_per_s"] = (
            responses.generated / responses.seconds if responses.seconds > 0 else float("nan")
        )
        out[mode] = metrics
    log.info(
        "eval %s on %s: %s (%d samples, %d generated now, %d failed)",
        job.model,
        job.spec.name,
        ", ".join(f"{m} {100 * out[m]['score']:.1f}%" for m in job.modes),
        len(records),
        responses.generated,
        sum(errors),
    )
    return out


# --------------------------------------------------------------------------- the run


@dataclass
class EvalPaths:
    """Where eval keeps its state: the local work folder and, for s3 outputs, its mirror."""

    work: Path  # this run's progress logs
    remote: str | None = None  # their s3:// mirror
    cache: Path | None = None  # the extractor's cache (shared by runs: a rescore sends nothing)
    cache_remote: str | None = None  # its s3:// mirror

    def progress(self, model: str, benchmark: str, key: str) -> ResponseLog:
        """The log of one model on one benchmark, named by `progress_key`: another model, data
        set or generation setting writes another log, so no response is taken for another's."""
        name = f"{slug(model)}/{benchmark}-{key}.jsonl"
        remote = storage.join(self.remote, "progress", name) if self.remote else None
        return ResponseLog(self.work / "progress" / name, remote)


def open_extractor(cfg: PipelineConfig, paths: EvalPaths) -> ChatClient | None:
    """The LLM extractor with its cache (pulled from the s3 mirror when there is one)."""
    if cfg.eval.extractor is None or "official" not in cfg.eval.scoring:
        return None
    cache, remote = paths.cache or paths.work / "extractor.sqlite", paths.cache_remote
    if remote and not cache.exists() and storage.exists(remote):
        storage.download_file(remote, cache)
    return ChatClient(cfg.eval.extractor, cache)


def _close_extractor(client: ChatClient | None, paths: EvalPaths) -> None:
    if client is None:
        return
    client.close()
    if paths.cache_remote and client.cache.path is not None:
        storage.upload_file(client.cache.path, paths.cache_remote)


def _max_images(cfg: PipelineConfig, eval_data: EvalData | None, cache_dir: Path) -> int:
    """Images per prompt the vLLM engine must allow (a pass over the benchmarks, images undecoded)."""
    if cfg.eval.backend != "vllm":
        return 1
    return max(
        len(s.images)
        for spec in cfg.eval.benchmarks
        for s in iter_benchmark(spec, eval_data, cache_dir)
    )


class LazyBackend:
    """Loads the model on the first prompt it must generate: a fully resumed eval loads nothing."""

    def __init__(self, cfg: PipelineConfig, model_dir: Callable[[], Path], max_images: int):
        self.cfg, self.model_dir, self.max_images = cfg, model_dir, max_images
        self.backend: Any = None
        self.sampling = SamplingConfig(max_new_tokens=cfg.eval.max_new_tokens)

    def generate(self, samples: list[EvalSample]) -> list[Completion]:
        if self.backend is None:
            self.backend = make_eval_backend(self.cfg, self.model_dir(), self.max_images)
        return generate_responses(
            self.backend,
            samples,
            self.sampling,
            self.cfg.eval.batch_size,
            self.cfg.eval.sort_by_length,
        )

    def close(self) -> None:
        if self.backend is not None:
            _shutdown(self.backend)
            self.backend = None
        _free_memory()


def run_eval(
    cfg: PipelineConfig,
    models: Mapping[str, str],
    eval_data: EvalData | None,
    cache_dir: Path,
    paths: EvalPaths,
    predictions_dir: Path,
) -> EvalRun:
    """Evaluate every model (display name -> dir or s3://) on every configured benchmark."""
    if not models:
        raise InputError("eval needs at least one model (NAME=DIR_OR_S3)")
    ev = cfg.eval
    specs = ev.benchmarks
    modes = list(ev.scoring)
    check_model_names(models)
    for spec in specs:  # layout errors before any model loads
        next(iter(iter_benchmark(spec, eval_data, cache_dir)))
    data_ids = {spec.name: benchmark_identity(spec, eval_data) for spec in specs}
    max_images = _max_images(cfg, eval_data, cache_dir)
    warm_up()  # start the answer-checking worker while the first model loads
    extractor = open_extractor(cfg, paths)
    ctx = ScoringContext(extractor, ev.answer_timeout_s)
    run = EvalRun(
        modes, [s.name for s in specs], {s.name: s.headline for s in specs}, ctx.extraction
    )
    pattern = reflection_pattern(ev.reflection_phrases)
    writer = PredictionWriter(predictions_dir, columns_for(modes))
    try:
        for name, ref in models.items():
            backend = LazyBackend(
                cfg, lambda ref=ref: resolve_model(ref, cfg, cache_dir), max_images
            )
            model_id = model_identity(ref, cfg, cache_dir)
            tally = ReflectionTally()
            per_mode: dict[str, dict[str, dict[str, float]]] = {mode: {} for mode in modes}
            try:
                for spec in specs:
                    job = BenchmarkJob(
                        name,
                        spec,
                        modes,
                        ctx,
                        paths.progress(
                            name, spec.name, progress_key(cfg, model_id, data_ids[spec.name])
                        ),
                        writer,
                        max(1, ev.batch_size * CHUNK_BATCHES),
                        pattern,
                    )
                    samples = iter_benchmark(spec, eval_data, cache_dir)
                    for mode, metrics in evaluate_benchmark(
                        job, samples, backend.generate, tally
                    ).items():
                        per_mode[mode][spec.name] = metrics
            finally:
                backend.close()  # release the model before the next one loads
            run.results[name] = per_mode
            run.reflection[name] = tally.metrics()
    finally:
        writer.close()
        _close_extractor(extractor, paths)
    return run


# --------------------------------------------------------------------------- outputs


@dataclass
class EvalOutputs:
    predictions: Path  # folder: predictions.parquet + predictions.csv + predictions.json
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
    """Chart, report (chart embedded for the KFP UI, else linked) and metrics.json.

    The predictions were written while the run went (`run_eval`'s `predictions_dir`).
    """
    inputs = run.report_inputs()
    bar_chart(inputs, out.chart)
    link = out.chart.name if out.chart.parent == out.report.parent else str(out.chart)
    report = markdown_report(
        inputs,
        chart_png=out.chart.read_bytes() if out.embed_chart else None,
        chart_link=link,
    )
    out.report.parent.mkdir(parents=True, exist_ok=True)
    out.report.write_text(report)
    files = [out.chart, out.report]
    if out.metrics_json is not None:
        summary = {
            "table": score_table(run.primary_results(), run.benchmarks),
            "modes": run.modes,
            "extraction": run.extraction,
            "tables": {
                mode: score_table(
                    {m: per_mode[mode] for m, per_mode in run.results.items()}, run.benchmarks
                )
                for mode in run.modes
            },
            "reflection": run.reflection,
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
