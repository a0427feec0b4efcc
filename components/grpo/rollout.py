"""From prompts to a padded training batch: encode, sample G completions each, lay out tensors.

Layout of a `RolloutBatch` (N = prompts x G sequences, the G completions of a prompt are
consecutive rows):

    input_ids       (N, P + C)   prompt left-padded to P | completion right-padded to C
    attention_mask  (N, P + C)
    completion_mask (N, C)       1.0 on generated tokens (the end-of-turn token included)
    prompt_index    (N,)         which prompt each row came from

Images stay per *prompt* (`pixel_values` rows of each prompt's images, once), not per
sequence: the vision tower then runs once per prompt instead of G times (see logprobs.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import torch

from coldstart.common.generation import (
    Completion,
    GenerationBackend,
    PromptInput,
    SamplingConfig,
    chat_prompt,
)


@dataclass
class EncodedPrompts:
    """The processor's output for B prompts, left-padded (generation appends on the right)."""

    input_ids: torch.Tensor  # (B, P)
    attention_mask: torch.Tensor  # (B, P)
    mm_token_type_ids: torch.Tensor | None  # (B, P) 1 on image placeholder tokens
    pixel_values: torch.Tensor | None  # (R, D) patch rows of all images, prompt by prompt
    image_grid_thw: torch.Tensor | None  # (I, 3) one row per image
    images_per_prompt: torch.Tensor  # (B,)

    @property
    def lengths(self) -> torch.Tensor:
        return self.attention_mask.sum(-1)


def encode_prompts(
    processor: Any, prompts: Sequence[PromptInput], system_prompt: str
) -> EncodedPrompts:
    """Chat template + system prompt (the one `coldstart.common.generation` applies) + processor."""
    processor.tokenizer.padding_side = "left"
    texts = [chat_prompt(processor, p.problem, len(p.images), system_prompt) for p in prompts]
    images = [img for p in prompts for img in p.images] or None
    enc = processor(text=texts, images=images, padding=True, return_tensors="pt")
    return EncodedPrompts(
        input_ids=enc["input_ids"],
        attention_mask=enc["attention_mask"],
        mm_token_type_ids=enc.get("mm_token_type_ids"),
        pixel_values=enc.get("pixel_values"),
        image_grid_thw=enc.get("image_grid_thw"),
        images_per_prompt=torch.tensor([len(p.images) for p in prompts], dtype=torch.long),
    )


@dataclass
class RolloutBatch:
    """Sequences of one rollout and what the loss needs about them; `select` cuts micro-batches."""

    input_ids: torch.Tensor  # (N, P + C)
    attention_mask: torch.Tensor  # (N, P + C)
    mm_token_type_ids: torch.Tensor | None  # (N, P + C)
    completion_mask: torch.Tensor  # (N, C) float
    prompt_index: torch.Tensor  # (N,) into the prompt-level tensors below
    pixel_values: torch.Tensor | None  # (R, D) per prompt, not per sequence
    image_grid_thw: torch.Tensor | None  # (I, 3)
    images_per_prompt: torch.Tensor  # (num_prompts,)
    advantages: torch.Tensor | None = None  # (N,)
    old_logps: torch.Tensor | None = None  # (N, C) rollout policy, when updates are off-policy
    ref_logps: torch.Tensor | None = None  # (N, C) frozen reference, when kl_coef > 0

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def completion_len(self) -> int:
        return self.completion_mask.shape[1]

    @property
    def completion_ids(self) -> torch.Tensor:
        return self.input_ids[:, -self.completion_len :]

    def to(self, device: torch.device | str) -> RolloutBatch:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return RolloutBatch(
            **{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in moved.items()}
        )

    def select(self, rows: torch.Tensor) -> RolloutBatch:
        """The sequences `rows` (sorted), with only their prompts' images and no all-padding columns."""
        rows = rows.sort().values
        prompts = torch.unique(self.prompt_index[rows], sorted=True)
        image_ids, patch_rows = _prompt_image_rows(self, prompts)
        n_prompt = self.input_ids.shape[1] - self.completion_len
        attn = self.attention_mask[rows]
        first = int(
            attn[:, :n_prompt].any(0).float().argmax()
        )  # leading columns padded in every row
        keep_c = max(int(self.completion_mask[rows].sum(-1).max()), 1)
        cols = slice(first, n_prompt + keep_c)
        return replace(
            self,
            input_ids=self.input_ids[rows, cols],
            attention_mask=attn[:, cols],
            mm_token_type_ids=None
            if self.mm_token_type_ids is None
            else self.mm_token_type_ids[rows, cols],
            completion_mask=self.completion_mask[rows, :keep_c],
            prompt_index=torch.searchsorted(prompts, self.prompt_index[rows]),
            pixel_values=None if self.pixel_values is None else self.pixel_values[patch_rows],
            image_grid_thw=None if self.image_grid_thw is None else self.image_grid_thw[image_ids],
            images_per_prompt=self.images_per_prompt[prompts],
            advantages=None if self.advantages is None else self.advantages[rows],
            old_logps=None if self.old_logps is None else self.old_logps[rows, :keep_c],
            ref_logps=None if self.ref_logps is None else self.ref_logps[rows, :keep_c],
        )


