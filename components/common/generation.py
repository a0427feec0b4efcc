"""Generation backends shared by GRPO rollouts, eval and distillation.

One interface, two engines: transformers `generate` (CPU and GPU, shares the policy's weights
so nothing has to be pushed) and vLLM (GPU, `gpu` extra; new policy weights are pushed after
each update). Callers hand over problems and images and get text and token ids back; the
chat template and system prompt are applied here, the same way for every stage.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from PIL import Image
from tqdm import tqdm

from coldstart.common.prompts import prompt_messages

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamplingConfig:
    """temperature 0 means greedy (eval); n > 1 samples a group per prompt (GRPO)."""

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    n: int = 1

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass
class PromptInput:
    problem: str
    images: list[Image.Image] = field(default_factory=list)


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop", "length" or "error"
    error: str | None = None


class GenerationBackend(Protocol):
    def generate(
        self, prompts: Sequence[PromptInput], sampling: SamplingConfig
    ) -> list[list[Completion]]:
        """Return `sampling.n` completions for each prompt, in prompt order."""
        ...

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Make the engine sample from `model`'s current weights."""
        ...


def chat_prompt(processor, problem: str, n_images: int, system_prompt: str) -> str:
    return processor.apply_chat_template(
        prompt_messages(problem, system_prompt, n_images),
        tokenize=False,
        add_generation_prompt=True,
    )


class HFBackend:
    """transformers `generate` on the policy model itself (weights are always current)."""

    def __init__(
        self,
        model,
        processor,
        system_prompt: str,
        batch_size: int = 16,
        show_progress: bool = False,
    ):
        self.model = model
        self.processor = processor
        self.system_prompt = system_prompt
        self.batch_size = batch_size
        self.show_progress = show_progress
        self.processor.tokenizer.padding_side = "left"  # generation appends on the right
        self.eos_ids = set(_as_list(model.generation_config.eos_token_id))

    def sync_weights(self, model: torch.nn.Module) -> None:
        self.model = model

    def encode(self, prompts: Sequence[PromptInput]) -> dict[str, torch.Tensor]:
        texts = [
            chat_prompt(self.processor, p.problem, len(p.images), self.system_prompt)
            for p in prompts
        ]
        images = [img for p in prompts for img in p.images] or None
        return self.processor(text=texts, images=images, padding=True, return_tensors="pt").to(
            self.model.device
        )

    def generate(
        self, prompts: Sequence[PromptInput], sampling: SamplingConfig
    ) -> list[list[Completion]]:
        out: list[list[Completion]] = []
        starts = range(0, len(prompts), self.batch_size)
        for start in tqdm(starts, desc="generate", unit="batch", disable=not self.show_progress):
            batch = prompts[start : start + self.batch_size]
            try:
                out.extend(self._generate_batch(batch, sampling))
            except (RuntimeError, ValueError) as exc:
                if len(batch) == 1:
                    log.error(
                        "generation failed for one prompt (%s); scored as an empty response", exc
                    )
                    out.append([Completion("", [], "error", error=str(exc))] * sampling.n)
                else:
                    log.warning("batch generation failed (%s); retrying prompt by prompt", exc)
                    for single in batch:
                        out.extend(self.generate([single], sampling))
        return out

    @torch.no_grad()
    def _generate_batch(
        self, prompts: Sequence[PromptInput], sampling: SamplingConfig
    ) -> list[list[Completion]]:
        inputs = self.encode(prompts)
        kwargs = dict(max_new_tokens=sampling.max_new_tokens, num_return_sequences=sampling.n)
        if sampling.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(
                do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0
            )
        was_training = self.model.training
        self.model.eval()
        try:
            sequences = self.model.generate(
                **inputs, **kwargs, pad_token_id=self.processor.tokenizer.pad_token_id
            )
        finally:
            self.model.train(was_training)
        new_tokens = sequences[:, inputs["input_ids"].shape[1] :].tolist()
        completions = [self._completion(ids) for ids in new_tokens]
        return [completions[i * sampling.n : (i + 1) * sampling.n] for i in range(len(prompts))]

    def _completion(self, ids: list[int]) -> Completion:
        """Cut at the first end-of-turn token; what follows is padding from longer rows."""
        for pos, tok in enumerate(ids):
            if tok in self.eos_ids:
                kept = ids[: pos + 1]
                return Completion(
                    self.processor.tokenizer.decode(kept, skip_special_tokens=True), kept, "stop"
                )
        return Completion(
            self.processor.tokenizer.decode(ids, skip_special_tokens=True), ids, "length"
        )


def _as_list(value: int | list[int] | None) -> list[int]:
    if value is None:
        return []
    return [value] if isinstance(value, int) else list(value)


