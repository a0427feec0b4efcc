"""Per-token log-probs (and entropy) of the sampled completions under a model.

One forward over prompt + completion; only the last C + 1 positions go through the LM head
(``logits_to_keep``), and position P - 1 + t predicts completion token t. Logits are divided
by the sampling temperature, so the log-probs are those of the distribution the tokens were
drawn from (as TRL and verl do).

Images: a Qwen2.5-VL forward normally re-encodes ``pixel_values`` for every sequence, i.e. G
times per prompt in GRPO. Where the model accepts precomputed ``mm_encoder_outputs``
(transformers 5 Qwen-VL models), the vision tower runs once per prompt and its features are
handed to each of the prompt's G sequences; gradients through the shared features add up
exactly as with G separate encodings. Other models get ``pixel_values`` repeated per sequence.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from coldstart.grpo.rollout import RolloutBatch


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 -> fp32 for the softmax; fp32 and fp64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def selective_log_softmax(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[token] for each position: (B, T, V), (B, T) -> (B, T), at least float32.

    Row by row, so the (T, V) temporary of one sequence is the peak extra memory.
    """
    rows = [
        _upcast(row).log_softmax(-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
        for row, ids in zip(logits, token_ids, strict=True)
    ]
    return torch.stack(rows)


@torch.no_grad()
def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) per position, (B, T, V) -> (B, T); no gradient (a metric)."""
    rows = []
    for row in logits:
        row = _upcast(row)
        logp = row.log_softmax(-1)
        rows.append(-(logp.exp() * logp).sum(-1))
    return torch.stack(rows)


def shares_vision_features(model: torch.nn.Module) -> bool:
    """True if the model's forward accepts precomputed vision features (``mm_encoder_outputs``)."""
    inner: Any = getattr(model, "module", model)  # a DeepSpeed engine wraps the model
    base = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    return "mm_encoder_outputs" in inspect.signature(base.forward).parameters and hasattr(
        base, "get_image_features"
    )


def vision_inputs(model: torch.nn.Module, batch: RolloutBatch, share: bool) -> dict[str, Any]:
    """Image inputs for the rows of `batch`, per sequence, from the per-prompt tensors."""
    if batch.pixel_values is None or batch.image_grid_thw is None or not len(batch.image_grid_thw):
        return {}
    counts = batch.images_per_prompt.tolist()
    grids = torch.split(batch.image_grid_thw, counts)
    seq_grid = torch.cat([grids[p] for p in batch.prompt_index.tolist()])
    if share:
        encoder: Any = model  # a Qwen2.5-VL model (or a wrapper of it)
        features = encoder.get_image_features(
            batch.pixel_values, batch.image_grid_thw
        ).pooler_output  # per image
        per_prompt, start = [], 0
        for n in counts:
            per_prompt.append(features[start : start + n])
            start += n
        seq_features = tuple(f for p in batch.prompt_index.tolist() for f in per_prompt[p])
        return {
            # a tuple of per-sequence features where the field is typed as one tensor
            "mm_encoder_outputs": {
                "image": BaseModelOutputWithPooling(pooler_output=seq_features)  # type: ignore[arg-type]
            },
            "image_grid_thw": seq_grid,
        }
    rows_per_prompt = [int(g.prod(-1).sum()) for g in grids]
    pixels = torch.split(batch.pixel_values, rows_per_prompt)
    return {
        "pixel_values": torch.cat([pixels[p] for p in batch.prompt_index.tolist()]),
        "image_grid_thw": seq_grid,
    }


def completion_logprobs(
    model: torch.nn.Module,
    batch: RolloutBatch,
    temperature: float = 1.0,
    compute_entropy: bool = False,
    share_vision: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of ``batch.completion_ids`` under ``model``: (N, C), and entropies (N, C) or None.

    Differentiable unless called under ``torch.no_grad()``. Padding positions hold finite
    values; callers mask them with ``batch.completion_mask``.
    """
    C = batch.completion_len
    if share_vision is None:
        share_vision = shares_vision_features(model)
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    if batch.mm_token_type_ids is not None:
        inputs["mm_token_type_ids"] = batch.mm_token_type_ids
    inputs.update(vision_inputs(model, batch, share_vision))
    logits = model(**inputs, use_cache=False, logits_to_keep=C + 1).logits[:, :-1]  # (N, C, V)
    if temperature != 1.0:
        logits = logits / temperature
    logps = selective_log_softmax(logits, batch.completion_ids)
    entropy = entropy_from_logits(logits) if compute_entropy else None
    return logps, entropy


@torch.no_grad()
def batched_logprobs(
    model: torch.nn.Module, batch: RolloutBatch, micro_batch_size: int, temperature: float
) -> torch.Tensor:
    """No-grad log-probs for the whole batch, micro-batch by micro-batch: (N, C) on the batch's device."""
    out = torch.zeros(
        len(batch), batch.completion_len, device=batch.input_ids.device, dtype=torch.float32
    )
    for start in range(0, len(batch), micro_batch_size):
        rows = torch.arange(start, min(start + micro_batch_size, len(batch)))
        micro = batch.select(rows.to(batch.prompt_index.device))
        logps, _ = completion_logprobs(model, micro, temperature)
        out[rows, : micro.completion_len] = logps
    return out
