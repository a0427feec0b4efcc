"""The vLLM rollout backend (GPU only): sampling groups, and weights pushed after an update.

Skipped without CUDA or without vllm (the `gpu` extra). Greedy decoding of a random tiny model
is fragile (its logits are nearly tied), so the model used here has its output layer scaled up:
the argmax is then the same under vLLM's and transformers' kernels.
"""

from __future__ import annotations

import pytest
import torch

from coldstart.common.generation import HFBackend, PromptInput, SamplingConfig, make_backend
from coldstart.common.models import load_model, load_processor
from tests.grpo.test_logprobs import SYSTEM, prompts_from

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
vllm = pytest.importorskip("vllm", reason="needs the gpu extra (vllm)")


def peaky(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        head = model.get_output_embeddings().weight
        head.copy_(torch.randn(head.shape, generator=gen) * 2.0)
    return model


@pytest.fixture(scope="module")
def peaky_model_dir(tiny_assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("peaky") / "model"
    model = peaky(load_model(tiny_assets["model"]), seed=1)
    model.save_pretrained(out)
    load_processor(tiny_assets["model"]).save_pretrained(out)
    return out


def greedy(backend, prompts, tokens=8):
    return [group[0].token_ids for group in backend.generate(prompts, SamplingConfig(tokens))]


def test_vllm_samples_groups_and_follows_pushed_weights(peaky_model_dir, tiny_assets):
    processor = load_processor(peaky_model_dir, 3136, 3136)
    policy = load_model(peaky_model_dir).cuda()
    engine = make_backend("vllm", str(peaky_model_dir), processor, SYSTEM, gpu_memory_utilization=0.2,
                          max_model_len=512, min_pixels=3136, max_pixels=3136)  # fmt: skip
    prompts: list[PromptInput] = prompts_from(tiny_assets["rl"])

    groups = engine.generate(prompts, SamplingConfig(12, temperature=1.0, top_p=1.0, n=4))
    assert [len(g) for g in groups] == [4, 4, 4]
    assert all(
        0 < len(c.token_ids) <= 12 and c.finish_reason in ("stop", "length")
        for g in groups
        for c in g
    )

    hf = HFBackend(policy, processor, SYSTEM)
    assert greedy(engine, prompts) == greedy(hf, prompts)  # same weights, same prompt tokens

    before = greedy(engine, prompts)
    peaky(policy, seed=2)  # "an optimizer update"
    engine.sync_weights(policy)
    after = greedy(engine, prompts)
    assert after != before
    assert after == greedy(hf, prompts)


def test_grpo_runs_with_vllm_rollouts(tiny_assets, tmp_path):
    from coldstart.grpo.stage import GRPOPaths, run_grpo
    from tests.grpo.conftest import tiny_config

    cfg = tiny_config("grpo.rollout_backend=vllm", "grpo.total_steps=2", "grpo.max_completion_length=16",
                      "grpo.vllm_gpu_memory_utilization=0.2")  # fmt: skip
    paths = GRPOPaths(
        tiny_assets["model"],
        tiny_assets["rl"],
        tmp_path / "out",
        str(tmp_path / "ckpt"),
        tmp_path / "scratch",
    )
    summary, history = run_grpo(cfg, paths)
    assert summary["grpo/steps"] == 2 and (tmp_path / "out" / "model.safetensors").exists()
    assert all(h["completions/mean_length"] > 0 for h in history)
