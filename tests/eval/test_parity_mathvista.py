"""Parity of `official` mode with MathVista's official scorer, on its five published outputs.

The official extractions are played back by a real chat-completions server (GPT's part);
eval builds each query and extraction prompt itself, applies the official quick rules,
sends the rest to the server, normalises and compares. Each file must score within 0.5
points of its official accuracy with at least 99% of per-item verdicts equal.
"""

from __future__ import annotations

import pytest

from coldstart.common.config import BenchmarkSpec, ExtractorConfig
from coldstart.eval.benchmarks import load_benchmark
from coldstart.eval.extractor import ChatClient
from coldstart.eval.scoring import ScoringContext, score
from tests.eval import reference
from tests.eval.chat_server import ChatServer

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mathvista")
    path = reference.benchmark_file(folder)
    return load_benchmark(BenchmarkSpec(name="mathvista", uri=str(path)), None, folder)


def test_prompts_are_the_official_queries(samples):
    queries = reference.read("query")
    assert len(samples) == 1000
    assert all(s.prompt == queries[s.id] for s in samples)
    with_unit = [s for s in samples if s.info["unit"]]
    assert len(with_unit) == 50 and all("(Unit: " in s.prompt for s in with_unit)


@pytest.mark.parametrize("model", reference.MODELS)
def test_official_mode_matches_the_official_scores(samples, model, tmp_path):
    official = reference.read(model)
    responses = [official["items"][s.id]["response"] for s in samples]
    with ChatServer(reference.replay_extractions(model)) as server:
        cfg = ExtractorConfig(base_url=server.base_url, model="gpt-replay", max_concurrency=8)
        client = ChatClient(cfg, tmp_path / "cache.sqlite")
        judged = score("official", samples, responses, ScoringContext(client))
        assert server.answered > 0  # the LLM path was exercised, not only the quick rules
        again = score("official", samples, responses, ScoringContext(client))
        assert client.sent == server.answered  # the rerun came from the cache
        client.close()
    assert again == judged

    verdicts = [official["items"][s.id]["true_false"] for s in samples]
    agree = sum(j.correct == v for j, v in zip(judged, verdicts, strict=True)) / len(samples)
    accuracy = 100 * sum(j.correct for j in judged) / len(samples)
    official_accuracy = 100 * official["official_correct"] / len(samples)
    assert agree >= 0.99, f"{model}: {agree:.1%} of verdicts equal"
    assert abs(accuracy - official_accuracy) <= 0.5, f"{model}: {accuracy} vs {official_accuracy}"
