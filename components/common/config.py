"""One pydantic schema for every stage's settings.

The same models validate a YAML file, `--set key=value` overrides from the CLI and the
parameters a kfp component receives (the config travels into components as a JSON string),
so a bad value is rejected at the edge with the field's dotted path, never deep in a stage.
Defaults are the tiny CPU preset; `configs/qwen2.5-vl-*.yaml` carry the paper's recipe.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from coldstart.common.errors import InputError
from coldstart.common.settings import refuse_file_store

PAPER_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."

SYNTHETIC_FAMILIES = (
    "count_shapes",
    "bar_chart",
    "digit_arithmetic",
    "triangle_angle",
    "color_sum",
)
# color_sum is built for the miniature ablation (bench/configs/ablation.yaml); the default mix keeps to
# the four math-reasoning families.
DEFAULT_SYNTHETIC_FAMILIES = SYNTHETIC_FAMILIES[:4]


class ConfigError(InputError):
    """A config that cannot be used; the message names the field (dotted path) and the fix."""


class _Strict(BaseModel):
    """Unknown keys are errors: a typo in a YAML key must not silently fall back to a default."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TinyModelConfig(_Strict):
    """Sizes of the offline, randomly initialised Qwen2.5-VL used on CPU and in tests."""

    hidden_size: int = Field(64, ge=16, le=4096, description="language model width")
    intermediate_size: int = Field(128, ge=16)
    num_hidden_layers: int = Field(2, ge=1, le=64)
    num_attention_heads: int = Field(4, ge=1)
    num_key_value_heads: int = Field(2, ge=1)
    vision_depth: int = Field(2, ge=1, le=32)
    vision_hidden_size: int = Field(32, ge=16)
    vision_num_heads: int = Field(2, ge=1)
    vocab_size: int = Field(
        1024, ge=300, le=200_000, description="BPE vocabulary incl. byte alphabet"
    )
    seed: int = 0

    @model_validator(mode="after")
    def _heads_divide(self) -> TinyModelConfig:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be divisible by num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be divisible by num_key_value_heads")
        if self.vision_hidden_size % self.vision_num_heads:
            raise ValueError("vision_hidden_size must be divisible by vision_num_heads")
        return self


class ModelConfig(_Strict):
    """Where the base model comes from: `tiny` (built offline), a directory, `s3://` or a hub id."""

    name_or_path: str = Field("tiny", min_length=1)
    tiny: TinyModelConfig = TinyModelConfig()
    torch_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] = "sdpa"


class SyntheticConfig(_Strict):
    """The built-in generator of image problems with answers that are correct by construction."""

    families: list[str] = Field(
        default_factory=lambda: list(DEFAULT_SYNTHETIC_FAMILIES), min_length=1
    )
    train_per_family: int = Field(64, ge=1, le=1_000_000)
    test_per_family: int = Field(16, ge=1, le=1_000_000)
    difficulties: list[int] = Field(default_factory=lambda: [1, 2, 3], min_length=1)
    image_size: int = Field(112, ge=28, le=2048, description="square canvas side in pixels")
    image_format: Literal["png", "jpeg"] = Field(
        "png", description="how data_prep stores the images (jpeg: as photos and scans come)"
    )
    teacher_slip: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="fraction of SFT problems in a family's blind spot whose cold-start CoT is the "
        "teacher's wrong one (color_sum: yellow taken as 3); RL and eval keep the true answers",
    )

    @model_validator(mode="after")
    def _known_families(self) -> SyntheticConfig:
        unknown = sorted(set(self.families) - set(SYNTHETIC_FAMILIES))
        if unknown:
            raise ValueError(f"unknown families {unknown}; valid: {list(SYNTHETIC_FAMILIES)}")
        bad = [d for d in self.difficulties if d not in (1, 2, 3)]
        if bad:
            raise ValueError(f"difficulties must be in 1..3, got {bad}")
        return self


class DatasetSource(_Strict):
    """A user's dataset: parquet, jsonl or a `datasets.save_to_disk` folder, local or `s3://`."""

    uri: str = Field(..., min_length=1)
    format: Literal["auto", "parquet", "jsonl", "hf_disk"] = "auto"
    split: str | None = Field(None, description="split name inside a DatasetDict folder")
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="map from the common schema (images, problem, answer, id, solution) to the file's columns",
    )


