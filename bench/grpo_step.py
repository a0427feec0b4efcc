"""Time one GRPO step (rollout + update) of ours against TRL's GRPOTrainer, interleaved.

Same tiny Qwen2.5-VL, same prompts (chat template + system prompt + one image), same group
size, sampling settings and completion budget, same reward functions, same optimizer and loss
(token-mean, clip 0.2 / 0.3, dual-clip 3, no KL), one optimizer update per rollout batch, CPU.

The two run in one process, interleaved step by step: TRL trains with a callback whose
`on_step_end` runs one of our steps, so machine load hits both alike. A TRL step is the wall
time between two of its `on_step_end` calls minus our step inside the callback: everything
TRL does per step (data loading, prompt processing, generation, rewards, loss, backward,
optimizer, logging) counts. The first step of each is warm-up and is not counted.

    python bench/grpo_step.py            # 10 measured steps
    python bench/grpo_step.py --quick    # 3 (CI)

Prints a table and the ratio (TRL time / our time, > 1 means we are faster), and writes JSON
to bench/results/grpo_step.json (grpo_step_quick.json with --quick). TRL is a dev dependency used here and in tests only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import datasets
import torch

ROOT = Path(__file__).resolve().parents[1]


def build_assets(workdir: Path) -> tuple[Path, Path]:
    """The tiny model and the RL set, as data_prep builds them from the tiny config."""
    from coldstart.common.config import load_config
    from coldstart.common.tiny_model import build_tiny_model
    from coldstart.data_prep.stage import DataPrepOutputs, run_data_prep

    cfg = load_config(
        ROOT / "configs" / "tiny.yaml",
        ["data.synthetic.train_per_family=16", "data.synthetic.test_per_family=2"],
    )
    run_data_prep(cfg, DataPrepOutputs.under(workdir), workdir / "cache")
    build_tiny_model(workdir / "model", cfg.model.tiny, cfg.data.min_pixels, cfg.data.max_pixels)
    return workdir / "model", workdir / "rl"


def our_run(args, model_dir: Path, rl_dir: Path):
    from coldstart.common.config import load_config
    from coldstart.common.generation import make_backend
    from coldstart.common.models import load_model, load_processor
    from coldstart.common.rewards import REWARD_FUNCS
    from coldstart.grpo.data import load_rl_dataset
    from coldstart.grpo.stage import build_engine, prepare_policy
    from coldstart.grpo.trainer import setup_run

    cfg = load_config(ROOT / "configs" / "tiny.yaml", [
        f"grpo.rollout_batch_size={args.prompts}", f"grpo.update_batch_size={args.prompts}",
        f"grpo.num_generations={args.group}", f"grpo.max_completion_length={args.tokens}",
        f"grpo.micro_batch_size={args.prompts * args.group}", f"grpo.generation_batch_size={args.prompts}",
        "grpo.temperature=1.0", "grpo.top_p=1.0", "grpo.kl_coef=0", f"grpo.learning_rate={args.lr}",
        "grpo.loss_agg_mode=token-mean", "grpo.clip_ratio_low=0.2", "grpo.clip_ratio_high=0.3",
        "grpo.clip_ratio_dual=3.0", "grpo.weight_decay=0.0", "grpo.max_grad_norm=1.0",
    ]).grpo  # fmt: skip
    processor = load_processor(model_dir, cfg.min_pixels, cfg.max_pixels)
    policy, ref = prepare_policy(load_model(model_dir), cfg)
    backend = make_backend(
        "hf", policy, processor, cfg.system_prompt, batch_size=cfg.generation_batch_size
    )
    run = setup_run(cfg, build_engine(policy, cfg, reference=ref), processor, load_rl_dataset(rl_dir, rl_dir.parent / "images"),
                    backend=backend, reward_funcs=REWARD_FUNCS, reward_weights={"accuracy": 1.0})  # fmt: skip
    return run


def trl_dataset(rl_dir: Path, system_prompt: str) -> datasets.Dataset:
    """TRL's multimodal layout: conversational `prompt`, one `image`, extra columns for rewards."""
    from coldstart.common.image_store import ImageStore
    from coldstart.common.prompts import prompt_messages

    ds = datasets.load_from_disk(str(rl_dir))
    store = ImageStore(rl_dir.parent / "images")  # data_prep's rows hold keys into it
    return ds.map(
        lambda row: {
            "prompt": prompt_messages(row["problem"], system_prompt, 1),
            "image": store.decoded(row["images"][0]),
        },
        remove_columns=["images", "solution"],
    )


class Timer:
    """Wraps an instance method and adds up its wall time since the last `take()`."""

    def __init__(self, obj, name: str) -> None:
        self.total = 0.0
        original = getattr(obj, name)

        def timed(*a, **k):
            t = time.perf_counter()
            try:
                return original(*a, **k)
            finally:
                self.total += time.perf_counter() - t

        setattr(obj, name, timed)

    def take(self) -> float:
        value, self.total = self.total, 0.0
        return value


