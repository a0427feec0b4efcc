"""Data-parallel GRPO (several processes, here gloo on CPU) equals one process holding the whole batch.

Each rank gets every world-th prompt of the rollout batch (as `shard` does); with the global
normalisers and summed gradients, the weights after the updates must match a single process
that updates on the whole batch, with and without a sharded optimizer (ZeRO-1). Over-long prompts are dropped
when the set is loaded (every rank drops the same rows), so every rank holds as many prompts as
every other at every step.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from coldstart.common.models import load_model
from coldstart.grpo.distributed import World
from coldstart.grpo.engine_plain import PlainEngine
from coldstart.grpo.trainer import update_policy
from tests.grpo.conftest import ROOT, TINY_CONFIG, tiny_config
from tests.grpo.test_logprobs import sampled_batch

# lr is tiny so that the second update's gradients are taken at (almost) the same weights on both
# sides; the comparison is of gradients, which must agree to float32 summation noise.
SETTINGS = ("grpo.rollout_batch_size=4", "grpo.update_batch_size=2", "grpo.num_generations=3", "grpo.micro_batch_size=2",
            "grpo.kl_coef=0.05", "grpo.learning_rate=1e-6", "grpo.weight_decay=0.0")  # fmt: skip


def make_problem(tiny_assets, tiny_policy):
    model, processor, _ = tiny_policy
    cfg = tiny_config(*SETTINGS).grpo
    batch = sampled_batch(tiny_assets, model, processor, G=3, tokens=6, rows=(0, 40, 90, 7))
    # 4 prompts: each rank gets 2, one per update (update batch = half the rollout batch)
    gen = torch.Generator().manual_seed(0)
    batch.advantages = torch.randn(len(batch), generator=gen)
    with torch.no_grad():
        from coldstart.grpo.logprobs import completion_logprobs

        logps, _ = completion_logprobs(model, batch)
    batch.old_logps = logps + 0.05 * torch.randn(logps.shape, generator=gen)
    batch.ref_logps = logps + 0.2 * torch.randn(logps.shape, generator=gen)
    return model, cfg, batch


def rank_rows(batch, rank: int, size: int) -> torch.Tensor:
    prompts = torch.arange(int(batch.prompt_index.max()) + 1)[rank::size]
    return torch.nonzero(torch.isin(batch.prompt_index, prompts)).flatten()


def _worker(rank: int, size: int, tmp: str, shard_state: bool) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=size
    )
    torch.set_num_threads(1)
    model, cfg, batch = torch.load(f"{tmp}/problem.pt", weights_only=False)
    cfg = cfg.model_copy(update={"shard_optimizer_state": shard_state})
    world = World(rank, size, 0)
    update = update_policy(
        PlainEngine(model, cfg, world), batch.select(rank_rows(batch, rank, size)), cfg
    )
    if rank == 0:
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        torch.save(
            {"state": model.state_dict(), "grads": grads, "update": update}, f"{tmp}/rank0.pt"
        )
    dist.destroy_process_group()


@pytest.mark.parametrize("shard_state", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_two_ranks_update_like_one_process(tiny_assets, tiny_policy, tmp_path, shard_state):
    model, cfg, batch = make_problem(tiny_assets, tiny_policy)
    torch.save((model, cfg, batch), tmp_path / "problem.pt")

    single = update_policy(PlainEngine(model, cfg), batch, cfg)
    mp.start_processes(
        _worker, args=(2, str(tmp_path), shard_state), nprocs=2, join=True, start_method="spawn"
    )
    two = torch.load(tmp_path / "rank0.pt", weights_only=False)

    # the last update's gradients (summed over ranks, clipped) equal the single process's
    assert two["update"]["grad_norm"] == pytest.approx(single["grad_norm"], rel=1e-5)
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads.keys() == two["grads"].keys()
    for name, grad in grads.items():
        torch.testing.assert_close(two["grads"][name], grad, rtol=1e-4, atol=1e-7)
    # and so do the weights (Adam moves each by about lr per update, whatever the gradient's size,
    # so float noise in a near-zero gradient can flip a step: bound by 2 x lr per update)
    start = torch.load(tmp_path / "problem.pt", weights_only=False)[0].state_dict()
    moved = max((v - start[k]).abs().max().item() for k, v in model.state_dict().items())
    worst = max((two["state"][k] - v).abs().max().item() for k, v in model.state_dict().items())
    assert moved > 0 and worst <= 2 * 2 * cfg.learning_rate, (worst, moved)


ZERO3_ON_CPU = ("grpo.deepspeed=zero3", "grpo.shard_optimizer_state=false")


@pytest.mark.slow
@pytest.mark.parametrize(
    "zero", [pytest.param((), id="plain"), pytest.param(ZERO3_ON_CPU, id="deepspeed-zero3")]
)
def test_stage_under_torchrun_on_cpu(tiny_assets, tmp_path, zero):
    """`torchrun --nproc_per_node 2 -m coldstart.grpo` (gloo): both ranks train, rank 0 logs and
    saves, and a rerun resumes from the checkpoint with both ranks' RNG streams. With ZeRO-3 on
    DeepSpeed's CPU accelerator (its first use compiles a CPU kernel once, ~70 s)."""
    out = tmp_path / "model"
    sets = [a for s in (*SETTINGS, *zero, "grpo.total_steps=2", "grpo.save_steps=1", "grpo.max_completion_length=8",
                        f"output_dir={tmp_path / 'runs'}") for a in ("--set", s)]  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "coldstart.grpo",
           "--config", str(TINY_CONFIG), *sets, "--init-model", str(tiny_assets["model"]), "--data", str(tiny_assets["rl"]),
           "--output", str(out), "--run-id", "ddp", "--result-json", str(tmp_path / "summary.json")]  # fmt: skip
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "DS_ACCELERATOR": "cpu",
    }
    first = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-4000:]
    assert json.loads((tmp_path / "summary.json").read_text())["grpo/steps"] == 2
    history = json.loads((out / "grpo_history.json").read_text())
    assert [h["step"] for h in history] == [1, 2]
    assert history[0]["completions/mean_length"] > 0

    cmd[cmd.index("grpo.total_steps=2")] = "grpo.total_steps=3"
    second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-4000:]
    assert "resumed from" in second.stderr and "at step 2" in second.stderr
    assert [h["step"] for h in json.loads((out / "grpo_history.json").read_text())] == [1, 2, 3]


