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
(engine_plain.py), DeepSpeed ZeRO-2/3 with `grpo.deepspeed` (engine_zero.py); the engine also
owns the reference model. Under ZeRO every rank must run as many passes as the
others (its collectives live inside them), so a rank with fewer micro-batches runs zero-weight
stand-ins, and ZeRO-3 generates on gathered weights. Before generating, the ranks agree on
which prompts fit (`agree_on_prompts`): a rank with none left takes part with nothing.
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
from coldstart.common.errors import InputError
from coldstart.common.generation import PromptInput, SamplingConfig
from coldstart.common.rewards import CHECK_METRICS, check_metrics_since, combine_rewards
from coldstart.common.verifier import counts as answer_check_counts
from coldstart.grpo.advantages import group_advantages
from coldstart.grpo.checkpointing import Checkpointer
from coldstart.grpo.data import PromptOrder, reward_columns, to_prompts
from coldstart.grpo.distributed import World, all_reduce_max, all_reduce_sum, gather_objects, shard
from coldstart.grpo.engine import PolicyEngine
from coldstart.grpo.logprobs import batched_logprobs, completion_logprobs
from coldstart.grpo.loss import agg_loss, grpo_token_loss, masked_mean
from coldstart.grpo.optimizer import updates_per_rollout
from coldstart.grpo.rollout import (
    PromptFit,
    PromptsTooLongError,
    Rollout,
    RolloutBatch,
    fit_prompts,
    generate_rollout,
    stand_in_batch,
    too_long_message,
)

log = logging.getLogger(__name__)

RewardFunc = Callable[..., list[float]]
MetricsFn = Callable[[dict[str, float], int], None]


class MeanMeter:
    """Weighted means of metrics over micro-batches (weight = tokens) or updates (weight = 1)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.weights: dict[str, float] = defaultdict(float)

    def add(self, metrics: Mapping[str, float], weight: float = 1.0) -> None:
        for key, value in metrics.items():
            self.sums[key] += float(value) * weight
            self.weights[key] += weight

    def means(self) -> dict[str, float]:
        return {k: self.sums[k] / self.weights[k] for k in self.sums if self.weights[k] > 0}

    def merge(self, other: MeanMeter) -> MeanMeter:
        for key in other.sums:
            self.sums[key] += other.sums[key]
            self.weights[key] += other.weights[key]
        return self


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
    """Lengths and finish reasons of this rank's completions (none but the drop count when it has none)."""
    if not len(rollout.batch):
        return {"prompts/dropped_too_long": float(rollout.dropped_too_long)}
    lengths = rollout.batch.completion_mask.sum(-1)
    flat = [c for group in rollout.completions for c in group]
    return {
        "completions/mean_length": lengths.mean().item(),
        "completions/max_length": lengths.max().item(),
        "completions/min_length": lengths.min().item(),
        "completions/clipped_ratio": sum(c.finish_reason == "length" for c in flat) / len(flat),
        "completions/error_ratio": sum(c.finish_reason == "error" for c in flat) / len(flat),
        "prompts/dropped_too_long": float(rollout.dropped_too_long),
    }


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


def lockstep_passes(count: int, lockstep: bool, world: World) -> int:
    """How many forward (or backward) passes this rank runs: its own count, or the most any rank runs."""
    return int(all_reduce_max([count], world)[0]) if lockstep else count


def stand_in_loss(
    engine: PolicyEngine, stand_in: RolloutBatch | None, cfg: GRPOConfig
) -> torch.Tensor:
    """A zero loss through the whole model: the backward a rank without a micro-batch runs under ZeRO."""
    if stand_in is None:
        raise ValueError("a lockstep engine needs a stand-in batch (setup_run builds one)")
    logp, _ = completion_logprobs(engine.forward, stand_in, cfg.temperature)
    return logp.sum() * 0.0


