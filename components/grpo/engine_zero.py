"""The ZeRO engine (`grpo.deepspeed: zero2|zero3`): the policy, and its frozen reference, as
DeepSpeed engines, configured from the shared ZeRO files (components/common/zero.py).

The update must stay the one the plain engine (engine_plain.py) computes:

- Each micro-batch's loss is already divided by the whole mini-batch's token/sequence counts
  summed over ranks, so gradients are to be *summed* over ranks and accumulated unscaled.
  ZeRO averages over ranks, hence `backward(loss * world_size, scale_wrt_gas=False)`. The
  accumulation boundary is set by hand on each update's last micro-batch (the last update of a
  rollout may be shorter), so `gradient_accumulation_steps` in the config only describes the
  usual count. Every rank runs as many micro-batches as every other (the set's over-long
  prompts are dropped at load, see engine.py), so ZeRO's collectives stay in step.
- Clipping is DeepSpeed's (`gradient_clipping` = `max_grad_norm`, over the global norm, the
  same formula as torch's); AdamW and the schedule are ours (the client optimizer; DeepSpeed
  partitions its state and keeps fp32 master weights).
- ZeRO-3 partitions every weight. HF generation, pushing weights to vLLM and writing a
  checkpoint need them whole: `full_weights` gathers them and removes DeepSpeed's per-module
  hooks meanwhile (as TRL does for generation), so each rank generates on its own.
- Checkpoints keep our format: `model.safetensors` holds the whole model (gathered) and loads
  without DeepSpeed; next to it each rank writes its ZeRO partition of the optimizer
  (DeepSpeed's own optimizer state_dict, fp32 master weights included) as
  `zero-rank<r>-of-<n>.pt`. Resuming that state needs the same stage and number of processes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
import torch.distributed as dist

from coldstart.common.config import GRPOConfig
from coldstart.common.zero import model_width, resolve_auto, width_buckets, zero_template
from coldstart.grpo.distributed import World
from coldstart.grpo.engine import DataParallel, merged, reference_of, write_model_dir
from coldstart.grpo.optimizer import build_optimizer

log = logging.getLogger(__name__)


def micro_batches_per_update(cfg: GRPOConfig, world_size: int) -> int:
    """Micro-batches a rank runs per optimizer update when the prompts divide evenly."""
    return max(
        1, -(-(cfg.update_batch_size // world_size * cfg.num_generations) // cfg.micro_batch_size)
    )


def deepspeed_config(cfg: GRPOConfig, world_size: int, hidden_size: int) -> dict[str, Any]:
    """The shared ZeRO file of `cfg.deepspeed` with its "auto" values filled from `grpo.*`."""
    accumulation = micro_batches_per_update(cfg, world_size)
    values = {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": accumulation,
        "train_batch_size": cfg.micro_batch_size * accumulation * world_size,
        "gradient_clipping": cfg.max_grad_norm,
        "bf16.enabled": cfg.bf16,
        "fp16.enabled": False,
        **width_buckets(hidden_size),
    }
    return resolve_auto(zero_template(cfg.deepspeed), values)


def reference_config(config: dict[str, Any]) -> dict[str, Any]:
    """Inference-only engine for the frozen reference (as TRL's `prepare_deepspeed`): partitioned
    like the policy under ZeRO-3; under ZeRO-2 a plain replica (stage 0), in the same dtype."""
    ref = {**config, "zero_optimization": dict(config["zero_optimization"])}
    if ref["zero_optimization"]["stage"] != 3:
        ref["zero_optimization"] = {"stage": 0}
    return ref


def ensure_process_group(world: World) -> None:
    """DeepSpeed wants LOCAL_RANK and a process group; one process (one GPU) gets a group of one."""
    os.environ.setdefault("LOCAL_RANK", str(world.local_rank))
    os.environ.setdefault("RANK", str(world.rank))
    os.environ.setdefault("WORLD_SIZE", str(world.size))
    if not dist.is_initialized():
        from coldstart.common.generation import _free_port

        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(
            backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1
        )


def _trained_dtype(policy: torch.nn.Module, cfg: GRPOConfig) -> None:
    """Without bf16 DeepSpeed trains the weights as they are: make them fp32 (its bf16 mode casts them itself)."""
    dtype = next(policy.parameters()).dtype
    if not cfg.bf16 and dtype != torch.float32:
        log.info("grpo.deepspeed without grpo.bf16: %s weights cast to float32 for training", dtype)
        policy.float()


class ZeroEngine(DataParallel):
    """The policy as a DeepSpeed ZeRO-2/3 engine (see the module docstring for what keeps the
    math); a frozen `reference` copy becomes an inference-only DeepSpeed engine (partitioned like
    the policy under ZeRO-3); without one, LoRA's reference is the policy with adapters off."""

    def __init__(
        self,
        policy: torch.nn.Module,
        cfg: GRPOConfig,
        world: World,
        stage: str,
        reference: torch.nn.Module | None = None,
    ) -> None:
        import deepspeed

        ensure_process_group(world)
        _trained_dtype(policy, cfg)
        self.stage = stage
        self.config = deepspeed_config(
            cfg.model_copy(update={"deepspeed": stage}), world.size, model_width(policy)
        )
        optimizer, self.scheduler = build_optimizer(
            policy, cfg
        )  # torch AdamW; DeepSpeed partitions its state
        self.engine, *_ = deepspeed.initialize(
            model=policy, optimizer=optimizer, config=self.config
        )
        self.module = self.engine.module
        self.forward = self.engine
        self.world = world
        self.ref = reference_engine(reference, self.config) if reference is not None else None

    def zero_grad(self) -> None:
        """Nothing to do: DeepSpeed clears the gradients after each step."""

    def backward(self, loss: torch.Tensor, boundary: bool) -> None:
        self.engine.set_gradient_accumulation_boundary(boundary)
        self.engine.backward(
            loss * self.world.size, scale_wrt_gas=False
        )  # ZeRO averages over ranks; we sum

    def step(self) -> float:
        self.engine.step()  # reduces the last buckets, clips to max_grad_norm, AdamW step, zeroes gradients
        self.scheduler.step()  # ours, on the client optimizer's param groups (DeepSpeed keeps them)
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def autocast(self, device: torch.device) -> AbstractContextManager[Any]:
        return (
            nullcontext()
        )  # bf16 runs on bf16 weights (fp32 masters in the optimizer), not autocast

    def reference(self) -> AbstractContextManager[torch.nn.Module]:
        return reference_of(self.ref, self.module, self.forward)

    def full_weights(self) -> AbstractContextManager[torch.nn.Module]:
        return full_weights(self.engine)

    def save_model(self, out: Path, processor: Any) -> None:
        """Gathered on every rank (ZeRO-3), written by rank 0 as standalone copies."""
        with self.full_weights() as policy:
            if self.world.is_main:
                model = merged(policy)
                write_model_dir(model, processor, out, standalone_state_dict(model))

    def layout(self) -> dict[str, Any]:
        return {"deepspeed": self.stage, "world_size": self.world.size}

    def save_weights(self, path: Path) -> None:
        """Every rank calls this (ZeRO-3 gathers); rank 0 writes standalone copies (ZeRO-2's weights are
        views into one flat buffer, which safetensors refuses to write as they are)."""
        with self.full_weights() as policy:
            if self.world.is_main:
                safetensors.torch.save_file(standalone_state_dict(policy), str(path))

    def optimizer_state(self, folder: Path) -> Any:
        """Each rank writes its own partition next to the weights; the layout goes into trainer_state.pt."""
        rank, size = self.world.rank, self.world.size
        torch.save(self.engine.optimizer.state_dict(), folder / shard_name(rank, size))
        return self.layout()

    def load_weights(self, path: Path) -> None:
        """Whole weights into the (ZeRO-3: gathered) parameters; rank 0's copy is what every rank keeps."""
        with _gathered(self.engine, modifier_rank=0) as module:
            if self.world.is_main or self.stage != "zero3":
                load_standalone_state_dict(module, path)

    def load_optimizer_state(self, state: Any, folder: Path) -> None:
        """This rank's partition, fp32 master weights included (ZeRO-3 copies them into its weight shards)."""
        optimizer = self.engine.optimizer
        own = torch.load(
            folder / shard_name(self.world.rank, self.world.size),
            map_location="cpu",
            weights_only=False,
        )
        shards: list[Any] = [None] * self.world.size
        shards[self.world.rank] = (
            own  # DeepSpeed reads the entry of this rank only (non-elastic checkpoints)
        )
        if hasattr(optimizer, "checkpoint_event_prologue"):
            optimizer.checkpoint_event_prologue()
        optimizer.load_state_dict(shards, load_optimizer_states=True, load_from_fp32_weights=True)
        if hasattr(optimizer, "checkpoint_event_epilogue"):
            optimizer.checkpoint_event_epilogue()


def standalone_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The module's state as CPU tensors of their own; a weight tied to an earlier one is kept once
    (as safetensors' save_model does; loading ties it again)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, tuple[int, ...]]] = set()
    for name, tensor in module.state_dict().items():
        key = (tensor.data_ptr(), tuple(tensor.shape))
        if key in seen and tensor.numel():
            continue
        seen.add(key)
        out[name] = tensor.detach().to("cpu", copy=True).contiguous()
    return out


def load_standalone_state_dict(module: torch.nn.Module, path: Path) -> None:
    """Load a safetensors file into the module's tensors in place, strictly: every file key is known,
    every weight is set (a tied one through its twin). safetensors' load_model refuses ZeRO-2's views."""
    state = safetensors.torch.load_file(str(path))
    missing, unexpected = module.load_state_dict(state, strict=False)
    own = module.state_dict()
    loaded = {(own[k].data_ptr(), tuple(own[k].shape)) for k in state if k in own}
    missing = [k for k in missing if (own[k].data_ptr(), tuple(own[k].shape)) not in loaded]
    if missing or unexpected:
        raise ValueError(
            f"{path}: weights do not match the policy (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )


def shard_name(rank: int, size: int) -> str:
    return f"zero-rank{rank}-of-{size}.pt"


def reference_engine(ref: torch.nn.Module, config: dict[str, Any]) -> Any:
    """The frozen reference as an inference-only DeepSpeed engine (no optimizer), in eval mode."""
    import deepspeed

    engine, *_ = deepspeed.initialize(model=ref, config=reference_config(config))
    engine.eval()
    return engine


def is_zero3(engine: Any) -> bool:
    return hasattr(engine, "zero_optimization_stage") and engine.zero_optimization_stage() == 3


@contextmanager
def _gathered(engine: Any, modifier_rank: int | None = None) -> Iterator[torch.nn.Module]:
    """ZeRO-3: every parameter whole on every rank; on exit, rank `modifier_rank`'s values are kept."""
    if not is_zero3(engine):
        yield engine.module
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(
        list(engine.module.parameters()), modifier_rank=modifier_rank
    ):
        yield engine.module


@contextmanager
def full_weights(engine: Any) -> Iterator[torch.nn.Module]:
    """The module with whole weights and without ZeRO-3's hooks, for use on this rank alone.

    Inside, forwards run without collectives (no weight gathers, no trace checks), so ranks may
    generate different numbers of tokens or prompts, or none. Changes to the weights are
    discarded on exit. Every rank must enter it together (gathering is a collective). ZeRO-2: a no-op.
    """
    with _gathered(engine) as module:
        if not is_zero3(engine):
            yield module
            return
        offload = _parameter_offload(engine)
        start_hook = _detach_hooks(offload)
        try:
            yield module
        finally:
            _reattach_hooks(offload, start_hook)


def _parameter_offload(engine: Any) -> Any:
    """The object holding ZeRO-3's module hooks: the stage-3 optimizer's, or the inference engine's own."""
    return getattr(engine.optimizer, "parameter_offload", engine.optimizer)


def _detach_hooks(offload: Any) -> Callable[..., Any]:
    """Remove ZeRO-3's hooks (TRL does the same for generation): the per-module gather/release hooks,
    and the root's start-of-forward hook, whose trace check is a collective. Returns the latter."""
    handle = offload.fwd_pre_hook
    start_hook: Callable[..., Any] = handle.hooks_dict_ref()[handle.id]
    handle.remove()
    for param in offload.module.parameters():
        param.ds_active_sub_modules.clear()  # gathered on purpose: no module holds them
    for hook in [*offload.forward_hooks, *offload.backward_hooks]:
        hook.remove()
    offload.forward_hooks, offload.backward_hooks = [], []
    return start_hook


def _reattach_hooks(offload: Any, start_hook: Callable[..., Any]) -> None:
    """Put the hooks back in their first order (the start hook first); this also resets the prefetch trace."""
    offload.fwd_pre_hook = offload.module.register_forward_pre_hook(start_hook)
    offload._register_deepspeed_module(offload.module)
