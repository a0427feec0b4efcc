"""The LLM extractor client against a real local chat-completions server: answers, cache,
retries with backoff, timeout, concurrency bound, key from an env var, named errors."""

from __future__ import annotations

import pytest

from coldstart.common.config import ExtractorConfig
from coldstart.common.errors import InputError
from coldstart.eval.extractor import ChatClient, ExtractorError
from tests.eval.chat_server import ChatServer

pytestmark = pytest.mark.timeout(120)


def upper(prompt: str) -> str:
    return prompt.upper()


def client_for(server: ChatServer, tmp_path, **overrides) -> ChatClient:
    settings = {"base_url": server.base_url, "model": "judge", "backoff_s": 0.01, **overrides}
    return ChatClient(ExtractorConfig(**settings), tmp_path / "cache.sqlite")


def test_answers_in_order_and_a_rerun_sends_nothing(tmp_path):
    prompts = [f"p{i}" for i in range(20)]
    with ChatServer(upper) as server:
        client = client_for(server, tmp_path)
        assert client.complete(prompts) == [p.upper() for p in prompts]
        assert server.answered == 20 and client.sent == 20
        client.close()
        again = client_for(server, tmp_path)  # a new process would open the same file
        assert again.complete(prompts) == [p.upper() for p in prompts]
        assert server.requests == 20 and again.sent == 0
    body = server.bodies[0]
    assert body["model"] == "judge" and body["temperature"] == 0.0
    assert body["messages"] == [{"role": "user", "content": body["messages"][0]["content"]}]


def test_concurrency_is_bounded(tmp_path):
    with ChatServer(upper, delay_s=0.05) as server:
        client_for(server, tmp_path, max_concurrency=3).complete([f"p{i}" for i in range(24)])
    assert 1 < server.max_in_flight <= 3


@pytest.mark.parametrize("status", [429, 500, 503])
def test_transient_errors_are_retried(tmp_path, status):
    with ChatServer(upper, fail_first=2, fail_status=status) as server:
        assert client_for(server, tmp_path, max_retries=3).complete(["x"]) == ["X"]
    assert server.requests == 3


def test_retries_run_out_with_a_named_error(tmp_path):
    server = ChatServer(upper, fail_first=10)
    with server, pytest.raises(ExtractorError, match=r"chat/completions.*retries"):
        client_for(server, tmp_path, max_retries=2).complete(["x"])
    assert server.requests == 3  # the call and two retries


def test_timeout_per_call(tmp_path):
    server = ChatServer(upper, delay_s=1.0)
    with server, pytest.raises(ExtractorError, match="failed after 0 retries"):
        client_for(server, tmp_path, timeout_s=0.2, max_retries=0).complete(["x"])


def test_key_comes_from_the_named_env_var(tmp_path, monkeypatch):
    monkeypatch.setenv("JUDGE_API_KEY", "s3cret")
    with ChatServer(upper, api_key="s3cret") as server:
        assert client_for(server, tmp_path, api_key_env="JUDGE_API_KEY").complete(["a"]) == ["A"]
        with pytest.raises(ExtractorError, match="HTTP 401"):
            client_for(server, tmp_path / "other").complete(["a"])  # no key sent


def test_missing_key_variable_is_a_named_error(tmp_path, monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    with pytest.raises(InputError, match="'NO_SUCH_KEY' is not set"):
        ChatClient(ExtractorConfig(base_url="http://x/v1", model="m", api_key_env="NO_SUCH_KEY"))


def test_unreachable_server_is_a_named_error(tmp_path):
    from tests.servers import free_port

    cfg = ExtractorConfig(
        base_url=f"http://127.0.0.1:{free_port()}/v1", model="m", max_retries=1, backoff_s=0.01
    )
    with pytest.raises(ExtractorError, match="check base_url"):
        ChatClient(cfg).complete(["x"])