def update_policy(
    engine: PolicyEngine,
    batch: RolloutBatch,
    cfg: GRPOConfig,
    world: World = World(),
    stand_in: RolloutBatch | None = None,
) -> tuple[MeanMeter, dict[str, float]]:
    """Optimizer updates on one rollout batch: mini-batches of update_batch_size prompts (x G
    sequences), each accumulated over micro-batches of micro_batch_size sequences.

    With several ranks each holds 1/world of every mini-batch; the loss normalisers are summed
    over ranks and so are the gradients, so the step is that of the whole mini-batch. Every rank
    runs the same number of updates (a rank whose share is empty contributes zero gradients;
    under ZeRO it runs `stand_in` passes with zero loss, as many as the busiest rank's micro-batches).
    Returns the token-weighted loss metrics (a meter, merged across ranks by the caller) and
    the per-update ones (this rank's share of the loss, grad norm, learning rate).
    """
    seqs_per_update = cfg.update_batch_size // world.size * cfg.num_generations
    token_stats, update_stats = MeanMeter(), MeanMeter()
    per_epoch = math.ceil(cfg.rollout_batch_size / cfg.update_batch_size)
    starts = [i * seqs_per_update for _ in range(cfg.epochs_per_rollout) for i in range(per_epoch)]
    for start in starts[: updates_per_rollout(cfg)]:
        end = min(start + seqs_per_update, len(batch))
        mini = torch.arange(
            min(start, end), end, device=batch.input_ids.device
        )  # may be empty on this rank
        tokens, seqs = all_reduce_sum([batch.completion_mask[mini].sum().item(), len(mini)], world)
        if seqs == 0:  # every rank's share is empty (prompts dropped as too long): no step at all
            continue
        norms = {
            "num_tokens": tokens,
            "num_seqs": seqs,
            "max_len": float(cfg.max_completion_length),
        }
        micro_rows = list(torch.split(mini, cfg.micro_batch_size)) if len(mini) else []
        passes = lockstep_passes(len(micro_rows), engine.lockstep_backward, world)
        engine.zero_grad()
        mini_loss = 0.0
        for i in range(passes):
            with engine.autocast(batch.input_ids.device):
                if i < len(micro_rows):
                    micro = batch.select(micro_rows[i])
                    loss, metrics = micro_batch_loss(engine.forward, micro, cfg, norms)
                    mini_loss += loss.item()
                    token_stats.add(metrics, weight=micro.completion_mask.sum().item())
                else:
                    loss = stand_in_loss(engine, stand_in, cfg)
            engine.backward(loss, boundary=i == passes - 1)
        update_stats.add({"loss": mini_loss, "grad_norm": engine.step()})
    learning_rate = float(engine.scheduler.get_last_lr()[0])
    return token_stats, {**update_stats.means(), "learning_rate": learning_rate}


# --------------------------------------------------------------------------- one step, then the loop


@dataclass
class GRPORun:
    """Everything a step touches; built once by `setup_run`."""

    cfg: GRPOConfig
    engine: PolicyEngine  # the policy, its optimizer and its reference (plain, or DeepSpeed ZeRO)
    processor: Any
    dataset: Any  # datasets.Dataset with images, problem, answer (+ any columns rewards read)
    backend: Any  # GenerationBackend
    reward_funcs: Mapping[str, RewardFunc]
    reward_weights: Mapping[str, float]
    order: PromptOrder
    sampling: SamplingConfig
    off_policy: bool  # several updates per rollout, or a sampler with its own numerics
    world: World
    stand_in: RolloutBatch | None  # the zero-weight micro-batch of lockstep (ZeRO) passes

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
    world: World = World(),
) -> GRPORun:
    """The run's state around an engine (which holds the policy and its reference)."""
    for name in ("rollout_batch_size", "update_batch_size"):
        if getattr(cfg, name) % world.size:
            raise ValueError(
                f"grpo.{name}={getattr(cfg, name)} must be a multiple of the {world.size} "
                "training processes"
            )
    device = next(engine.module.parameters()).device
    stand_in = (
        stand_in_batch(processor, cfg.system_prompt).to(device)
        if engine.lockstep_backward
        else None
    )
    return GRPORun(
        cfg, engine, processor, dataset, backend, reward_funcs, reward_weights,
        order=PromptOrder(len(dataset), cfg.rollout_batch_size, cfg.seed),
        sampling=SamplingConfig(cfg.max_completion_length, cfg.temperature, cfg.top_p, cfg.num_generations),
        off_policy=updates_per_rollout(cfg) > 1 or getattr(backend, "needs_old_logps", False),
        world=world,
        stand_in=stand_in,
    )  # fmt: skip


