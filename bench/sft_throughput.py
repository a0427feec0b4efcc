"""SFT throughput: tokens/s and peak memory through the stage's own path (row checks, collator, Trainer).

    .venv/bin/python bench/sft_throughput.py            # tiny model on CPU: batch 1/4/8 x gradient checkpointing
    .venv/bin/python bench/sft_throughput.py --quick    # one configuration, for CI (~30 s)
    .venv/bin/python bench/sft_throughput.py --preset 3b --bf16 --batch-sizes 1,4   # GPU: MFU of a 3B-size model

Rows are synthetic problems (one 56x56 image each) from data_prep's generator, trained on by the
tiny offline Qwen2.5-VL, or with `--preset 3b` by a randomly initialised Qwen2.5-VL of 3B size
(hidden 2048, 36 layers, vision depth 32). Each measurement runs in a fresh process, because peak
memory is a per-process high-water mark (CPU: peak RSS of the whole process, Python and torch
included; GPU: torch's peak allocated). Configurations are measured interleaved, `--repeats`
times, and the median is reported (run-to-run noise on shared CPUs is about +-20%). The first
`--warmup` optimizer steps are not timed. tokens/s counts non-padding tokens, image tokens
included. MFU (GPU only) uses 6 x language-model parameters + attention per token against
`--peak-tflops`; the frozen vision tower's forward is left out (it is small next to the LLM).
Results go to bench/results/sft_throughput[_quick].json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import software_facts  # noqa: E402

PIXELS = 3136  # 56x56: the tiny config's image size
PRESETS: dict[str, dict[str, int]] = {
    "tiny": {},
    "3b": {
        "hidden_size": 2048,
        "intermediate_size": 11008,
        "num_hidden_layers": 36,
        "num_attention_heads": 16,
        "num_key_value_heads": 2,
        "vision_depth": 32,
        "vision_hidden_size": 1280,
        "vision_num_heads": 16,
    },
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="one configuration, 1 repeat, few steps"
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument(
        "--batch-sizes", default=None, help="comma-separated (default 1,4,8; quick 4)"
    )
    parser.add_argument(
        "--checkpointing",
        default=None,
        help="gradient checkpointing: off,on (default both; quick off)",
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="timed optimizer steps (default 20; quick 10)"
    )
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=None, help="default 3; quick 1")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (sft.bf16)")
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=989.0,
        help="accelerator peak for MFU (H100/H200 bf16 dense)",
    )
    parser.add_argument(
        "--output",
        default=None,
        help="JSON path (default bench/results/sft_throughput[_quick].json)",
    )
    parser.add_argument(
        "--worker", default=None, help=argparse.SUPPRESS
    )  # internal: one measurement, JSON spec
    args = parser.parse_args(argv)
    args.batch_sizes = [
        int(b) for b in (args.batch_sizes or ("4" if args.quick else "1,4,8")).split(",")
    ]
    args.checkpointing = [
        c == "on" for c in (args.checkpointing or ("off" if args.quick else "off,on")).split(",")
    ]
    args.steps = args.steps or (10 if args.quick else 20)
    args.repeats = args.repeats or (1 if args.quick else 3)
    suffix = ("_quick" if args.quick else "") + ("" if args.preset == "tiny" else f"_{args.preset}")
    args.output = Path(args.output or ROOT / "bench" / "results" / f"sft_throughput{suffix}.json")
    return args


# --------------------------------------------------------------------------- inputs (built once)


def build_inputs(root: Path, preset: str) -> tuple[Path, Path]:
    """A model dir of the preset's size and a small synthetic SFT set (data_prep's own writer)."""
    from coldstart.common.config import TinyModelConfig, config_from_dict
    from coldstart.common.tiny_model import build_tiny_model
    from coldstart.data_prep.stage import DataPrepOutputs, run_data_prep

    model = build_tiny_model(root / "model", TinyModelConfig(**PRESETS[preset]), PIXELS, PIXELS)
    cfg = config_from_dict(
        {
            "data": {
                "synthetic": {"train_per_family": 32, "test_per_family": 1, "image_size": 56},
                "min_pixels": PIXELS,
                "max_pixels": PIXELS,
                "sft_holdout_fraction": 0.05,
            }
        }
    )
    run_data_prep(cfg, DataPrepOutputs.under(root), root / "cache")
    return model, root / "sft"


# --------------------------------------------------------------------------- one measurement (worker process)


def model_flops_per_token(model_config: Any, seq_len: float) -> float:
    """Training FLOPs per token of the language model: 6N for the weights + 12 L d s for attention."""
    text = model_config.text_config
    d, layers, ffn = text.hidden_size, text.num_hidden_layers, text.intermediate_size
    kv = d * text.num_key_value_heads // text.num_attention_heads
    per_layer = d * d * 2 + d * kv * 2 + 3 * d * ffn  # q, o; k, v; gate, up, down
    weights = layers * per_layer + d * text.vocab_size  # + lm_head
    return 6 * weights + 12 * layers * d * seq_len


def time_sft(cfg: Any, paths: Any, warmup: int, peak_tflops: float) -> dict[str, Any]:
    """Train `cfg.sft.max_steps` optimizer steps through the stage's own Trainer and time those after `warmup`.

    Shared with bench/gpu_check.py, so the CPU bench and the GPU check measure one code path.
    tokens/s counts non-padding tokens (image tokens included); `seq_len` is per sequence (a
    step holds batch x accumulation sequences). MFU only on CUDA, against `peak_tflops`.
    """
    import torch
    from transformers import TrainerCallback

    from coldstart.sft.monitor import TrackerCallback
    from coldstart.sft.stage import build_trainer

    class StepClock(TrainerCallback):
        """(time, tokens seen) after every optimizer step; and no checkpoints (not what is measured)."""

        def __init__(self) -> None:
            self.marks: list[tuple[float, int]] = []

        def on_step_end(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.marks.append((time.perf_counter(), state.num_input_tokens_seen))
            control.should_save = False

    trainer, _ = build_trainer(cfg, paths, TrackerCallback(None))
    clock = StepClock()
    trainer.add_callback(clock)
    trainer.train()
    if warmup < 1 or len(clock.marks) <= warmup:
        raise ValueError(
            f"{len(clock.marks)} optimizer steps ran with warmup={warmup}: the clock starts at the "
            "end of the last warm-up step, so give warmup >= 1 and more steps than that"
        )
    (t0, n0), (t1, n1) = clock.marks[warmup - 1], clock.marks[-1]
    steps = len(clock.marks) - warmup
    tokens_per_s = (n1 - n0) / (t1 - t0)
    tokens_per_step = (n1 - n0) / steps
    seq_len = tokens_per_step / (
        cfg.sft.per_device_train_batch_size * cfg.sft.gradient_accumulation_steps
    )
    flops_per_token = model_flops_per_token(trainer.model.config, seq_len)
    out: dict[str, Any] = {
        "tokens_per_s": tokens_per_s,
        "step_ms": 1000 * (t1 - t0) / steps,
        "tokens_per_step": tokens_per_step,
        "seq_len": seq_len,
        "timed_steps": steps,
        "model_flops_per_token": flops_per_token,
        "model_tflops_per_s": flops_per_token * tokens_per_s / 1e12,
        "deepspeed": bool(trainer.is_deepspeed_enabled),
    }
    if torch.cuda.is_available():
        out["peak_mem_mib"] = torch.cuda.max_memory_allocated() / 2**20
        out["peak_reserved_mib"] = torch.cuda.max_memory_reserved() / 2**20
        out["mfu"] = out["model_tflops_per_s"] / peak_tflops
    else:
        out["peak_mem_mib"] = (
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        )  # KiB on Linux
    return out


def measure(spec: dict[str, Any]) -> dict[str, float]:
    from coldstart.common.config import config_from_dict
    from coldstart.sft.stage import SFTPaths

    cfg = config_from_dict(
        {
            "output_dir": spec["out"],
            "data": {"min_pixels": PIXELS, "max_pixels": PIXELS},
            "sft": {
                "max_steps": spec["warmup"] + spec["steps"],
                "per_device_train_batch_size": spec["batch_size"],
                "gradient_checkpointing": spec["checkpointing"],
                "bf16": spec["bf16"],
                "logging_steps": 10**6,
                "save_steps": 10**6,
                "learning_rate": 1e-4,
            },
        },
        "bench",
    )
    out = Path(spec["out"])
    data = Path(spec["data"])  # data_prep's sft/, its image store beside it
    paths = SFTPaths(
        Path(spec["model"]), data, out, out / "checkpoints", images=data.parent / "images"
    )
    result = time_sft(cfg, paths, spec["warmup"], spec["peak_tflops"])
    return {k: v for k, v in result.items() if isinstance(v, float)}


def run_worker(spec: dict[str, Any]) -> dict[str, float]:
    """One measurement in a fresh process; returns its JSON (the last line of its stdout)."""
    cmd = [sys.executable, __file__, "--worker", json.dumps(spec)]
    env = {**os.environ, "COLDSTART_LOG_LEVEL": "WARNING"}
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"measurement {spec} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- driver


def run(args: argparse.Namespace) -> dict:
    import torch

    combos = [(b, c) for c in args.checkpointing for b in args.batch_sizes]
    runs: dict[tuple[int, bool], list[dict[str, float]]] = {combo: [] for combo in combos}
    with tempfile.TemporaryDirectory(prefix="sft-bench-") as tmp:
        model, data = build_inputs(Path(tmp), args.preset)
        for _ in range(args.repeats):
            for (
                batch_size,
                checkpointing,
            ) in combos:  # interleaved: drift hits every configuration alike
                spec = {
                    "model": str(model),
                    "data": str(data),
                    "out": str(Path(tmp) / "out"),
                    "batch_size": batch_size,
                    "checkpointing": checkpointing,
                    "bf16": args.bf16,
                    "steps": args.steps,
                    "warmup": args.warmup,
                    "peak_tflops": args.peak_tflops,
                }
                runs[(batch_size, checkpointing)].append(run_worker(spec))
    results = [
        {
            "batch_size": b,
            "gradient_checkpointing": c,
            **{k: statistics.median(r[k] for r in rs) for k in rs[0]},
            "repeats": len(rs),
        }
        for (b, c), rs in runs.items()
    ]
    return {
        "benchmark": "sft_throughput",
        "preset": args.preset,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "bf16": args.bf16,
        "timed_steps": args.steps,
        **software_facts(),
        "results": results,
    }


def print_table(report: dict) -> None:
    print(
        f"\nsft throughput: {report['preset']} model on {report['device']} ({report['torch_threads']} threads, "
        f"bf16={report['bf16']}), median of {report['results'][0]['repeats']} runs of {report['timed_steps']} steps"
    )
    mfu = "mfu" in report["results"][0]
    print(
        f"{'batch':>6} {'grad ckpt':>10} {'tokens/s':>10} {'ms/step':>9} {'tokens/step':>12} {'peak MiB':>9}"
        + (f" {'MFU':>6}" if mfu else "")
    )
    for r in report["results"]:
        print(
            f"{r['batch_size']:>6} {'on' if r['gradient_checkpointing'] else 'off':>10} {r['tokens_per_s']:>10.0f} "
            f"{r['step_ms']:>9.1f} {r['tokens_per_step']:>12.0f} {r['peak_mem_mib']:>9.0f}"
            + (f" {100 * r['mfu']:>5.1f}%" if mfu else "")
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(measure(json.loads(args.worker))))
        return 0
    report = run(args)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