def run_interleaved(args, model_dir: Path, rl_dir: Path) -> dict:
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from coldstart.common.models import load_processor
    from coldstart.common.rewards import accuracy_reward, format_reward
    from coldstart.grpo.trainer import grpo_step

    torch.manual_seed(args.seed)
    ours = our_run(args, model_dir, rl_dir)
    steps = args.steps + 1  # + warm-up
    trl_args = GRPOConfig(
        output_dir=str(args.workdir / "trl"), per_device_train_batch_size=args.prompts * args.group,
        num_generations=args.group, max_completion_length=args.tokens, temperature=1.0, top_p=1.0, top_k=0,
        learning_rate=args.lr, lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=1.0, beta=0.0,
        loss_type="dapo", epsilon=0.2, epsilon_high=0.3, delta=3.0, scale_rewards="group", num_iterations=1,
        reward_weights=[1.0, 0.0], use_vllm=False, use_cpu=True, bf16=False, gradient_checkpointing=False,
        max_steps=steps, logging_steps=1, report_to=[], save_strategy="no", seed=args.seed,
        dataloader_num_workers=0, disable_tqdm=True,
    )  # fmt: skip
    trainer = GRPOTrainer(
        model=str(model_dir), reward_funcs=[accuracy_reward, format_reward], args=trl_args,
        train_dataset=trl_dataset(rl_dir, ours.cfg.system_prompt),
        processing_class=load_processor(model_dir, ours.cfg.min_pixels, ours.cfg.max_pixels),
    )  # fmt: skip
    trl_rollout = Timer(trainer, "_generate_and_score_completions")
    trl_generate = Timer(trainer, "_generate")
    rows: list[dict] = []

    class Interleave(TrainerCallback):
        def __init__(self) -> None:
            self.last = None
            self.trl_lengths: list[float] = []

        def on_log(self, targs, state, control, logs=None, **k):
            if logs and "completions/mean_length" in logs:
                self.trl_lengths.append(float(logs["completions/mean_length"]))

        def on_train_begin(self, *a, **k):
            self.last = time.perf_counter()

        def on_step_end(self, targs, state, control, **k):
            trl_step = time.perf_counter() - self.last
            trl_roll, trl_gen = trl_rollout.take(), trl_generate.take()
            metrics, _ = grpo_step(ours, state.global_step - 1)
            rows.append({
                "step": state.global_step,
                "trl_step_s": trl_step, "trl_rollout_s": trl_roll, "trl_generate_s": trl_gen,
                "trl_update_s": trl_step - trl_roll,
                "ours_step_s": metrics["time/step_s"], "ours_rollout_s": metrics["time/rollout_s"],
                "ours_reward_s": metrics["time/reward_s"], "ours_update_s": metrics["time/update_s"],
                "ours_mean_length": metrics["completions/mean_length"],
            })  # fmt: skip
            self.last = time.perf_counter()

    interleave = Interleave()
    trainer.add_callback(interleave)
    trainer.train()
    for row, length in zip(rows, interleave.trl_lengths, strict=False):
        row["trl_mean_length"] = length
    return summarize(args, rows[1:])


def summarize(args, rows: list[dict]) -> dict:
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0] if k != "step"}
    return {
        "settings": {"prompts": args.prompts, "group": args.group, "max_new_tokens": args.tokens,
                     "measured_steps": len(rows), "threads": torch.get_num_threads(), "device": "cpu"},
        "median": med,
        "speedup_trl_over_ours": med["trl_step_s"] / med["ours_step_s"],
        "steps": rows,
    }  # fmt: skip


def print_report(result: dict) -> None:
    med = result["median"]
    s = result["settings"]
    print(f"\nGRPO step, {s['prompts']} prompts x {s['group']} completions, <= {s['max_new_tokens']} new tokens, "
          f"{s['measured_steps']} interleaved steps, {s['threads']} thread(s); medians in seconds\n")  # fmt: skip
    print(f"{'':24s}{'ours':>10s}{'TRL':>10s}")
    print(f"{'step (rollout + update)':24s}{med['ours_step_s']:10.3f}{med['trl_step_s']:10.3f}")
    print(
        f"{'  rollout (gen + reward)':24s}{med['ours_rollout_s'] + med['ours_reward_s']:10.3f}{med['trl_rollout_s']:10.3f}"
    )
    print(f"{'    generate':24s}{med['ours_rollout_s']:10.3f}{med['trl_generate_s']:10.3f}")
    print(f"{'  update':24s}{med['ours_update_s']:10.3f}{med['trl_update_s']:10.3f}")
    print(
        f"{'mean completion length':24s}{med['ours_mean_length']:10.1f}{med.get('trl_mean_length', float('nan')):10.1f}"
    )
    print(f"\nratio TRL / ours = {result['speedup_trl_over_ours']:.2f} (> 1: ours is faster)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--steps", type=int, default=10, help="measured steps (one more is warm-up)"
    )
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=32, help="max new tokens per completion")
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="3 measured steps (CI)")
    parser.add_argument("--model", type=Path, help="model dir (default: build the tiny preset)")
    parser.add_argument(
        "--data", type=Path, help="RL dataset dir (default: build the synthetic set)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    if args.quick:
        args.steps = 3
    with tempfile.TemporaryDirectory() as tmp:
        args.workdir = Path(tmp)
        model_dir, rl_dir = (
            (args.model, args.data) if args.model and args.data else build_assets(args.workdir)
        )
        result = run_interleaved(args, model_dir, rl_dir)
    print_report(result)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / ("grpo_step_quick.json" if args.quick else "grpo_step.json")
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