STRUCTURED_REASONING_PROMPT = (
    "You are given an image and a math problem. First describe what you observe in the image "
    "that matters for the problem. Then reason step by step, numbering the steps. Then reflect: "
    "check your steps against the image and the question, and correct any mistake. "
    "Finally, put your final answer within \\boxed{}."
)


class DistillConfig(_Strict):
    """Cold-start SFT data by rejection sampling from a teacher (the paper distilled from a 32B model).

    For each SFT problem the teacher samples k chain-of-thought answers under a structured-reasoning
    system prompt; only those whose last `\\boxed{}` verifies against the ground truth are kept and
    become the SFT target (`solution`).
    """

    enabled: bool = False
    teacher: str = Field("", description="teacher model: directory, s3:// prefix, hub id or 'tiny'")
    samples_per_problem: int = Field(
        4, ge=1, le=256, description="k completions sampled per problem"
    )
    keep_per_problem: int = Field(
        1, ge=1, le=256, description="at most this many verified answers kept per problem"
    )
    temperature: float = Field(
        0.7, gt=0.0, le=2.0, description="sampling temperature of the teacher"
    )
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_new_tokens: int = Field(2048, ge=1, le=65_536)
    batch_size: int = Field(8, ge=1, description="prompts per generate call (HF backend)")
    backend: Literal["hf", "vllm"] = "hf"
    system_prompt: str = Field(STRUCTURED_REASONING_PROMPT, min_length=1)
    unverified: Literal["drop", "keep_original"] = Field(
        "drop",
        description="problems with no verified answer: drop them, or keep their original solution",
    )
    answer_timeout_s: float = Field(
        1.0, gt=0.0, le=60.0, description="time bound of one answer check"
    )
    seed: int = 0

    @model_validator(mode="after")
    def _teacher_given(self) -> DistillConfig:
        if self.enabled and not self.teacher:
            raise ValueError(
                "distill.enabled needs distill.teacher (a model directory, s3:// prefix or hub id)"
            )
        if self.keep_per_problem > self.samples_per_problem:
            raise ValueError(
                f"keep_per_problem ({self.keep_per_problem}) must be <= samples_per_problem ({self.samples_per_problem})"
            )
        return self


class DataConfig(_Strict):
    source: Literal["synthetic", "files"] = "synthetic"
    synthetic: SyntheticConfig = SyntheticConfig()
    sft_files: list[DatasetSource] = Field(default_factory=list)
    rl_files: list[DatasetSource] = Field(default_factory=list)
    eval_files: list[DatasetSource] = Field(default_factory=list)
    min_pixels: int = Field(3136, ge=784, description="images smaller than this are upscaled")
    max_pixels: int = Field(12544, ge=784, description="images larger than this are downscaled")
    skip_invalid: bool = Field(False, description="skip (and count) bad rows instead of failing")
    sft_holdout_fraction: float = Field(
        0.01, ge=0.0, lt=0.5, description="held out for SFT eval loss"
    )
    distill: DistillConfig = DistillConfig()
    seed: int = 0
    num_proc: int | None = Field(
        None,
        ge=1,
        description="worker processes that decode, validate and resize images; "
        "None = the CPUs the pod may use (affinity and cgroup quota)",
    )
    shards: int = Field(
        1,
        ge=1,
        le=256,
        description="data_prep pods on the cluster (files source): each prepares a share of the "
        "input files, a merge task dedups across them; 1 = one pod",
    )

    @model_validator(mode="after")
    def _pixels_ordered(self) -> DataConfig:
        if self.min_pixels > self.max_pixels:
            raise ValueError(
                f"min_pixels ({self.min_pixels}) must be <= max_pixels ({self.max_pixels})"
            )
        if self.source == "files" and not (self.sft_files or self.rl_files):
            raise ValueError("source 'files' needs sft_files and/or rl_files")
        if self.shards > 1 and self.source != "files":
            raise ValueError(
                "data.shards > 1 shards users' files; set data.source: files or shards: 1"
            )
        return self


ZeroStage = Literal["none", "zero2", "zero3"]


def check_lora_with_zero(lora_r: int, deepspeed: str) -> None:
    """LoRA adapters cannot be merged while ZeRO-3 partitions the weights they sit on (SFT and GRPO)."""
    if lora_r > 0 and deepspeed == "zero3":
        raise ValueError(
            "lora_r > 0 with deepspeed zero3 is not supported (merging partitioned adapters); use zero2"
        )


