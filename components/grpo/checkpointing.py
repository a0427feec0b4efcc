"""Save and resume GRPO mid-run: weights, optimizer, scheduler, RNG, step and metric history.

A checkpoint is staged in a local folder, then published to the checkpoint root (a local
folder or an ``s3://`` prefix) with ``coldstart.common.checkpoints``: it counts only once its
COMPLETE marker is written, so a pod killed mid-upload resumes from the previous one. The
data order needs no state of its own: it is a function of (seed, step) (see data.py); the
sampler's parameters are stored to catch a resume against a different dataset or batch size.

Files of ``checkpoint-<step>/``:
    model.safetensors     every parameter of the policy (LoRA adapters included), whole under ZeRO-3 too
    trainer_state.pt      optimizer, scheduler, RNG states, step, data order, metric history, and the
                          optimizer's layout (plain, or the DeepSpeed stage and process count)
    zero-rank<r>-of-<n>.pt   with grpo.deepspeed only: rank r's ZeRO partition of the optimizer state
    config.json           the resolved GRPO config of the run that wrote it

The plain engine's optimizer state is consolidated (any number of ranks resumes it); a ZeRO
state resumes only into the same stage and process count, and a mismatch is an error naming
grpo.deepspeed, before anything is loaded (the checkpoint stays as it is).
"""

from __future__ import annotations

import logging
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from coldstart.common import checkpoints, storage
from coldstart.common.errors import InputError
from coldstart.grpo.data import PromptOrder
from coldstart.grpo.distributed import World, barrier, gather_objects
from coldstart.grpo.engine import PLAIN_LAYOUT, PolicyEngine

log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
STATE = "trainer_state.pt"


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpointer:
    """Writes ``checkpoint-<step>`` under ``root`` every save and resumes from the newest complete one."""

    def __init__(
        self,
        root: str,
        scratch_dir: str | Path,
        keep: int = 2,
        config_json: str = "{}",
        resume_from: str | None = None,
    ) -> None:
        self.root = str(root)
        self.scratch = Path(scratch_dir)
        self.keep = keep
        self.config_json = config_json
        self.resume_from = resume_from  # another run's checkpoints, used while `root` has none

    def save(
        self,
        step: int,
        engine: PolicyEngine,
        order: PromptOrder,
        history: list[dict[str, float]],
        world: World = World(),
    ) -> str:
        """Every rank calls this (weights may be gathered, optimizer state and RNG streams are collected,
        ZeRO ranks write their partitions); rank 0 writes the rest and publishes."""
        local = self.scratch / checkpoints.checkpoint_name(step)
        if world.is_main:
            shutil.rmtree(local, ignore_errors=True)
            local.mkdir(parents=True)
        barrier(world)  # the folder exists before any rank writes into it
        engine.save_weights(local / WEIGHTS)
        opt_state = engine.optimizer_state(local)
        rngs = gather_objects(rng_state(), world)
        barrier(world)  # every rank's files are in `local`
        uri = checkpoints.checkpoint_name(step)
        if world.is_main:
            uri = self._publish(step, local, opt_state, engine, order, history, rngs)
        barrier(world)
        return uri

    def _publish(
        self,
        step: int,
        local: Path,
        opt_state: Any,
        engine: PolicyEngine,
        order: PromptOrder,
        history: list[dict[str, float]],
        rngs: list[Any],
    ) -> str:
        torch.save(
            {
                "step": step,
                "optimizer": opt_state,
                "layout": engine.layout(),
                "scheduler": engine.scheduler.state_dict(),
                "rng": rngs,  # one per rank
                "data": order.state(),
                "history": history,
            },
            local / STATE,
        )
        (local / "config.json").write_text(self.config_json)
        uri = checkpoints.publish_checkpoint(local, self.root)
        shutil.rmtree(local, ignore_errors=True)
        checkpoints.prune_checkpoints(self.root, self.keep)
        log.info("checkpoint at step %d: %s", step, uri)
        return uri

    def resume(
        self, engine: PolicyEngine, order: PromptOrder, world: World = World()
    ) -> tuple[int, list[dict[str, float]]]:
        """Load the newest complete checkpoint of this run into the engine (every rank calls this);
        without one, `resume_from`'s; (0, []) when there is none."""
        uri = checkpoints.latest_complete_checkpoint(self.root)
        if uri is None and self.resume_from is not None:
            uri = explicit_checkpoint(self.resume_from)
            log.info("starting from %s (grpo.resume_from)", uri)
        if uri is None:
            return 0, []
        local = Path(uri)
        if storage.is_s3(uri):
            local = self.scratch / "resume"
            if world.is_main:
                checkpoints.fetch_checkpoint(uri, local)
            barrier(world)  # the other ranks of this pod read rank 0's download
        state = torch.load(local / STATE, map_location="cpu", weights_only=False)
        if state["data"] != order.state():
            raise InputError(
                f"{uri}: checkpoint was written for data order {state['data']}, this run has {order.state()} "
                "(a different dataset size, rollout_batch_size or seed); use a new checkpoint root to start over"
            )
        check_layout(state.get("layout", PLAIN_LAYOUT), engine.layout(), uri)
        engine.load_weights(local / WEIGHTS)
        engine.load_optimizer_state(state["optimizer"], local)
        engine.scheduler.load_state_dict(state["scheduler"])
        rngs = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]
        if len(rngs) == world.size:
            set_rng_state(rngs[world.rank])
        else:
            log.warning(
                "checkpoint has RNG states of %d processes, this run has %d: sampling is reseeded",
                len(rngs),
                world.size,
            )
            torch.manual_seed(hash((state["step"], world.rank)) % 2**31)
        log.info("resumed from %s at step %d", uri, state["step"])
        return int(state["step"]), list(state["history"])


def explicit_checkpoint(resume_from: str) -> str:
    """`grpo.resume_from`: one complete checkpoint-<step> folder, or the newest complete one of a
    checkpoint root (local folder or s3:// prefix); an error naming the key when there is none."""
    if checkpoints.parse_step(resume_from) is not None:
        if checkpoints.is_complete(resume_from):
            return resume_from
    elif (uri := checkpoints.latest_complete_checkpoint(resume_from)) is not None:
        return uri
    raise InputError(
        f"grpo.resume_from={resume_from}: no complete checkpoint there (a checkpoint-<step> folder "
        f"with its {checkpoints.MARKER} marker, or a folder holding them)"
    )


def describe_layout(layout: dict[str, Any]) -> str:
    if layout.get("deepspeed", "none") == "none":
        return "grpo.deepspeed=none"
    return f"grpo.deepspeed={layout['deepspeed']} over {layout['world_size']} processes"


def check_layout(saved: dict[str, Any], current: dict[str, Any], uri: str) -> None:
    """A checkpoint's optimizer state loads only into the layout that wrote it; say what to change if not."""
    if saved != current:
        raise InputError(
            f"{uri}: its optimizer state was written with {describe_layout(saved)}, this run has "
            f"{describe_layout(current)}; resume with the same grpo.deepspeed and number of GPUs, or use a new "
            "output (checkpoint root) to start over (the checkpoint is left as it is)"
        )