def _prompt_image_rows(
    batch: RolloutBatch, prompts: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the images of `prompts` and of those images' rows in `pixel_values`."""
    empty = torch.zeros(0, dtype=torch.long)
    if batch.image_grid_thw is None:
        return empty, empty
    # index arithmetic on the CPU (these are a few numbers per prompt); CUDA tensors accept CPU indices
    image_start = torch.cat([empty.new_zeros(1), batch.images_per_prompt.cpu().cumsum(0)])
    patches = batch.image_grid_thw.cpu().prod(-1)
    patch_start = torch.cat([patches.new_zeros(1), patches.cumsum(0)])
    image_ids = torch.cat(
        [torch.arange(int(image_start[p]), int(image_start[p + 1])) for p in prompts.tolist()]
        + [empty]
    )
    patch_rows = torch.cat(
        [torch.arange(int(patch_start[i]), int(patch_start[i + 1])) for i in image_ids.tolist()]
        + [empty]
    )
    return image_ids, patch_rows


def trainable_length(token_ids: Sequence[int], placeholder_ids: set[int]) -> int:
    """Tokens of a completion the loss may use: all, or those before a sampled image/video placeholder.

    A placeholder token in the completion would be taken for an image slot by the next forward
    (the model counts placeholders to place vision features) and fail it; an untrained policy
    does sample them. Such a token and what follows are kept out of the loss (and the forward).
    """
    for pos, tok in enumerate(token_ids):
        if tok in placeholder_ids:
            return pos
    return len(token_ids)


def build_rollout_batch(
    prompts: EncodedPrompts,
    completions: Sequence[Sequence[Completion]],
    pad_token_id: int,
    placeholder_ids: Sequence[int] = (),
) -> RolloutBatch:
    """Join each prompt with each of its G completions (G = len(completions[i]), the same for all)."""
    group = {len(c) for c in completions}
    if len(group) != 1 or len(completions) != prompts.input_ids.shape[0]:
        raise ValueError(
            f"need the same number of completions for each of {prompts.input_ids.shape[0]} prompts, got {group}"
        )
    G = group.pop()
    flat = [c for per_prompt in completions for c in per_prompt]
    kept = [trainable_length(c.token_ids, set(placeholder_ids)) for c in flat]
    C = max(1, max(kept))
    completion_ids = torch.full((len(flat), C), pad_token_id, dtype=torch.long)
    completion_mask = torch.zeros(len(flat), C)
    for row, (c, n) in enumerate(zip(flat, kept, strict=True)):
        completion_ids[row, :n] = torch.tensor(c.token_ids[:n], dtype=torch.long)
        completion_mask[row, :n] = 1.0
    prompt_index = torch.arange(len(completions)).repeat_interleave(G)

    def repeat(t: torch.Tensor) -> torch.Tensor:
        return t[prompt_index]

    mm = None
    if prompts.mm_token_type_ids is not None:
        mm = torch.cat([repeat(prompts.mm_token_type_ids), torch.zeros_like(completion_ids)], dim=1)
    return RolloutBatch(
        input_ids=torch.cat([repeat(prompts.input_ids), completion_ids], dim=1),
        attention_mask=torch.cat([repeat(prompts.attention_mask), completion_mask.long()], dim=1),
        mm_token_type_ids=mm,
        completion_mask=completion_mask,
        prompt_index=prompt_index,
        pixel_values=prompts.pixel_values,
        image_grid_thw=prompts.image_grid_thw,
        images_per_prompt=prompts.images_per_prompt,
    )


@dataclass
class Rollout:
    """One rollout step: the training batch and the completions rewards and logs read."""

    batch: RolloutBatch
    completions: list[list[Completion]]  # per prompt, G each


def generate_rollout(
    backend: GenerationBackend,
    processor: Any,
    prompts: Sequence[PromptInput],
    sampling: SamplingConfig,
    system_prompt: str,
    max_prompt_length: int,
) -> Rollout:
    """Sample ``sampling.n`` completions per prompt and lay them out for training.

    The prompts fit in ``max_prompt_length`` (the set's longer ones were dropped when it was
    loaded, data.load_rl_prompts); one that does not is a bug in that measure, and an error here.
    """
    enc = encode_prompts(processor, prompts, system_prompt)
    longest = int(enc.lengths.max())
    if longest > max_prompt_length:
        raise RuntimeError(
            f"a prompt of {longest} tokens > grpo.max_prompt_length={max_prompt_length} reached the "
            "rollout: the load-time measure (common/token_counts.prompt_lengths) disagrees with the processor"
        )
    completions = backend.generate(prompts, sampling)
    placeholders = [
        t
        for t in (
            getattr(processor, "image_token_id", None),
            getattr(processor, "video_token_id", None),
        )
        if t is not None
    ]
    batch = build_rollout_batch(enc, completions, processor.tokenizer.pad_token_id, placeholders)
    return Rollout(batch, completions)