class TrainedWeightsConfig(_Strict):
    """What SFT and GRPO train and where they start: the same keys, the same meaning in both
    (components/common/trainable.py applies them). Defaults follow the paper: SFT freezes the
    vision tower, GRPO trains it (each section sets its own `freeze_vision_tower` default)."""

    freeze_vision_tower: bool = Field(
        True, description="freeze the vision encoder (its blocks and patch embedding)"
    )
    train_merger: bool = Field(
        True,
        description="train the vision-language merger (aligner) when the tower is frozen or "
        "under LoRA (then saved whole through modules_to_save)",
    )
    lora_r: int = Field(
        0,
        ge=0,
        description="0 = full fine-tune; >0 = LoRA on the language model's linear layers "
        "(the vision tower is then frozen whatever freeze_vision_tower says)",
    )
    lora_alpha: int = Field(16, ge=1)
    lora_dropout: float = Field(
        0.05, ge=0.0, lt=1.0, description="dropout on the LoRA adapters' input"
    )
    resume_from: str | None = Field(
        None,
        description="start from another run's checkpoints: a checkpoint root (folder or s3:// "
        "prefix holding checkpoint-<step>/) or one checkpoint-<step> folder; used only while "
        "this run has no checkpoint of its own (a run never resumes another's by itself)",
    )


