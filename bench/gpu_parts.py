"""The parts of bench/gpu_check.py, each run in its own process: what they build, train and measure.

Every part goes through the stages' own entry points (data_prep's `run_data_prep`, SFT's
Trainer via `bench/sft_throughput.time_sft`, `run_grpo`, eval's `run_eval`) with configs from
`configs/`, so the check measures the code the pipeline runs. Two shapes: the paper's
Qwen2.5-VL-3B run (GPU) and toy sizes with the same structure (`--dry-run`, CPU, seconds).

A part records what it has as it goes (`Recorder`): a part cut off by its time box keeps the
numbers it already had.
"""

from __future__ import annotations

import json
import logging
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("gpu_check")

# Packages the GPU machine lacks and bench/gpu_wheels.txt does not carry. The dry run hides them
# (`hide_packages`) so a part that needs one fails here, not on the GPU; optional imports (DeepSpeed
# tries mlflow) see them absent, as there.
NOT_ON_DEVICE = ("mlflow", "kfp", "vllm", "trl", "moto")

# Qwen2.5-VL-3B-Instruct's published config.json (sizes only; token ids come from our tokenizer).
QWEN25_VL_3B_TEXT: dict[str, Any] = {
    "vocab_size": 151936,
    "hidden_size": 2048,
    "intermediate_size": 11008,
    "num_hidden_layers": 36,
    "num_attention_heads": 16,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128000,
    "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
    "tie_word_embeddings": True,
}
QWEN25_VL_3B_VISION: dict[str, Any] = {
    "depth": 32,
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "out_hidden_size": 2048,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
    "tokens_per_second": 2,
}


@dataclass(frozen=True)
class Shape:
    """Sizes of one check: the model, the images and the paper's sequence lengths."""

    text: dict[str, Any]
    vision: dict[str, Any]
    image_side: int  # square images, pixels per side (1092^2 = 1.19 MP, 1521 image tokens)
    min_pixels: int
    max_pixels: int
    sft_seq_len: int  # sft.max_length; SFT rows are written longer and truncated to it
    sft_accumulation: int  # micro-batches (of 1 sequence) per optimizer step
    sft_warmup: int  # untimed optimizer steps
    sft_steps: int  # timed optimizer steps
    sft_loader_workers: int  # collator processes: 1.2-MP images are preprocessed on the CPU
    grpo_prompts: int
    grpo_group: int
    grpo_completion: int  # max new tokens (a random model rarely stops early)
    grpo_steps: int  # the first is warm-up
    smoke_overrides: list[str] = field(default_factory=list)


PAPER_3B = Shape(
    text=QWEN25_VL_3B_TEXT,
    vision=QWEN25_VL_3B_VISION,
    image_side=1092,
    min_pixels=262_144,
    max_pixels=1_204_224,
    sft_seq_len=8192,
    sft_accumulation=8,
    sft_warmup=1,
    sft_steps=3,
    sft_loader_workers=4,
    grpo_prompts=2,
    grpo_group=4,
    grpo_completion=1024,
    grpo_steps=2,
)
DRY_RUN = Shape(
    text={
        **QWEN25_VL_3B_TEXT,
        "vocab_size": 2048,  # above the tokenizer's 1024, as 151936 is: sampled ids it lacks
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
    },
    vision={
        **QWEN25_VL_3B_VISION,
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "out_hidden_size": 64,
        "fullatt_block_indexes": [1],
    },
    image_side=56,
    min_pixels=3136,
    max_pixels=3136,
    sft_seq_len=128,
    sft_accumulation=2,
    sft_warmup=1,
    sft_steps=2,
    sft_loader_workers=1,
    grpo_prompts=2,
    grpo_group=2,
    grpo_completion=8,
    grpo_steps=2,
)
SHAPES = {"3b": PAPER_3B, "dry-run": DRY_RUN}


@dataclass(frozen=True)
class Context:
    """What the driver hands every part (as JSON)."""

    work: str  # scratch folder shared by the parts (the 3B model and data live here)
    shape: str  # key of SHAPES
    peak_tflops: float
    overrides: list[str] = field(default_factory=list)  # --set KEY=VALUE, applied last

    @property
    def dir(self) -> Path:
        return Path(self.work)

    @property
    def sizes(self) -> Shape:
        return SHAPES[self.shape]


