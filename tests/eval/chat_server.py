"""A real HTTP server that speaks the OpenAI chat-completions API, for the extractor's tests.

`ChatServer(answer)` serves `POST /v1/chat/completions` on 127.0.0.1 (a free port) from a
thread: each request's user message goes through `answer(prompt) -> str`, and the reply
has the API's shape. It can also fail the first N requests with a status, sleep before
answering, require a bearer key, and it records what it saw (requests, most in flight),
so tests check the client's retries, timeouts, concurrency bound and cache over HTTP.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ChatServer:
    def __init__(
        self,
        answer: Callable[[str], str],
        *,
        fail_first: int = 0,
        fail_status: int = 500,
        delay_s: float = 0.0,
        api_key: str | None = None,
    ) -> None:
        self.answer = answer
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.delay_s = delay_s
        self.api_key = api_key
        self.requests = 0  # every request, failed ones included
        self.answered = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.bodies: list[dict] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> ChatServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:
                with server._lock:
                    server.requests += 1
                    number = server.requests
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    self._serve(number)
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def _serve(self, number: int) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path != "/v1/chat/completions":
                    return self._reply(404, {"error": {"message": f"no route {self.path}"}})
                if (
                    server.api_key
                    and self.headers.get("Authorization") != f"Bearer {server.api_key}"
                ):
                    return self._reply(401, {"error": {"message": "bad key"}})
                if server.delay_s:
                    time.sleep(server.delay_s)
                if number <= server.fail_first:
                    return self._reply(server.fail_status, {"error": {"message": "try again"}})
                try:
                    text = server.answer(body["messages"][-1]["content"])
                except KeyError as exc:
                    return self._reply(400, {"error": {"message": f"unknown prompt: {exc}"}})
                with server._lock:
                    server.answered += 1
                    server.bodies.append(body)
                self._reply(
                    200,
                    {
                        "id": f"chatcmpl-{number}",
                        "object": "chat.completion",
                        "model": body["model"],
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": text},
                                "finish_reason": "stop",
                            }
                        ],
                    },
                )

            def _reply(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler
