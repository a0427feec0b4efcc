"""An LLM answer extractor / judge over any OpenAI-compatible chat-completions endpoint.

The official MathVista and MathVerse pipelines ask GPT to pull the answer out of a free-form
response (and MathVerse asks it again whether that answer matches the gold). To reproduce
them, eval sends the same prompts to an endpoint the user names (`eval.extractor`): a vLLM
server running the judge model in the cluster, or an external API whose key comes from a
Kubernetes Secret as an env var. Nothing else in eval talks to the network.

Client: `requests` with urllib3's `Retry` (backoff, `Retry-After`, 429 and 5xx, connection
errors), a timeout per call, a thread pool for bounded concurrency. Not the `openai` package:
it is not installed in our images and we need one POST. Every answer is cached in a SQLite
file keyed by the request body (model, messages, sampling), so a rerun of the same eval
sends nothing; the base URL is not part of the key (moving the server keeps the cache).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from tqdm.auto import tqdm
from urllib3.util.retry import Retry

from coldstart.common.config import ExtractorConfig
from coldstart.common.errors import InputError

log = logging.getLogger(__name__)

RETRY_STATUSES = (408, 409, 429, 500, 502, 503, 504)


class ExtractorError(RuntimeError):
    """The extractor endpoint failed after its retries; names the URL and what to check."""


class ResponseCache:
    """request key -> answer text, in one SQLite file; safe to share between threads."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path or ":memory:"), check_same_thread=False)
        self._db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, text TEXT)")

    def get(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT text FROM answers WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def put(self, key: str, text: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?)", (key, text))
            self._db.commit()

    def close(self) -> None:
        with self._lock:
            self._db.close()


def request_key(body: dict[str, Any]) -> str:
    """The cache key of one request: sha256 of its canonical JSON."""
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _session(cfg: ExtractorConfig) -> requests.Session:
    retry = Retry(
        total=cfg.max_retries,
        backoff_factor=cfg.backoff_s,
        status_forcelist=RETRY_STATUSES,
        allowed_methods=None,  # POST too: a chat completion has no side effect
        respect_retry_after_header=True,
        raise_on_status=False,
    )
    session = requests.Session()
    session.mount("http://", HTTPAdapter(max_retries=retry))
    session.mount("https://", HTTPAdapter(max_retries=retry))
    return session


class ChatClient:
    """`complete(prompts)`: one user message each, answered concurrently, cached by request."""

    def __init__(self, cfg: ExtractorConfig, cache_path: Path | None = None) -> None:
        self.cfg = cfg
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"
        self.headers = {"Content-Type": "application/json"}
        if cfg.api_key_env:
            key = os.environ.get(cfg.api_key_env)
            if not key:
                raise InputError(
                    f"eval.extractor.api_key_env: env var {cfg.api_key_env!r} is not set; "
                    "put the key in a Kubernetes Secret and expose it to the eval pod under "
                    "that name (or set api_key_env: null for a server without a key)"
                )
            self.headers["Authorization"] = f"Bearer {key}"
        self.cache = ResponseCache(cache_path)
        self._local = threading.local()
        self.sent = 0  # requests that reached the network (cache misses)

    def body(self, prompt: str) -> dict[str, Any]:
        return {
            "model": self.cfg.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": self.cfg.temperature,
            "max_tokens": self.cfg.max_tokens,
        }

    def complete(self, prompts: Sequence[str], desc: str = "extract") -> list[str]:
        """The endpoint's answer to each prompt, in order; cached answers are not re-sent."""
        if not prompts:
            return []
        workers = min(self.cfg.max_concurrency, len(prompts))
        with ThreadPoolExecutor(workers, thread_name_prefix="extractor") as pool:
            answers = pool.map(self._one, prompts)
            return list(tqdm(answers, total=len(prompts), desc=desc, leave=False))

    def _one(self, prompt: str) -> str:
        body = self.body(prompt)
        key = request_key(body)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        text = self._post(body)
        self.cache.put(key, text)
        return text

    def _post(self, body: dict[str, Any]) -> str:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = _session(self.cfg)
        try:
            reply = session.post(
                self.url, json=body, headers=self.headers, timeout=self.cfg.timeout_s
            )
        except requests.RequestException as exc:
            raise ExtractorError(
                f"eval.extractor: POST {self.url} failed after {self.cfg.max_retries} retries: "
                f"{exc}; check base_url and that the server is up"
            ) from exc
        self.sent += 1
        if reply.status_code != 200:
            raise ExtractorError(
                f"eval.extractor: POST {self.url} answered HTTP {reply.status_code} "
                f"(after retries): {reply.text[:300]}; check model {self.cfg.model!r} and the key"
            )
        try:
            return str(reply.json()["choices"][0]["message"]["content"] or "")
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise ExtractorError(
                f"eval.extractor: {self.url} did not answer in the chat-completions format "
                f"(choices[0].message.content): {reply.text[:300]}"
            ) from exc

    def close(self) -> None:
        self.cache.close()