class Recorder:
    """A part's result file, rewritten after every `put`: what is there survives a kill."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {}

    def put(self, key: str, value: Any) -> None:
        self.data[key] = value
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        tmp.replace(self.path)


# --------------------------------------------------------------------------- helpers


def cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def reset_peak() -> None:
    import torch

    if cuda():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_mib() -> float | None:
    """Torch's peak allocated GPU memory since the last `reset_peak` (None on CPU)."""
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if cuda() else None


def timed(rec: Recorder, name: str, fn: Callable[[], Any]) -> Any:
    """Run one stage of a part, recording its seconds and peak memory, or its error, under `name`."""
    reset_peak()
    start = time.perf_counter()
    try:
        value = fn()
    except Exception as exc:
        rec.put(name, {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:2000]})
        raise
    entry: dict[str, Any] = {"status": "ok", "seconds": round(time.perf_counter() - start, 2)}
    entry["peak_mem_mib"] = peak_mib()
    if isinstance(value, dict):
        entry["metrics"] = {k: v for k, v in value.items() if isinstance(v, (int, float, str))}
    rec.put(name, entry)
    return value


def paper_config(ctx: Context, overrides: list[str]):
    """configs/qwen2.5-vl-3b.yaml (the paper's recipe) with the check's sizes and local paths."""
    from coldstart.common.config import load_config

    shape = ctx.sizes
    base = [
        f"output_dir={ctx.dir / 'outputs'}",
        "model.attn_implementation=sdpa",  # flash-attn is not on the GPU machine; sdpa uses its kernels
        f"data.min_pixels={shape.min_pixels}",
        f"data.max_pixels={shape.max_pixels}",
        f"grpo.min_pixels={shape.min_pixels}",
        f"grpo.max_pixels={shape.max_pixels}",
    ]
    return load_config(ROOT / "configs" / "qwen2.5-vl-3b.yaml", base + overrides + ctx.overrides)


# --------------------------------------------------------------------------- setup: model + data


def model_config(shape: Shape, tok: Any) -> Any:
    """A Qwen2.5-VL config of `shape`'s sizes whose special-token ids are `tok`'s."""
    from transformers import Qwen2_5_VLConfig

    ids = tok.convert_tokens_to_ids
    special = {
        "bos_token_id": ids("<|endoftext|>"),
        "eos_token_id": ids("<|im_end|>"),
        "pad_token_id": ids("<|endoftext|>"),
    }
    return Qwen2_5_VLConfig(
        text_config={**shape.text, **special},
        vision_config=shape.vision,
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=shape.text["tie_word_embeddings"],
        **special,
    )