class SFTConfig(TrainedWeightsConfig):
    """Cold-start supervised fine-tuning on structured chain-of-thought (paper section 3.1)."""

    enabled: bool = True
    system_prompt: str = PAPER_SYSTEM_PROMPT
    learning_rate: float = Field(1e-5, gt=0.0, le=1.0)
    lr_scheduler_type: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.1, ge=0.0, le=1.0)
    adam_beta1: float = Field(0.9, ge=0.0, lt=1.0)
    adam_beta2: float = Field(0.95, ge=0.0, lt=1.0)
    num_train_epochs: float = Field(3.0, gt=0.0)
    max_steps: int = Field(-1, ge=-1, description="-1 = run num_train_epochs")
    per_device_train_batch_size: int = Field(1, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    global_batch_size: int | None = Field(
        None, ge=1, description="checked against devices x batch x accumulation"
    )
    max_length: int = Field(4096, ge=16, description="tokens per sequence, image tokens included")
    overlong: Literal["truncate", "error"] = Field(
        "truncate",
        description="rows longer than max_length: cut the answer's tail, or fail naming the rows; "
        "rows whose prompt + image tokens alone exceed max_length are dropped (truncate) or fail (error)",
    )
    bf16: bool = False
    gradient_checkpointing: bool = False
    max_grad_norm: float = Field(1.0, gt=0.0)
    deepspeed: ZeroStage = Field(
        "none", description="ZeRO stage used when CUDA GPUs are present; ignored on CPU"
    )
    eval_steps: int = Field(0, ge=0, description="0 = evaluate at the end only")
    save_steps: int = Field(50, ge=1)
    save_total_limit: int = Field(2, ge=1)
    keep_checkpoints: bool = Field(
        False,
        description="keep <output>/checkpoints after the final save (to continue training later with a "
        "longer schedule); by default they are deleted once the model is saved, so the model artifact "
        "stays small (copies published to s3 stay)",
    )
    logging_steps: int = Field(1, ge=1)
    dataloader_num_workers: int = Field(
        0, ge=0, le=64, description="processes that run the collator"
    )
    seed: int = 0

    @model_validator(mode="after")
    def _lora_not_with_zero3(self) -> SFTConfig:
        check_lora_with_zero(self.lora_r, self.deepspeed)
        return self


class GRPOConfig(TrainedWeightsConfig):
    """GRPO with verifiable rewards (paper section 3.2; defaults from the authors' scripts)."""

    enabled: bool = True
    system_prompt: str = PAPER_SYSTEM_PROMPT
    rollout_backend: Literal["hf", "vllm"] = "hf"
    num_generations: int = Field(10, ge=2, description="rollouts per prompt (group size)")
    temperature: float = Field(0.7, gt=0.0, le=2.0)
    top_p: float = Field(0.99, gt=0.0, le=1.0)
    max_prompt_length: int = Field(2048, ge=16)
    max_completion_length: int = Field(2048, ge=1)
    rollout_batch_size: int = Field(512, ge=1, description="prompts per rollout batch")
    update_batch_size: int = Field(
        128, ge=1, description="prompts per optimizer update (x num_generations)"
    )
    micro_batch_size: int = Field(8, ge=1, description="sequences per forward/backward")
    learning_rate: float = Field(1e-6, gt=0.0, le=1.0)
    lr_scheduler_type: Literal["constant", "cosine", "linear"] = "constant"
    weight_decay: float = Field(1e-2, ge=0.0, le=1.0)
    clip_ratio_low: float = Field(0.2, ge=0.0, le=1.0)
    clip_ratio_high: float = Field(0.3, ge=0.0, le=10.0)
    clip_ratio_dual: float = Field(3.0, gt=1.0, description="dual-clip c for negative advantages")
    loss_agg_mode: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"] = (
        "token-mean"
    )
    kl_coef: float = Field(1e-2, ge=0.0, description="beta; 0 loads no reference model")
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    scale_rewards: bool = Field(True, description="False = Dr. GRPO (no std scaling)")
    advantage_eps: float = Field(1e-6, gt=0.0)
    max_grad_norm: float = Field(1.0, gt=0.0)
    reward_weights: dict[str, float] = Field(default_factory=lambda: {"accuracy": 1.0})
    reward_timeout_s: float = Field(
        1.0,
        gt=0.0,
        le=60.0,
        description="time bound of one completion's answer check; over it the completion "
        "scores 0 and counts in reward/timeouts",
    )
    reward_batch_deadline_s: float | None = Field(
        300.0,
        gt=0.0,
        description="time bound of scoring one rollout batch (answers are checked in parallel); "
        "completions not checked by then score 0 and count in reward/timeouts; null = none",
    )
    freeze_vision_tower: bool = Field(
        False, description="freeze the vision encoder; GRPO trains it by default, as the paper"
    )
    lora_dropout: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="dropout on the LoRA adapters' input; 0 by default in GRPO, where dropout "
        "would make the trained log-probs differ from those of the policy that sampled",
    )
    bf16: bool = False
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in the backward (GPU memory)"
    )
    total_steps: int = Field(60, ge=1, description="rollout batches")
    max_updates_per_rollout: int = Field(0, ge=0, description="0 = rollout/update batches")
    epochs_per_rollout: int = Field(
        1,
        ge=1,
        le=16,
        description="passes over each rollout batch; > 1 makes later updates off-policy (the clip acts)",
    )
    generation_batch_size: int = Field(
        64, ge=1, description="prompts per HF generate call (hf backend)"
    )
    warmup_ratio: float = Field(
        0.0, ge=0.0, lt=1.0, description="fraction of optimizer updates with linear warmup"
    )
    compute_entropy: bool = Field(
        True, description="log the policy entropy (one softmax over the vocabulary per token)"
    )
    vllm_gpu_memory_utilization: float = Field(
        0.3,
        gt=0.0,
        le=0.95,
        description="GPU memory share of the colocated vLLM engine (the rest trains)",
    )
    vllm_enable_sleep_mode: bool = Field(
        False, description="release vLLM's memory during updates (colocated)"
    )
    shard_optimizer_state: bool = Field(
        True,
        description="with several GPUs (one process each), split the AdamW state across them (ZeRO-1)",
    )
    deepspeed: ZeroStage = Field(
        "none",
        description="DeepSpeed ZeRO-2/3 engine for the policy (and reference) with CUDA GPUs, instead of our "
        "data parallelism (turns the default shard_optimizer_state off); ignored on CPU unless DS_ACCELERATOR=cpu",
    )
    save_steps: int = Field(20, ge=1)
    save_total_limit: int = Field(2, ge=1)
    min_pixels: int = Field(262_144, ge=784)
    max_pixels: int = Field(1_204_224, ge=784)
    seed: int = 0

    @model_validator(mode="after")
    def _batches_divide(self) -> GRPOConfig:
        if self.rollout_batch_size % self.update_batch_size:
            raise ValueError(
                f"rollout_batch_size ({self.rollout_batch_size}) must be a multiple of "
                f"update_batch_size ({self.update_batch_size})"
            )
        unknown = sorted(set(self.reward_weights) - {"accuracy", "format"})
        if unknown:
            raise ValueError(
                f"reward_weights has unknown rewards {unknown}; valid: ['accuracy', 'format']"
            )
        return self

    @model_validator(mode="after")
    def _one_way_to_shard(self) -> GRPOConfig:
        """DeepSpeed shards the optimizer state itself: the ZeRO-1 default steps aside, an explicit
        `shard_optimizer_state: true` next to it is a contradiction worth stopping on."""
        if self.deepspeed != "none" and self.shard_optimizer_state:
            if "shard_optimizer_state" in self.model_fields_set:
                raise ValueError(
                    f"deepspeed={self.deepspeed} shards the optimizer state itself; set shard_optimizer_state=false "
                    "with it (or deepspeed=none to keep ZeRO-1 through torch's ZeroRedundancyOptimizer)"
                )
            object.__setattr__(self, "shard_optimizer_state", False)
        check_lora_with_zero(self.lora_r, self.deepspeed)
        return self


