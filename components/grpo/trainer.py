"""The GRPO loop, one rollout step at a time, read top to bottom:

    for each step (grpo_step):
        rollout     sample G completions for each of B prompts            (rollout.py)
        rewards     score each completion's response against the answer  (common/rewards.py)
        advantages  normalise rewards within each prompt's group          (advantages.py)
        log-probs   reference model (KL) and rollout policy (off-policy)  (logprobs.py)
        update      mini-batches x micro-batches: clipped surrogate + KL, (loss.py)
                    accumulate, clip the gradient norm, optimizer step
    then, in train():
        log         metrics per step (grpo/...)
        checkpoint  weights, optimizer, scheduler, RNG, step, history     (checkpointing.py)

When each rollout batch gets exactly one optimizer update, the policy that sampled is the
policy being updated: its log-probs are the current ones, detached (ratio = 1), and the extra
no-grad forward is skipped. With several updates per rollout they are computed up front.

The policy trains through an engine (engine.py): our data parallelism by default
(engine_plain.py), DeepSpeed ZeRO-2/3 with `grpo.deepspeed` (engine_zero.py). The engine owns
the reference model and everything about ranks: this rank's share of the prompts, the loss
normalisers summed over ranks, the metrics gathered from them, the weight push to the sampler.
Over-long prompts were dropped when the set was loaded (data.py), so every rank rolls out as
many prompts as every other and the step below holds no case for an uneven or empty share.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

from coldstart.common.config import GRPOConfig
from coldstart.common.generation import SamplingConfig
from coldstart.common.rewards import CHECK_METRICS, check_metrics_since, combine_rewards
from coldstart.common.verifier import counts as answer_check_counts
from coldstart.grpo.advantages import group_advantages
from coldstart.grpo.checkpointing import Checkpointer
from coldstart.grpo.data import PromptOrder, reward_columns, to_prompts
from coldstart.grpo.engine import PolicyEngine
from coldstart.grpo.logprobs import batched_logprobs, completion_logprobs
from coldstart.grpo.loss import agg_loss, grpo_token_loss, masked_mean
from coldstart.grpo.optimizer import updates_per_rollout
from coldstart.grpo.rollout import Rollout, RolloutBatch, generate_rollout

log = logging.getLogger(__name__)

RewardFunc = Callable[..., list[float]]
MetricsFn = Callable[[dict[str, float], int], None]


# --------------------------------------------------------------------------- rewards


def score_completions(
    reward_funcs: Mapping[str, RewardFunc],
    weights: Mapping[str, float],
    texts: Sequence[str],
    columns: Mapping[str, list[Any]],
) -> tuple[torch.Tensor, dict[str, list[float]]]:
    """Run every reward function (all are logged), combine the weighted ones: (N,) and per-function lists."""
    per_func = {
        name: [float(r) for r in fn(list(texts), **columns)] for name, fn in reward_funcs.items()
    }
    rewards = torch.tensor(
        combine_rewards({n: per_func[n] for n in weights}, weights), dtype=torch.float32
    )
    return rewards, per_func


def reward_metrics(
    rewards: Sequence[float], per_func: Mapping[str, Sequence[float]]
) -> dict[str, float]:
    def mean_std(values: Sequence[float]) -> tuple[float, float]:
        t = torch.tensor(values, dtype=torch.float32)
        return t.mean().item(), (t.std().item() if len(t) > 1 else 0.0)

    metrics = dict(zip(("reward/mean", "reward/std"), mean_std(rewards), strict=True))
    for name, values in per_func.items():
        metrics[f"rewards/{name}/mean"], metrics[f"rewards/{name}/std"] = mean_std(values)
    return metrics


def completion_metrics(rollout: Rollout) -> dict[str, float]:
    """Lengths and finish reasons of the completions."""
    lengths = rollout.batch.completion_mask.sum(-1)
    flat = [c for group in rollout.completions for c in group]
    return {
        "completions/mean_length": lengths.mean().item(),
        "completions/max_length": lengths.max().item(),
        "completions/min_length": lengths.min().item(),
        "completions/clipped_ratio": sum(c.finish_reason == "length" for c in flat) / len(flat),
        "completions/error_ratio": sum(c.finish_reason == "error" for c in flat) / len(flat),
    }


SUMMED = ("tokens_per_s", *CHECK_METRICS)


def combine_shares(shares: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """One step's metrics from every rank's share (all hold as many sequences), as one process
    holding the whole batch would log them: rewards pooled; counts and rates summed; extremes
    kept (times: the slowest share's); every other metric averaged."""
    rewards = [r for s in shares for r in s["rewards"]]
    per_func = {
        name: [r for s in shares for r in s["per_func"][name]] for name in shares[0]["per_func"]
    }
    metrics = reward_metrics(rewards, per_func)
    for key in shares[0]["metrics"]:
        values = [float(s["metrics"][key]) for s in shares]
        if key in SUMMED:
            metrics[key] = sum(values)
        elif key.endswith("max_length") or key.startswith("time/"):
            metrics[key] = max(values)
        elif key.endswith("min_length"):
            metrics[key] = min(values)
        else:
            metrics[key] = sum(values) / len(values)
    return metrics


# --------------------------------------------------------------------------- update


def micro_batch_loss(
    policy: torch.nn.Module, micro: RolloutBatch, cfg: GRPOConfig, norms: dict[str, float]
) -> tuple[torch.Tensor, dict[str, float]]:
    """Forward one micro-batch and return its share of the mini-batch loss, and metrics."""
    mask = micro.completion_mask
    logp, entropy = completion_logprobs(
        policy, micro, cfg.temperature, compute_entropy=cfg.compute_entropy
    )
    old_logp = micro.old_logps if micro.old_logps is not None else logp.detach()
    if micro.advantages is None:
        raise ValueError("a micro-batch to train on needs its advantages (grpo_step sets them)")
    loss_mat, metrics = grpo_token_loss(
        logp, old_logp, micro.advantages, mask,
        clip_low=cfg.clip_ratio_low, clip_high=cfg.clip_ratio_high, clip_dual=cfg.clip_ratio_dual,
        ref_logp=micro.ref_logps, kl_coef=cfg.kl_coef, kl_estimator=cfg.kl_estimator,
    )  # fmt: skip
    loss = agg_loss(loss_mat, mask, cfg.loss_agg_mode, **norms)
    if entropy is not None:
        metrics["entropy"] = masked_mean(entropy, mask).item()
    return loss, metrics


def update_policy(engine: PolicyEngine, batch: RolloutBatch, cfg: GRPOConfig) -> dict[str, float]:
    """Optimizer updates on one rollout batch: mini-batches of update_batch_size prompts (x G
    sequences), each accumulated over micro-batches of micro_batch_size sequences.

    `batch` may be one share of the rollout batch (the engine's), holding the same share of
    every mini-batch; the loss normalisers are summed over the shares (`engine.global_sum`) and
    so are the gradients (`engine.step`), so each step is that of the whole mini-batch.
    Returns the loss terms (token-weighted means over every share's micro-batches), the loss
    (summed over shares, averaged over updates), the grad norm (averaged) and the learning rate.
    """
    seqs_per_update = len(batch) * cfg.update_batch_size // cfg.rollout_batch_size
    per_epoch = math.ceil(cfg.rollout_batch_size / cfg.update_batch_size)
    starts = [i * seqs_per_update for _ in range(cfg.epochs_per_rollout) for i in range(per_epoch)]
    device = batch.input_ids.device
    term_sums: dict[str, float] = defaultdict(float)  # loss terms x tokens, over micro-batches
    tokens_seen, losses, grad_norms = 0.0, list[float](), list[float]()
    for start in starts[: updates_per_rollout(cfg)]:
        mini = torch.arange(start, min(start + seqs_per_update, len(batch)), device=device)
        tokens, seqs = engine.global_sum([batch.completion_mask[mini].sum().item(), len(mini)])
        norms = {
            "num_tokens": tokens,
            "num_seqs": seqs,
            "max_len": float(cfg.max_completion_length),
        }
        micro_rows = torch.split(mini, cfg.micro_batch_size)
        engine.zero_grad()
        mini_loss = 0.0
        for i, rows in enumerate(micro_rows):
            micro = batch.select(rows)
            with engine.autocast(device):
                loss, metrics = micro_batch_loss(engine.forward, micro, cfg, norms)
                mini_loss += loss.item()
            engine.backward(loss, boundary=i == len(micro_rows) - 1)
            weight = micro.completion_mask.sum().item()
            for key, value in metrics.items():
                term_sums[key] += float(value) * weight
            tokens_seen += weight
        losses.append(mini_loss)
        grad_norms.append(engine.step())
    keys = sorted(term_sums)
    *sums, tokens, mean_loss = engine.global_sum(
        [*(term_sums[k] for k in keys), tokens_seen, sum(losses) / len(losses)]
    )
    terms = {k: v / tokens for k, v in zip(keys, sums, strict=True)} if tokens > 0 else {}
    return {
        **terms,
        "loss": mean_loss,
        "grad_norm": sum(grad_norms) / len(grad_norms),
        "learning_rate": float(engine.scheduler.get_last_lr()[0]),
    }


# --------------------------------------------------------------------------- one step, then the loop


@dataclass
class GRPORun:
    """Everything a step touches; built once by `setup_run`."""

    cfg: GRPOConfig
    engine: PolicyEngine  # the policy, its optimizer, its reference, and the ranks (plain, or ZeRO)
    processor: Any
    dataset: Any  # datasets.Dataset with images, problem, answer (+ any columns rewards read)
    backend: Any  # GenerationBackend
    reward_funcs: Mapping[str, RewardFunc]
    reward_weights: Mapping[str, float]
    order: PromptOrder
    sampling: SamplingConfig
    off_policy: bool  # several updates per rollout, or a sampler with its own numerics

    @property
    def policy(self) -> torch.nn.Module:
        return self.engine.module


def setup_run(
    cfg: GRPOConfig,
    engine: PolicyEngine,
    processor: Any,
    dataset: Any,
    *,
    backend: Any,
    reward_funcs: Mapping[str, RewardFunc],
    reward_weights: Mapping[str, float],
) -> GRPORun:
    """The run's state around an engine (which holds the policy, its reference and the ranks);
    `dataset` holds only prompts that fit (data.load_rl_prompts)."""
    processes = engine.world.size
    for name in ("rollout_batch_size", "update_batch_size"):
        if getattr(cfg, name) % processes:
            raise ValueError(
                f"grpo.{name}={getattr(cfg, name)} must be a multiple of the {processes} "
                "training processes"
            )
    return GRPORun(
        cfg, engine, processor, dataset, backend, reward_funcs, reward_weights,
        order=PromptOrder(len(dataset), cfg.rollout_batch_size, cfg.seed),
        sampling=SamplingConfig(cfg.max_completion_length, cfg.temperature, cfg.top_p, cfg.num_generations),
        off_policy=updates_per_rollout(cfg) > 1 or getattr(backend, "needs_old_logps", False),
    )  # fmt: skip


def grpo_step(run: GRPORun, step: int) -> tuple[dict[str, float], list[str]]:
    """One rollout batch, from prompts to optimizer updates; returns (metrics, this share's completion texts)."""
    cfg, engine = run.cfg, run.engine
    device = next(engine.module.parameters()).device
    t_start = time.perf_counter()
    # -- rollout: G completions for each prompt of the engine's share, as one padded batch
    rows = run.dataset[engine.shard(run.order.indices(step))]
    with engine.full_weights():  # ZeRO-3: whole weights, so generation runs no collective
        rollout = generate_rollout(run.backend, run.processor, to_prompts(rows), run.sampling,
                                   cfg.system_prompt, cfg.max_prompt_length)  # fmt: skip
    batch = rollout.batch.to(device)
    t_rollout = time.perf_counter()

    # -- rewards on the responses only, then group-normalised advantages
    texts = [c.text for group in rollout.completions for c in group]
    checks_before = answer_check_counts()
    rewards, per_func = score_completions(
        run.reward_funcs, run.reward_weights, texts, reward_columns(rows, cfg.num_generations)
    )
    advantages, adv_metrics = group_advantages(
        rewards, cfg.num_generations, cfg.scale_rewards, cfg.advantage_eps
    )
    batch.advantages = advantages.to(device)
    t_reward = time.perf_counter()

    # -- log-probs that stay fixed during the updates
    if cfg.kl_coef > 0:
        batch.ref_logps = reference_logprobs(batch, run)
    if run.off_policy:
        batch.old_logps = batched_logprobs(
            engine.forward, batch, cfg.micro_batch_size, cfg.temperature
        )

    # -- optimizer updates, then the sampler follows the new weights
    update_metrics = update_policy(engine, batch, cfg)
    engine.push_weights(run.backend)
    t_end = time.perf_counter()

    # -- metrics of the whole batch: the engine gathers every share's
    share = {
        **adv_metrics,
        **completion_metrics(rollout),
        **check_metrics_since(checks_before),
        "time/rollout_s": t_rollout - t_start,
        "time/reward_s": t_reward - t_rollout,
        "time/update_s": t_end - t_reward,
        "time/step_s": t_end - t_start,
        "tokens_per_s": batch.completion_mask.sum().item() / (t_end - t_start),
    }
    shares = engine.gather({"rewards": rewards.tolist(), "per_func": per_func, "metrics": share})
    metrics = {**combine_shares(shares), **update_metrics, "epoch": run.order.epoch(step + 1)}
    return metrics, texts


def train(
    run: GRPORun,
    checkpointer: Checkpointer | None = None,
    log_fn: MetricsFn | None = None,
    show_progress: bool = True,
) -> tuple[list[dict[str, float]], int]:
    """Run GRPO from the last checkpoint (or step 0) to cfg.total_steps; returns the per-step
    metrics and the step it started from.

    Under torchrun every rank calls this; rank 0 logs (``log_fn`` is only called there).
    """
    cfg, world = run.cfg, run.engine.world
    start, history = 0, list[dict[str, float]]()
    if checkpointer is not None:
        start, history = checkpointer.resume(run.engine, run.order, world)
    if start:  # a sampler started from the initial weights catches up
        run.engine.push_weights(run.backend)
    steps = range(start, cfg.total_steps)
    bar = tqdm(
        steps,
        initial=start,
        total=cfg.total_steps,
        desc="grpo",
        disable=not (show_progress and world.is_main),
    )
    for step in bar:
        metrics, texts = grpo_step(run, step)

        # -- log
        history.append({"step": step + 1, **metrics})
        if log_fn is not None and world.is_main:
            log_fn({f"grpo/{k}": v for k, v in metrics.items()}, step + 1)
        bar.set_postfix(
            reward=f"{metrics['reward/mean']:.3f}", len=f"{metrics['completions/mean_length']:.0f}"
        )
        if world.is_main and (step == start or (step + 1) % cfg.save_steps == 0):
            log.info("step %d sample completion: %r", step + 1, texts[0][:200] if texts else "")

        # -- checkpoint
        if checkpointer is not None and (
            (step + 1) % cfg.save_steps == 0 or step + 1 == cfg.total_steps
        ):
            checkpointer.save(step + 1, run.engine, run.order, history, world)
    return history, start


@torch.no_grad()
def reference_logprobs(batch: RolloutBatch, run: GRPORun) -> torch.Tensor:
    """Log-probs of the frozen reference (the engine's: a copy, or the policy with adapters off)."""
    with run.engine.reference() as reference:
        return batched_logprobs(reference, batch, run.cfg.micro_batch_size, run.cfg.temperature)