def agree_on_prompts(run: GRPORun, prompts: list[PromptInput], fit: PromptFit, step: int) -> None:
    """Every rank learns what every rank kept before anyone generates, and all decide alike.

    A rank whose whole share is too long takes part in the step with an empty batch (the
    others train on theirs, as one process holding the whole batch would); if no rank kept a
    prompt, every rank raises the same PromptsTooLongError, where one raising alone would leave
    the others waiting in a collective.
    """
    zero3_ranks = run.engine.lockstep_forward and run.world.active
    mine = {"kept": len(fit.kept), "given": len(prompts), "shortest": fit.shortest,
            "no_image": sum(not prompts[i].images for i in fit.kept) if zero3_ranks else 0}  # fmt: skip
    parts = gather_objects(mine, run.world)
    if sum(p["kept"] for p in parts) == 0:
        shortest = min(p["shortest"] for p in parts if p["given"])
        message = too_long_message(
            sum(p["given"] for p in parts), shortest, run.cfg.max_prompt_length
        )
        raise PromptsTooLongError(f"rollout step {step + 1}: {message}")
    if any(p["no_image"] for p in parts):
        raise InputError(
            f"rollout step {step + 1}: {sum(p['no_image'] for p in parts)} prompts without an image, and "
            f"grpo.deepspeed=zero3 over {run.world.size} processes runs the vision tower's weight gathers in "
            "lockstep on every rank; use grpo.deepspeed=zero2 (or none), or give every RL row an image"
        )


def lockstep_logprobs(model: torch.nn.Module, batch: RolloutBatch, run: GRPORun) -> torch.Tensor:
    """`batched_logprobs`, with as many forwards as the busiest rank under ZeRO-3 (stand-ins for the rest)."""
    passes = lockstep_passes(
        math.ceil(len(batch) / run.cfg.micro_batch_size), run.engine.lockstep_forward, run.world
    )
    return batched_logprobs(
        model, batch, run.cfg.micro_batch_size, run.cfg.temperature, passes, run.stand_in
    )


def push_weights(engine: PolicyEngine, backend: Any) -> None:
    """The sampler follows the policy. HF generate runs on the policy module itself: nothing to send.
    An engine of its own (vLLM) is sent the whole weights (gathered first under ZeRO-3, on every rank)."""
    if getattr(backend, "model", None) is engine.module:
        return
    with engine.full_weights() as policy:
        backend.sync_weights(policy)