class BenchmarkSpec(_Strict):
    """One eval set: the synthetic held-out split or a mirrored benchmark file (its published layout)."""

    name: Literal["synthetic", "mathvista", "wemath", "mathverse", "mathvision"]
    uri: str | None = Field(
        None,
        description="parquet file or folder (local or s3://); None for synthetic = data_prep's eval set",
    )
    split: str | None = Field(
        None,
        description="a DatasetDict split, or in a parquet folder only the files whose name starts with it "
        "(e.g. 'testmini' in a mirror of the MathVista repo)",
    )
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="renamed columns in a mirror: {published name: name in the file}",
    )
    where: dict[str, list[str | int]] = Field(
        default_factory=dict,
        description="keep rows whose column value is one of the listed values "
        "(e.g. {problem_version: [Vision Only]} for MathVerse)",
    )
    limit: int | None = Field(
        None, ge=1, description="evaluate the first N rows only (after `where`)"
    )
    metric: Literal["accuracy", "strict", "loose"] | None = Field(
        None,
        description="the number in the report's column: accuracy over questions, or We-Math's "
        "four-dimensional score (strict / loose); None = the official headline (We-Math: "
        "strict, the others: accuracy)",
    )

    @property
    def headline(self) -> str:
        """The metric in the report's column."""
        return self.metric or ("strict" if self.name == "wemath" else "accuracy")

    @model_validator(mode="after")
    def _uri_and_metric(self) -> BenchmarkSpec:
        if self.name != "synthetic" and not self.uri:
            raise ValueError(
                f"benchmark {self.name!r} needs a uri: a mirrored parquet file/folder (local or s3://)"
            )
        if self.metric not in (None, "accuracy") and self.name != "wemath":
            raise ValueError(
                f"metric {self.metric!r} is defined for wemath only; use 'accuracy' for {self.name!r}"
            )
        return self


DEFAULT_REFLECTION_PHRASES = [
    "wait",
    "let me re-check",
    "let me recheck",
    "let me check",
    "double-check",
    "re-examine",
    "re-evaluate",
    "reconsider",
    "however",
    "hmm",
    "on second thought",
    "i made a mistake",
]


class ExtractorConfig(_Strict):
    """An OpenAI-compatible chat endpoint (vLLM, an external API) that extracts and judges answers
    where the official MathVista / MathVerse pipelines call GPT. Responses are cached by request."""

    base_url: str = Field(
        ...,
        min_length=1,
        description="the API root, e.g. http://judge-vllm:8000/v1 or https://api.openai.com/v1",
    )
    model: str = Field(..., min_length=1, description="model name sent in each request")
    api_key_env: str | None = Field(
        None,
        description="name of the env var holding the API key (from a Kubernetes Secret); "
        "None = no Authorization header (a vLLM server without --api-key)",
    )
    api_key_secret: str | None = Field(
        None,
        description="on the cluster: the Kubernetes Secret whose key `api_key_env` holds the API "
        "key, exposed to the eval pod as that env var (the name only, never the value)",
    )
    max_concurrency: int = Field(8, ge=1, le=256, description="requests in flight at once")
    timeout_s: float = Field(60.0, gt=0.0, description="time limit of one HTTP call")
    max_retries: int = Field(
        5, ge=0, le=20, description="retries of a failed call (429, 5xx, connection), backoff"
    )
    backoff_s: float = Field(1.0, ge=0.0, description="first retry waits this long, then doubles")
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    max_tokens: int = Field(256, ge=1, description="tokens of one extraction / judgement")

    @model_validator(mode="after")
    def _secret_needs_env(self) -> ExtractorConfig:
        if self.api_key_secret and not self.api_key_env:
            raise ValueError(
                "api_key_secret needs api_key_env: the env var (and Secret key) to use"
            )
        return self