class VLLMBackend:
    """vLLM colocated with the trainer on the same GPU (GPU only; the `gpu` extra).

    The engine is started from the policy's model directory and, after each optimizer update,
    `sync_weights` pushes the policy's current parameters into it in place (`load_weights`,
    as TRL's colocate mode does), so no checkpoint is written between steps. Prompts are given
    as chat-template text plus PIL images (`multi_modal_data`); vLLM runs the same HF image
    processor, and `mm_processor_kwargs` carries the pixel bounds so the number of image
    tokens matches the trainer's encoding. One engine per process; tensor parallelism is 1.
    """

    needs_old_logps = True  # sampler numerics differ from the trainer's: recompute old log-probs

    def __init__(
        self,
        model,
        processor,
        system_prompt: str,
        *,
        gpu_memory_utilization: float = 0.3,
        max_model_len: int | None = None,
        enable_sleep_mode: bool = False,
        seed: int = 0,
        dtype: str = "auto",
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        max_images_per_prompt: int = 1,
    ) -> None:
        try:
            from vllm import LLM
        except ImportError as exc:  # CPU images and the dev venv have no vLLM
            raise ImportError(
                "rollout_backend 'vllm' needs the `gpu` extra (pip install 'coldstart[gpu]') and a CUDA GPU; "
                "use rollout_backend 'hf' on CPU"
            ) from exc
        import os

        path = model if isinstance(model, (str, os.PathLike)) else model.name_or_path
        # external_launcher keeps the engine in this process, so its model object is reachable.
        for key, value in {
            "RANK": "0",
            "LOCAL_RANK": "0",
            "WORLD_SIZE": "1",
            "MASTER_ADDR": "127.0.0.1",
        }.items():
            os.environ.setdefault(key, value)
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        mm_kwargs = {
            k: v for k, v in {"min_pixels": min_pixels, "max_pixels": max_pixels}.items() if v
        }
        self.processor = processor
        self.system_prompt = system_prompt
        self.enable_sleep_mode = enable_sleep_mode
        self.llm = LLM(
            model=str(path),
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            enable_sleep_mode=enable_sleep_mode,
            distributed_executor_backend="external_launcher",
            seed=seed,
            limit_mm_per_prompt={"image": max_images_per_prompt},
            mm_processor_kwargs=mm_kwargs or None,
        )
        if enable_sleep_mode:
            self.llm.sleep(level=1)

    def generate(
        self, prompts: Sequence[PromptInput], sampling: SamplingConfig
    ) -> list[list[Completion]]:
        from vllm import SamplingParams

        params = SamplingParams(
            n=sampling.n,
            temperature=sampling.temperature,
            top_p=sampling.top_p if not sampling.greedy else 1.0,
            top_k=-1,
            max_tokens=sampling.max_new_tokens,
        )
        requests = []
        for p in prompts:
            request: dict = {
                "prompt": chat_prompt(self.processor, p.problem, len(p.images), self.system_prompt)
            }
            if p.images:
                request["multi_modal_data"] = {
                    "image": p.images if len(p.images) > 1 else p.images[0]
                }
            requests.append(request)
        if self.enable_sleep_mode:
            self.llm.wake_up()
        try:
            outputs = self.llm.generate(requests, sampling_params=params, use_tqdm=False)
        finally:
            if self.enable_sleep_mode:
                self.llm.sleep(level=1)
        return [
            [
                Completion(
                    o.text, list(o.token_ids), "length" if o.finish_reason == "length" else "stop"
                )
                for o in out.outputs
            ]
            for out in outputs
        ]

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Copy the policy's parameters into the engine (LoRA adapters merged first), then drop its prefix cache."""
        if self.enable_sleep_mode:
            self.llm.wake_up(tags=["weights"])
        engine_model = self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        merged = hasattr(model, "merge_adapter")
        if merged:
            model.merge_adapter()
        try:
            for name, param in _vllm_named_params(model):
                engine_model.load_weights([(name, param.data)])
        finally:
            if merged:
                model.unmerge_adapter()
        self.llm.reset_prefix_cache()
        if self.enable_sleep_mode:
            self.llm.sleep(level=1)


def _vllm_named_params(model: torch.nn.Module):
    """HF parameter names as vLLM's loader expects them (PEFT prefixes and adapter weights removed)."""
    is_peft = hasattr(model, "peft_config")
    for name, param in model.named_parameters():
        if is_peft:
            name = name.removeprefix("base_model.model.").replace(".base_layer", "")
            if "lora_" in name or "original_module" in name:
                continue
            name = name.replace("modules_to_save.default.", "")
        yield name, param


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


BACKENDS = ("hf", "vllm")


def make_backend(name: str, model, processor, system_prompt: str, **kwargs) -> GenerationBackend:
    """The generation backend called `name` ("hf" or "vllm") over `model`.

    `hf` takes `batch_size` and `show_progress`; `vllm` takes VLLMBackend's keyword arguments
    (gpu_memory_utilization, max_model_len, enable_sleep_mode, seed, min/max_pixels, ...).
    """
    if name == "hf":
        return HFBackend(model, processor, system_prompt, **kwargs)
    if name == "vllm":
        return VLLMBackend(model, processor, system_prompt, **kwargs)
    raise ValueError(f"unknown generation backend {name!r}; valid: {list(BACKENDS)}")
