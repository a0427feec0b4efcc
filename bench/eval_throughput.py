"""Eval throughput: samples/s through the eval stage's own path (generate, then judge every answer).

    .venv/bin/python bench/eval_throughput.py            # tiny model on CPU, a few batch sizes
    .venv/bin/python bench/eval_throughput.py --quick    # seconds, for CI
    .venv/bin/python bench/eval_throughput.py --model DIR --backend vllm   # a real model on a GPU

Prompts are synthetic problems (one 56x56 image each) from data_prep's generator; the model
is the tiny offline Qwen2.5-VL unless --model is given. Configurations are measured
interleaved, `--repeats` times, and the median is reported (run-to-run noise on shared
CPUs is about +-20%). Columns: end-to-end samples/s (generation + scoring), generated
tokens/s, scoring alone in samples/s. Results go to bench/results/eval_throughput*.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import software_facts  # noqa: E402
from coldstart.common.answers import warm_up  # noqa: E402
from coldstart.common.config import PipelineConfig, config_from_dict  # noqa: E402
from coldstart.common.generation import SamplingConfig  # noqa: E402
from coldstart.eval.benchmarks import EvalSample  # noqa: E402
from coldstart.eval.scoring import ScoringContext  # noqa: E402
from coldstart.eval.stage import generate_responses, make_eval_backend, score_responses  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="small run (seconds): 32 samples, 1 repeat"
    )
    parser.add_argument(
        "--samples", type=int, default=None, help="prompts per measurement (default 128; quick 32)"
    )
    parser.add_argument(
        "--batch-sizes", default=None, help="comma-separated (default 1,8,32; quick 8,32)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default 64; quick 32")
    parser.add_argument("--repeats", type=int, default=None, help="default 3; quick 1")
    parser.add_argument(
        "--model", default=None, help="model dir (default: the tiny model, built in a temp dir)"
    )
    parser.add_argument("--backend", choices=("hf", "vllm"), default="hf")
    parser.add_argument(
        "--output",
        default=None,
        help="JSON path (default bench/results/eval_throughput[_quick].json)",
    )
    args = parser.parse_args(argv)
    args.samples = args.samples or (32 if args.quick else 128)
    args.batch_sizes = [
        int(b) for b in (args.batch_sizes or ("8,32" if args.quick else "1,8,32")).split(",")
    ]
    args.max_new_tokens = args.max_new_tokens or (32 if args.quick else 64)
    args.repeats = args.repeats or (1 if args.quick else 3)
    suffix = "_quick" if args.quick else ""
    args.output = Path(args.output or ROOT / "bench" / "results" / f"eval_throughput{suffix}.json")
    return args


def bench_config(args: argparse.Namespace, batch_size: int) -> PipelineConfig:
    return config_from_dict(
        {
            "data": {"min_pixels": 3136, "max_pixels": 3136},
            "eval": {
                "max_new_tokens": args.max_new_tokens,
                "batch_size": batch_size,
                "backend": args.backend,
            },
        },
        "bench",
    )


def synthetic_samples(n: int) -> list[EvalSample]:
    from coldstart.data_prep.stage import synthetic_splits

    cfg = config_from_dict(
        {
            "data": {
                "synthetic": {
                    "train_per_family": 1,
                    "test_per_family": max(1, n // 4 + 1),
                    "image_size": 56,
                },
                "min_pixels": 3136,
                "max_pixels": 3136,
            }
        }
    )
    rows = synthetic_splits(cfg.data).eval[:n]
    return [EvalSample(r["id"], "synthetic", r["problem"], r["images"], r["answer"]) for r in rows]


def tiny_model_dir(tmp: Path) -> Path:
    from coldstart.common.config import TinyModelConfig
    from coldstart.common.tiny_model import build_tiny_model

    return build_tiny_model(tmp / "tiny", TinyModelConfig(), 3136, 3136)


def measure(backend, samples: list[EvalSample], cfg: PipelineConfig) -> dict[str, float]:
    sampling = SamplingConfig(max_new_tokens=cfg.eval.max_new_tokens)
    start = time.perf_counter()
    completions = generate_responses(
        backend, samples, sampling, cfg.eval.batch_size, cfg.eval.sort_by_length
    )
    generated = time.perf_counter()
    metrics, _ = score_responses(
        samples, completions, "strict", ScoringContext(timeout_s=cfg.eval.answer_timeout_s)
    )
    done = time.perf_counter()
    tokens = sum(len(c.token_ids) for c in completions)
    return {
        "samples_per_s": len(samples) / (done - start),
        "tokens_per_s": tokens / (generated - start),
        "scoring_samples_per_s": len(samples) / (done - generated),
        "accuracy": metrics["accuracy"],
        "errors": metrics["errors"],
    }


def run(args: argparse.Namespace) -> dict:
    import torch

    samples = synthetic_samples(args.samples)
    warm_up()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model) if args.model else tiny_model_dir(Path(tmp))
        backend = make_eval_backend(bench_config(args, args.batch_sizes[0]), model_dir)
        measure(
            backend, samples[: min(8, len(samples))], bench_config(args, args.batch_sizes[0])
        )  # warm-up
        runs: dict[int, list[dict[str, float]]] = {b: [] for b in args.batch_sizes}
        for _ in range(args.repeats):
            for batch_size in args.batch_sizes:  # interleaved: drift hits every configuration alike
                backend.batch_size = batch_size
                runs[batch_size].append(measure(backend, samples, bench_config(args, batch_size)))
    results = [
        {
            "batch_size": b,
            **{k: statistics.median(r[k] for r in rs) for k in rs[0]},
            "repeats": len(rs),
        }
        for b, rs in runs.items()
    ]
    return {
        "benchmark": "eval_throughput",
        "model": args.model or "tiny",
        "backend": args.backend,
        "samples": len(samples),
        "max_new_tokens": args.max_new_tokens,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        **software_facts(),
        "results": results,
    }


def print_table(report: dict) -> None:
    print(
        f"\neval throughput: {report['model']} ({report['backend']}, {report['device']}, "
        f"{report['torch_threads']} threads), {report['samples']} samples, {report['max_new_tokens']} new tokens"
    )
    print(
        f"{'batch':>6} {'samples/s':>10} {'tokens/s':>10} {'scoring/s':>10} {'accuracy':>9} {'failed':>7}"
    )
    for r in report["results"]:
        print(
            f"{r['batch_size']:>6} {r['samples_per_s']:>10.1f} {r['tokens_per_s']:>10.0f} "
            f"{r['scoring_samples_per_s']:>10.0f} {100 * r['accuracy']:>8.1f}% {int(r['errors']):>7}"
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