ScoringMode = Literal["official", "strict"]


def _every_scoring_mode() -> list[ScoringMode]:
    return ["official", "strict"]


class EvalConfig(_Strict):
    """Greedy evaluation of one or more models on the benchmarks, scored as each benchmark does."""

    enabled: bool = True
    system_prompt: str = PAPER_SYSTEM_PROMPT
    benchmarks: list[BenchmarkSpec] = Field(
        default_factory=lambda: [BenchmarkSpec(name="synthetic")], min_length=1
    )
    max_new_tokens: int = Field(2048, ge=1)
    batch_size: int = Field(16, ge=1)
    backend: Literal["hf", "vllm"] = "hf"
    answer_timeout_s: float = Field(1.0, gt=0.0, le=60.0)
    min_pixels: int | None = Field(
        None, ge=784, description="image lower bound; None = the model's processor config"
    )
    max_pixels: int | None = Field(
        None, ge=784, description="image upper bound; None = the model's processor config"
    )
    sort_by_length: bool = Field(
        True, description="batch prompts of similar length together (less padding)"
    )
    gpu_memory_utilization: float = Field(
        0.85, gt=0.0, le=1.0, description="vLLM backend: share of GPU memory"
    )
    max_model_len: int | None = Field(
        None, ge=64, description="vLLM backend: context length (None = the model's)"
    )
    scoring: list[ScoringMode] = Field(
        default_factory=_every_scoring_mode,
        min_length=1,
        description="scoring modes, each reported: 'official' = each benchmark's official scorer "
        "and rules, 'strict' = the last \\boxed{} as the GRPO reward checks it; the first one "
        "fills the report's main table and the `score` metrics",
    )
    extractor: ExtractorConfig | None = Field(
        None,
        description="LLM answer extractor / judge for 'official' mode (MathVista, MathVerse); "
        "None = rule-based extraction in its place (the report says so)",
    )
    reflection_phrases: list[str] = Field(
        default_factory=lambda: list(DEFAULT_REFLECTION_PHRASES),
        description="'aha moment' phrases (case-insensitive, whole words): the report gives the "
        "share of responses with one and the accuracy with and without",
    )

    @model_validator(mode="after")
    def _unique_benchmarks(self) -> EvalConfig:
        names = [b.name for b in self.benchmarks]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"benchmarks listed more than once: {repeated}")
        if self.min_pixels and self.max_pixels and self.min_pixels > self.max_pixels:
            raise ValueError(
                f"min_pixels ({self.min_pixels}) must be <= max_pixels ({self.max_pixels})"
            )
        if len(set(self.scoring)) != len(self.scoring):
            raise ValueError(f"scoring modes listed more than once: {self.scoring}")
        return self


class TrackingConfig(_Strict):
    """MLflow: where runs go and how a stage behaves when the tracking server is down or slow.

    Logging never blocks training: MLflow's asynchronous logging sends the calls; what an
    unreachable server did not take is kept (up to spill_max_entries) and sent when it is back.
    See docs/tracking.md.
    """

    experiment: str = Field("coldstart", min_length=1)
    tracking_uri: str | None = Field(
        None, description="default: $MLFLOW_TRACKING_URI, else sqlite under output_dir"
    )
    _no_file_store = field_validator("tracking_uri")(refuse_file_store)
    run_name: str | None = None
    register_model_name: str | None = Field(
        None,
        min_length=1,
        description="register the final model (SFT, GRPO) under this name in the MLflow model registry",
    )
    system_metrics: bool = Field(
        True, description="log CPU, memory, disk, network (and GPU) as system/* metrics"
    )
    system_metrics_interval_s: float = Field(
        10.0, ge=0.05, le=3600.0, description="seconds between system samples"
    )
    start_timeout_s: float = Field(
        10.0,
        ge=0.0,
        le=600.0,
        description="stage start waits this long for the server; then the stage goes on and runs are created later",
    )
    flush_timeout_s: float = Field(
        60.0,
        ge=0.0,
        le=86_400.0,
        description="at stage end, how long to wait for an unreachable server before spilling the buffered "
        "logs to <output_dir>/mlflow/pending (replayed by the next stage or `coldstart runs sync`)",
    )
    spill_max_entries: int = Field(
        100_000,
        ge=1,
        le=10_000_000,
        description="most log calls kept while the server is unreachable; beyond it the oldest are "
        "dropped, with a warning and a count",
    )
    log_model: bool = Field(
        True,
        description="log the final SFT/GRPO model in MLflow's transformers format (loads it once "
        "on CPU at the end of the stage; turn off for models too big for that)",
    )


