"""A real, small OpenAI-compatible HTTP server on 127.0.0.1 for tests (stdlib ``http.server``, one thread).

What it answers comes from a handler, a plain callable given the request's JSON body::

    handler(body) -> str            the reply text (chat: message content; /v1/completions: choice text)
                  -> int            an HTTP error status (e.g. 500), with an OpenAI-style error body
                  -> dict           the whole JSON body to send back with 200 (for logprobs and other extras)

A handler that raises answers 500. Every request is recorded (path, body, headers) in ``requests``.
Routes: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``; anything else 404.

    with FakeOpenAIServer(scripted(500, "hello")) as server:
        OpenAICompat(server.base_url, server.model).chat(["hi"])   # retried once, then "hello"
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["FakeOpenAIServer", "Handler", "RecordedRequest", "Reply", "echo", "last_user_message", "scripted",
           "slow"]

Reply = str | int | dict[str, Any]
Handler = Callable[[dict[str, Any]], Reply]


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    body: dict[str, Any]
    headers: dict[str, str]


def last_user_message(body: dict[str, Any]) -> str:
    """The content of the last user message of a chat body, or the prompt of a completions body."""
    for message in reversed(body.get("messages") or []):
        if message.get("role") == "user":
            return str(message.get("content", ""))
    return str(body.get("prompt", ""))


def echo(body: dict[str, Any]) -> Reply:
    """The default handler: ``echo: <last user message>``."""
    return f"echo: {last_user_message(body)}"


def scripted(*replies: Reply) -> Handler:
    """Answer with ``replies`` in order, then repeat the last one (thread-safe)."""
    if not replies:
        raise ValueError("scripted() needs at least one reply")
    queue, lock = list(replies), threading.Lock()

    def handler(body: dict[str, Any]) -> Reply:
        with lock:
            return queue.pop(0) if len(queue) > 1 else queue[0]

    return handler


def slow(handler: Handler, delay_s: float) -> Handler:
    """``handler`` after a delay: for client timeouts."""

    def delayed(body: dict[str, Any]) -> Reply:
        time.sleep(delay_s)
        return handler(body)

    return delayed


def _count(text: str) -> int:
    return len(text.split())


class FakeOpenAIServer:
    def __init__(self, handler: Handler = echo, *, model: str = "fake-model") -> None:
        self.handler, self.model = handler, model
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("the fake server is not started")
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> FakeOpenAIServer:
        server = self

        class _Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # quiet test output
                pass

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

            def do_GET(self) -> None:
                server._record("GET", self.path, {}, dict(self.headers))
                if self.path.rstrip("/") == "/v1/models":
                    self._send(200, {"object": "list", "data": [
                        {"id": server.model, "object": "model", "owned_by": "fake"}]})
                else:
                    self._send(404, {"error": {"message": "not found", "code": 404}})

            def do_POST(self) -> None:
                try:
                    body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                except ValueError:
                    self._send(400, {"error": {"message": "body is not JSON", "code": 400}})
                    return
                path = self.path.rstrip("/")
                server._record("POST", path, body, dict(self.headers))
                if path not in ("/v1/chat/completions", "/v1/completions"):
                    self._send(404, {"error": {"message": "not found", "code": 404}})
                    return
                try:
                    reply = server.handler(body)
                except Exception as e:
                    self._send(500, {"error": {"message": f"handler raised {type(e).__name__}", "code": 500}})
                    return
                if isinstance(reply, int):
                    self._send(reply, {"error": {"message": f"scripted status {reply}", "code": reply}})
                elif isinstance(reply, dict):
                    self._send(200, reply)
                else:
                    self._send(200, server._completion(path, body, reply))

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True  # a slow handler never blocks stop()
        # a short poll interval: stop() waits for the serving loop to notice, up to one interval
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                        name="fake-openai", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _record(self, method: str, path: str, body: dict[str, Any], headers: dict[str, str]) -> None:
        with self._lock:
            self.requests.append(RecordedRequest(method, path, body, headers))

    def posted(self, path: str = "/v1/chat/completions") -> list[dict[str, Any]]:
        """Bodies of the POST requests to ``path``, in arrival order."""
        with self._lock:
            return [r.body for r in self.requests if r.method == "POST" and r.path == path]

    def _completion(self, path: str, body: dict[str, Any], text: str) -> dict[str, Any]:
        prompt = " ".join(str(m.get("content", "")) for m in body.get("messages") or []) or str(body.get("prompt"))
        usage = {"prompt_tokens": _count(prompt), "completion_tokens": _count(text),
                 "total_tokens": _count(prompt) + _count(text)}
        common = {"id": f"fake-{len(self.requests)}", "created": int(time.time()),
                  "model": body.get("model", self.model), "usage": usage}
        if path == "/v1/completions":
            return {**common, "object": "text_completion",
                    "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}]}
        return {**common, "object": "chat.completion", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}