def build_model(ctx: Context) -> dict[str, Any]:
    """Randomly initialise the model on the device (fast at 3B), save it in bf16 as a model dir."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from coldstart.common.config import TinyModelConfig
    from coldstart.common.tiny_model import build_tokenizer, save_model_dir

    shape = ctx.sizes
    tok = build_tokenizer(TinyModelConfig().vocab_size)
    torch.manual_seed(0)
    with torch.device("cuda" if cuda() else "cpu"):
        model = Qwen2_5_VLForConditionalGeneration(model_config(shape, tok))
    model.to(torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    vision = sum(p.numel() for n, p in model.named_parameters() if ".visual." in f".{n}")
    save_model_dir(model, tok, ctx.dir / "model", shape.min_pixels, shape.max_pixels)
    return {"params": params, "vision_params": vision, "tokenizer_size": len(tok)}


def write_raw_rows(ctx: Context) -> dict[str, int]:
    """SFT and RL rows as a user's jsonl files: random images of the shape's size, long solutions.

    The solution is filler text from the tokenizer's corpus, long enough that every row is cut
    to `sft.max_length` (the paper's 8192 at 3B): each SFT sequence then has exactly that length.
    """
    from PIL import Image

    from coldstart.common.corpus import corpus_lines

    shape, raw = ctx.sizes, ctx.dir / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    side = shape.image_side
    images = []
    for i in range(4):
        Image.frombytes("RGB", (side, side), rng.randbytes(side * side * 3)).save(
            raw / f"img{i}.png"
        )
        images.append(f"img{i}.png")
    filler = " ".join(corpus_lines())
    # 6 characters per token of max_length: byte-level BPE on its own corpus takes fewer per token.
    solution = (filler + " ") * (1 + 6 * shape.sft_seq_len // len(filler)) + "\\boxed{7}"
    # + 1 held out: an empty validation split is written but cannot be read back (datasets 5.2).
    sft_rows = shape.sft_accumulation * (shape.sft_warmup + shape.sft_steps) + 1
    rl_rows = shape.grpo_prompts * shape.grpo_steps
    for name, count, with_solution in (("sft", sft_rows, True), ("rl", rl_rows, False)):
        with (raw / f"{name}.jsonl").open("w") as f:
            for i in range(count):
                row = {
                    "id": f"{name}-{i}",
                    "images": [images[i % len(images)]],
                    "problem": f"Problem {i}: how many red circles are in the image?",
                    "answer": "7",
                }
                if with_solution:
                    row["solution"] = solution
                f.write(json.dumps(row) + "\n")
    return {"sft_rows": sft_rows, "rl_rows": rl_rows}


def prepare_data(ctx: Context) -> dict[str, float]:
    """data_prep over the raw files: validated, resized, written as the SFT and RL stages read them."""
    from coldstart.data_prep.stage import DataPrepOutputs, run_data_prep

    raw = ctx.dir / "raw"
    cfg = paper_config(
        ctx,
        [
            "data.source=files",
            f"data.sft_files=[{{uri: {raw / 'sft.jsonl'}}}]",
            f"data.rl_files=[{{uri: {raw / 'rl.jsonl'}}}]",
            "data.eval_files=[]",
            "data.sft_holdout_fraction=0.01",  # one row
        ],
    )
    outs = DataPrepOutputs.under(ctx.dir / "data")
    return run_data_prep(cfg, outs, ctx.dir / "cache")


def part_setup(ctx: Context, rec: Recorder) -> None:
    timed(rec, "model", lambda: build_model(ctx))
    timed(rec, "raw_rows", lambda: write_raw_rows(ctx))
    timed(rec, "data_prep", lambda: prepare_data(ctx))


# --------------------------------------------------------------------------- SFT (plain, ZeRO-2)


def sft_config(ctx: Context, deepspeed: str):
    shape = ctx.sizes
    return paper_config(
        ctx,
        [
            f"sft.deepspeed={deepspeed}",
            f"sft.max_length={shape.sft_seq_len}",
            "sft.overlong=truncate",
            "sft.per_device_train_batch_size=1",
            f"sft.gradient_accumulation_steps={shape.sft_accumulation}",
            "sft.global_batch_size=null",
            f"sft.max_steps={shape.sft_warmup + shape.sft_steps}",
            f"sft.dataloader_num_workers={shape.sft_loader_workers}",
            "sft.logging_steps=1000000",
            "sft.save_steps=1000000",
        ],
    )


def run_sft_timing(ctx: Context, rec: Recorder, deepspeed: str) -> None:
    from bench.sft_throughput import time_sft
    from coldstart.data_prep.stage import DataPrepOutputs
    from coldstart.sft.stage import SFTPaths

    shape = ctx.sizes
    cfg = sft_config(ctx, deepspeed)
    rec.put(
        "settings",
        {
            "deepspeed": deepspeed,
            "seq_len": shape.sft_seq_len,
            "gradient_accumulation_steps": shape.sft_accumulation,
            "warmup_steps": shape.sft_warmup,
            "timed_steps": shape.sft_steps,
            "bf16": cfg.sft.bf16,
            "gradient_checkpointing": cfg.sft.gradient_checkpointing,
            "freeze_vision_tower": cfg.sft.freeze_vision_tower,
            "max_pixels": cfg.data.max_pixels,
            "dataloader_num_workers": cfg.sft.dataloader_num_workers,
            "overrides": ctx.overrides,
        },
    )
    out = ctx.dir / f"sft-{deepspeed}"
    data = DataPrepOutputs.under(ctx.dir / "data")
    paths = SFTPaths(ctx.dir / "model", data.sft, out, out / "checkpoints", images=data.images)
    result = timed(rec, "train", lambda: time_sft(cfg, paths, shape.sft_warmup, ctx.peak_tflops))
    rec.put("result", result)
    if cuda() and deepspeed != "none" and not result["deepspeed"]:
        raise RuntimeError(f"sft.deepspeed={deepspeed} on CUDA, yet the Trainer ran without it")


def part_sft(ctx: Context, rec: Recorder) -> None:
    run_sft_timing(ctx, rec, "none")


def part_sft_zero2(ctx: Context, rec: Recorder) -> None:
    # One process as `torchrun --nproc_per_node 1` starts it (the cluster's launcher), so
    # DeepSpeed finds its process group; the smoke part runs SFT ZeRO-2 without these.
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    run_sft_timing(ctx, rec, "zero2")


# --------------------------------------------------------------------------- GRPO


def part_grpo(ctx: Context, rec: Recorder) -> None:
    from coldstart.grpo.stage import GRPOPaths, run_grpo

    shape = ctx.sizes
    cfg = paper_config(
        ctx,
        [
            "grpo.rollout_backend=hf",
            "grpo.deepspeed=none",
            f"grpo.rollout_batch_size={shape.grpo_prompts}",
            f"grpo.update_batch_size={shape.grpo_prompts}",
            f"grpo.num_generations={shape.grpo_group}",
            f"grpo.generation_batch_size={shape.grpo_prompts}",
            f"grpo.micro_batch_size={shape.grpo_group}",
            f"grpo.max_completion_length={shape.grpo_completion}",
            f"grpo.total_steps={shape.grpo_steps}",
            "grpo.save_steps=1000000",
            "grpo.gradient_checkpointing=true",
        ],
    )
    completions = shape.grpo_prompts * shape.grpo_group
    rec.put("settings", {"prompts": shape.grpo_prompts, "group": shape.grpo_group,
                         "max_new_tokens": shape.grpo_completion, "steps": shape.grpo_steps,
                         "kl_coef": cfg.grpo.kl_coef, "backend": "hf", "deepspeed": "none"})  # fmt: skip
    steps: list[dict[str, float]] = []

    def per_step(metrics: dict[str, float], step: int) -> None:
        if "grpo/time/step_s" not in metrics:  # the data set's counts, logged once at step 0
            return
        tokens = metrics["grpo/completions/mean_length"] * completions
        steps.append({
            "step": step,
            "rollout_s": metrics["grpo/time/rollout_s"],
            "update_s": metrics["grpo/time/update_s"],
            "step_s": metrics["grpo/time/step_s"],
            "completion_tokens": tokens,
            "rollout_tokens_per_s": tokens / metrics["grpo/time/rollout_s"],
            "peak_mem_mib": peak_mib(),
        })  # fmt: skip
        rec.put("steps", steps)

    # The stage writes a checkpoint at its last step (3B: weights + AdamW state, ~22 GB) into
    # <scratch>/checkpoint-staging, publishes it to the root, then deletes the staging copy. The
    # root is that same folder: publishing copies nothing, so the disk (64 GB there) holds it once
    # and only for a moment (this check never resumes). Its write time is part of run_grpo's.
    scratch = ctx.dir / "grpo-scratch"
    paths = GRPOPaths(
        init_model=ctx.dir / "model",
        data=ctx.dir / "data" / "rl",
        output=ctx.dir / "grpo-out",
        checkpoint_root=str(scratch / "checkpoint-staging"),
        scratch=scratch,
    )
    timed(rec, "run_grpo", lambda: run_grpo(cfg, paths, log_fn=per_step)[0])
    rec.put("result", {**steps[-1], "measured_step": steps[-1]["step"]})


# --------------------------------------------------------------------------- smoke: the tiny pipeline


def part_smoke(ctx: Context, rec: Recorder) -> None:
    """data_prep -> SFT -> GRPO -> eval, then SFT and GRPO under ZeRO-2: the tiny config, a few steps.

    A stage that fails is recorded and the next runs from the last model that exists; the part
    fails at the end if any stage did. On CUDA each stage's peak GPU memory shows that it ran there.
    """
    from coldstart.common.config import load_config
    from coldstart.common.models import resolve_model_dir
    from coldstart.data_prep.stage import DataPrepOutputs, run_data_prep
    from coldstart.eval.benchmarks import EvalData
    from coldstart.eval.stage import EvalOutputs, EvalPaths, run_eval, write_outputs
    from coldstart.grpo.stage import GRPOPaths, run_grpo
    from coldstart.sft.stage import SFTPaths, run_sft

    work = ctx.dir / "smoke"
    bf16 = str(cuda()).lower()
    cfg = load_config(ROOT / "configs" / "tiny.yaml", [
        f"output_dir={work}", "data.synthetic.train_per_family=4", "data.synthetic.test_per_family=1",
        "sft.max_steps=3", f"sft.bf16={bf16}", "sft.gradient_checkpointing=true", "sft.save_steps=1000",
        "grpo.total_steps=2", "grpo.rollout_batch_size=2", "grpo.update_batch_size=2",
        "grpo.num_generations=2", "grpo.generation_batch_size=2", "grpo.max_completion_length=16",
        f"grpo.bf16={bf16}", "eval.max_new_tokens=16", *ctx.sizes.smoke_overrides,
    ])  # fmt: skip
    data = DataPrepOutputs.under(work / "data")
    failed: list[str] = []

    def stage(name: str, fn: Callable[[], Any]) -> Any:
        try:
            return timed(rec, name, fn)
        except Exception:
            log.exception("smoke: %s failed", name)
            failed.append(name)
            return None

    def sft(name: str, deepspeed: str) -> Path | None:
        scfg = cfg.model_copy(update={"sft": cfg.sft.model_copy(update={"deepspeed": deepspeed})})
        out = work / name
        return (
            out
            if stage(
                name,
                lambda: run_sft(
                    scfg,
                    SFTPaths(base, data.sft, out, out / "checkpoints", images=data.images),
                    None,
                ),
            )
            else None
        )

    def grpo(name: str, deepspeed: str, start: Path) -> Path | None:
        gcfg = cfg.model_copy(update={"grpo": cfg.grpo.model_copy(update={"deepspeed": deepspeed})})
        paths = GRPOPaths(
            start, data.rl, work / name, str(work / f"{name}-ckpt"), work / "scratch", data.images
        )
        return paths.output if stage(name, lambda: run_grpo(gcfg, paths)[0]) else None

    def evaluate(models: dict[str, Path]) -> dict[str, float]:
        outs = EvalOutputs.in_folder(work / "eval")
        run = run_eval(
            cfg,
            {k: str(v) for k, v in models.items()},
            EvalData(data.eval, data.images),
            work / "cache",
            EvalPaths(work / "eval-work"),
            outs.predictions,
        )
        write_outputs(run, outs)
        return run.metrics()

    stage("data_prep", lambda: run_data_prep(cfg, data, work / "cache"))
    base = resolve_model_dir(cfg.model, work / "cache", cfg.data.min_pixels, cfg.data.max_pixels)
    sft_model = sft("sft", "none") or base
    models = {"SFT": sft_model}
    rl_model = grpo("grpo", "none", sft_model)
    if rl_model is not None:
        models["SFT+RL"] = rl_model
    stage("eval", lambda: evaluate(models))
    # DeepSpeed last: a process-group set-up that goes wrong cannot take the stages above with it.
    sft("sft_zero2", "zero2")
    grpo("grpo_zero2", "zero2", sft_model)
    if failed:
        raise RuntimeError(f"smoke stages failed: {failed}")


# In running order: the 3B numbers first (the reason for the run), the smoke test with what is left.
# What each part leaves in the work folder that no later part reads (deleted after it).
LEFTOVERS: dict[str, tuple[str, ...]] = {
    "sft": ("sft-none",),
    "sft_zero2": ("sft-zero2",),
    "grpo": ("grpo-out", "grpo-scratch"),
}

PARTS: dict[str, Callable[[Context, Recorder], None]] = {
    "setup": part_setup,
    "sft": part_sft,
    "sft_zero2": part_sft_zero2,
    "grpo": part_grpo,
    "smoke": part_smoke,
}


def hide_packages(names: tuple[str, ...]) -> None:
    """Make `names` absent for this process: `import` raises ModuleNotFoundError and
    `importlib.util.find_spec` returns None, as where they are not installed."""
    for top in names:
        sys.modules[top] = None  # type: ignore[assignment]


def run_part(name: str, ctx_json: str, result_path: Path) -> int:
    """Worker entry: run one part, record the facts of this process, exit non-zero on failure."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", force=True
    )
    ctx = Context(**json.loads(ctx_json))
    if ctx.shape == "dry-run":
        hide_packages(NOT_ON_DEVICE)
    rec = Recorder(result_path)
    try:
        PARTS[name](ctx, rec)
        return 0
    finally:
        rec.put("process", process_facts())


def process_facts() -> dict[str, Any]:
    """Versions that ran, the device, and any package loaded that the GPU machine lacks."""
    import importlib.metadata as md

    import torch

    versions = {}
    for pkg in ("torch", "transformers", "deepspeed", "datasets", "accelerate", "pydantic"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    return {
        "device": torch.cuda.get_device_name() if cuda() else "cpu",
        "versions": versions,
        "imported_not_on_device": [m for m in NOT_ON_DEVICE if sys.modules.get(m) is not None],
    }