def grpo_step(run: GRPORun, step: int) -> tuple[dict[str, float], list[str]]:
    """One rollout batch, from prompts to optimizer updates; returns (metrics, this rank's completion texts)."""
    cfg, engine = run.cfg, run.engine
    device = next(engine.module.parameters()).device
    t_start = time.perf_counter()
    # -- rollout: G completions per prompt (this rank's share of the prompts), as one padded batch
    rows = run.dataset[shard(run.order.indices(step), run.world)]
    prompts = to_prompts(rows)
    fit = fit_prompts(run.processor, prompts, cfg.system_prompt, cfg.max_prompt_length)
    agree_on_prompts(run, prompts, fit, step)
    with engine.full_weights():  # ZeRO-3: whole weights, so each rank generates on its own
        rollout = generate_rollout(
            run.backend,
            run.processor,
            prompts,
            run.sampling,
            cfg.system_prompt,
            cfg.max_prompt_length,
            fit,
        )
    batch = rollout.batch.to(device)
    t_rollout = time.perf_counter()

    # -- rewards on the responses only, then group-normalised advantages
    kept_rows = {k: [v[i] for i in rollout.kept] for k, v in rows.items()}
    texts = [c.text for group in rollout.completions for c in group]
    checks_before = answer_check_counts()
    rewards, per_func = score_completions(
        run.reward_funcs, run.reward_weights, texts, reward_columns(kept_rows, cfg.num_generations)
    )
    advantages, adv_metrics = (
        group_advantages(rewards, cfg.num_generations, cfg.scale_rewards, cfg.advantage_eps)
        if len(rewards) else (torch.zeros(0), {})  # this rank kept no prompt
    )  # fmt: skip
    batch.advantages = advantages.to(device)
    t_reward = time.perf_counter()

    # -- log-probs that stay fixed during the updates
    if cfg.kl_coef > 0:
        batch.ref_logps = reference_logprobs(batch, run)
    if run.off_policy:
        batch.old_logps = lockstep_logprobs(engine.forward, batch, run)

    # -- optimizer updates, then the sampler follows the new weights
    token_stats, update_metrics = update_policy(engine, batch, cfg, run.world, run.stand_in)
    push_weights(engine, run.backend)
    t_end = time.perf_counter()

    local = {
        "rewards": rewards.tolist(),
        "per_func": per_func,
        "seqs": len(batch),
        "token_stats": token_stats,
        "update": update_metrics,
        "seq_metrics": {
            **adv_metrics,
            **completion_metrics(rollout),
            **check_metrics_since(checks_before),
            "time/rollout_s": t_rollout - t_start,
            "time/reward_s": t_reward - t_rollout,
            "time/update_s": t_end - t_reward,
            "time/step_s": t_end - t_start,
            "tokens_per_s": batch.completion_mask.sum().item() / (t_end - t_start),
        },
    }
    metrics = combine_ranks(gather_objects(local, run.world))
    metrics["epoch"] = run.order.epoch(step + 1)
    return metrics, texts


SUMMED = ("prompts/dropped_too_long", "tokens_per_s", *CHECK_METRICS)


def combine_ranks(parts: list[dict[str, Any]]) -> dict[str, float]:
    """One step's metrics from every rank's share: rewards pooled, token metrics token-weighted,
    sequence metrics sequence-weighted, maxima/minima/times (the slowest rank) and sums kept as such."""
    rewards = [r for p in parts for r in p["rewards"]]
    per_func = {
        name: [r for p in parts for r in p["per_func"][name]] for name in parts[0]["per_func"]
    }
    metrics = reward_metrics(rewards, per_func)
    tokens = MeanMeter()
    for p in parts:
        tokens.merge(p["token_stats"])
    metrics.update(tokens.means())
    seqs = MeanMeter()
    for p in parts:
        seqs.add(
            p["seq_metrics"], weight=p["seqs"]
        )  # a rank with no sequences (all prompts too long) weighs 0
    metrics.update(seqs.means())
    for key in dict.fromkeys(k for p in parts for k in p["seq_metrics"]):
        values = [p["seq_metrics"][key] for p in parts if key in p["seq_metrics"]]
        if key in SUMMED:
            metrics[key] = sum(values)
        elif key.endswith("max_length") or key.startswith("time/"):
            metrics[key] = max(values)
        elif key.endswith("min_length"):
            metrics[key] = min(values)
    metrics.update(parts[0]["update"])  # grad norm and learning rate are the same on every rank
    metrics["loss"] = sum(p["update"].get("loss", 0.0) for p in parts)  # each rank holds its share
    return metrics


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
    cfg, world = run.cfg, run.world
    start, history = 0, list[dict[str, float]]()
    if checkpointer is not None:
        start, history = checkpointer.resume(run.engine, run.order, world)
    if start:
        push_weights(
            run.engine, run.backend
        )  # an engine started from the initial weights must catch up
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
        return lockstep_logprobs(reference, batch, run)