# --------------------------------------------------------------------------- over-long rows, dropped at load

LONG = (
    " Explain every step of the count in great detail." * 8
)  # ~190 more tokens: prompts of ~250 > 128
DROPPING = ("grpo.rollout_batch_size=4", "grpo.update_batch_size=4", "grpo.num_generations=2", "grpo.micro_batch_size=2",
            "grpo.max_completion_length=6", "grpo.max_prompt_length=128", "grpo.kl_coef=0.05", "grpo.learning_rate=1e-3",
            "grpo.shard_optimizer_state=false")  # fmt: skip


def _dropping_worker(world, tmp, stage: str, assets: dict) -> dict:
    """One GRPO step on 2 ranks over a set whose odd rows are longer than max_prompt_length."""
    from coldstart.common.generation import HFBackend
    from coldstart.common.models import load_model, load_processor
    from coldstart.grpo.data import load_rl_prompts
    from coldstart.grpo.stage import build_engine, prepare_policy
    from coldstart.grpo.trainer import grpo_step, setup_run
    from tests.grpo.ranks import skip_deepspeed_shm_kernel
    from tests.grpo.test_data import with_long_rows
    from tests.grpo.test_trainer import DENSE

    skip_deepspeed_shm_kernel()
    cfg = tiny_config(*DROPPING).grpo
    rl, images = with_long_rows(assets["rl"], tmp / f"rl-{world.rank}", LONG, rows=8)
    processor = load_processor(assets["model"], cfg.min_pixels, cfg.max_pixels)
    dataset, data_metrics = load_rl_prompts(rl, images, processor, cfg)
    torch.manual_seed(world.rank)
    policy, ref = prepare_policy(load_model(assets["model"]), cfg)
    engine = build_engine(policy, cfg, world, stage, ref)
    backend = HFBackend(engine.module, processor, cfg.system_prompt)
    run = setup_run(cfg, engine, processor, dataset, backend=backend, **DENSE)
    metrics, _ = grpo_step(run, 0)
    with engine.full_weights() as trained:
        return {
            "data": data_metrics,
            "metrics": metrics,
            "state": {k: v.detach().clone() for k, v in trained.state_dict().items()},
        }


@pytest.mark.parametrize("stage", ["none", pytest.param("zero3", id="deepspeed-zero3")])
def test_ranks_train_on_the_rows_that_fit(tiny_assets, tmp_path, stage):
    """Half the rows are too long: every rank drops the same 4 at load and each trains on 2 of the
    other 4 (under ZeRO-3 with no stand-in pass: the ranks run as many forwards and backwards);
    both finish the step with the same weights and metrics."""
    from tests.grpo.ranks import errors_of, run_ranks

    ranks = run_ranks(
        _dropping_worker, tmp_path, stage, {k: str(v) for k, v in tiny_assets.items()}
    )
    assert not errors_of(ranks), errors_of(ranks)
    first, second = ranks
    assert first["data"]["data/dropped_too_long"] == 4 and first["data"]["data/rows"] == 4
    assert first["data"] == second["data"]
    assert first["metrics"]["completions/mean_length"] > 0
    assert first["metrics"] == second["metrics"]
    start = load_model(tiny_assets["model"]).state_dict()
    assert max((first["state"][k] - v).abs().max().item() for k, v in start.items()) > 0
    assert all(torch.equal(first["state"][k], second["state"][k]) for k in start)