class PipelineConfig(_Strict):
    """The whole run: one file describes data, the three training/eval stages and tracking."""

    name: str = Field("coldstart", pattern=r"^[a-z0-9][a-z0-9-]*$")
    output_dir: str = Field(
        "outputs", description="local folder (relative to the working dir) or s3:// prefix"
    )
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    sft: SFTConfig = SFTConfig()
    grpo: GRPOConfig = GRPOConfig()
    eval: EvalConfig = EvalConfig()
    tracking: TrackingConfig = TrackingConfig()
    ablation: bool = Field(
        False, description="also train RL-only (GRPO from the base) and eval all four models"
    )
    cluster: dict[str, Any] = Field(
        default_factory=dict,
        exclude=True,
        description="Kubernetes settings (pods, volumes, images, credentials): validated by "
        "pipelines/cluster_config.py, not part of the training config (left out of the JSON the "
        "stages get, of digest() and of the MLflow params)",
    )

    @model_validator(mode="before")
    @classmethod
    def _resources_moved(cls, data: Any) -> Any:
        """Configs written before the split put pod sizes next to the hyperparameters."""
        if not isinstance(data, dict):
            return data
        moved = [
            f"{s}.resources" for s in ("sft", "grpo", "eval") if "resources" in (data.get(s) or {})
        ]
        moved += ["data_prep_resources"] if "data_prep_resources" in data else []
        if moved:
            raise ValueError(
                f"{', '.join(moved)} moved to the cluster section: write them as "
                "cluster.resources.<data_prep|sft|grpo|eval> (same keys; docs/kubernetes.md)"
            )
        return data

    @model_validator(mode="after")
    def _ablation_needs_both_stages(self) -> PipelineConfig:
        if self.ablation and not (self.sft.enabled and self.grpo.enabled and self.eval.enabled):
            raise ValueError(
                "ablation needs sft, grpo and eval enabled (it compares base, SFT, RL and SFT+RL)"
            )
        return self

    def to_json(self) -> str:
        return self.model_dump_json()

    def digest(self) -> str:
        """Short stable hash, tagged on MLflow runs so two runs of one config can be found."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


# --------------------------------------------------------------------------- loading


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid config ({source}):"]
    for item in err.errors():
        path = ".".join(str(p) for p in item["loc"]) or "<root>"
        got = item.get("input")
        got_txt = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  {path}: {item['msg']}{got_txt}")
    return "\n".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`sft.learning_rate=2e-5` -> (['sft', 'learning_rate'], 2e-05); values are YAML scalars."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. sft.learning_rate=2e-5")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {text!r}: empty key")
    return parts, yaml.safe_load(raw) if raw.strip() else ""


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        parts, value = parse_override(text)
        node = data
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {text!r}: {part!r} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return data


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None
) -> PipelineConfig:
    """Read a YAML config (or the defaults), apply `--set` overrides, validate."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(
                f"config file {path} does not exist; see configs/ for examples"
            ) from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        data = loaded or {}
    data = apply_overrides(data, overrides or [])
    if overrides:
        source += " + --set " + " ".join(overrides)
    return config_from_dict(data, source)


def config_from_dict(data: dict[str, Any], source: str = "config") -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None


def config_from_json(text: str) -> PipelineConfig:
    """The form in which components receive the config (a pipeline parameter)."""
    return config_from_dict(json.loads(text), "pipeline parameter config_json")


def flatten(config: BaseModel, prefix: str = "") -> dict[str, Any]:
    """Dotted keys for MLflow params (`sft.learning_rate`)."""
    out: dict[str, Any] = {}
    for key, value in config.model_dump(mode="json").items():
        _flatten_into(out, f"{prefix}{key}", value)
    return out


def _flatten_into(out: dict[str, Any], key: str, value: Any) -> None:
    if isinstance(value, dict) and value:
        for sub, val in value.items():
            _flatten_into(out, f"{key}.{sub}", val)
    else:
        out[key] = value
