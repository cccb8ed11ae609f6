"""A local OpenAI-compatible chat-completions server for tests and benchmarks (no real LLM).

This is a real HTTP server (``http.server`` on a thread, bound to 127.0.0.1 on a free port) that
speaks the ``POST /v1/chat/completions`` and ``GET /v1/models`` protocol, so the real ``openai``
client, its HTTP stack, timeouts and error handling are exercised end to end. Its answers are
scripted: a list of :class:`Reply` objects consumed in order (the last one repeats), or a function
from the request body to a ``Reply``. Replies can carry any content, a usage block, an HTTP error
status (429, 500, ...), a delay (to hang past a client timeout), a body sent a few bytes at a time
(to trickle past it) or gzip-compressed unasked, headers that trickle in until released, or a
refusal; the server can also reject ``response_format`` with HTTP 400, as older vLLM / llama.cpp /
Ollama builds do, or other request fields (``max_tokens``, ``temperature``), as some hosted
reasoning models do.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Reply:
    content: str | None = ""
    status: int = 200
    delay_s: float = 0.0
    refusal: str | None = None
    finish_reason: str = "stop"
    prompt_tokens: int | None = None  # None: about a token per 4 prompt characters
    completion_tokens: int | None = None
    error_message: str = "scripted error"
    retry_after: float | None = None
    trickle_s: float = 0.0  # > 0: the body is sent 16 bytes at a time, this many seconds apart
    gzip: bool = False  # the body gzip-compressed (Content-Encoding: gzip), whatever was asked
    # set: the response headers trickle in, a line every 0.05 s, until this event is set
    hold_headers: threading.Event | None = None


Responder = Callable[[dict], Reply]


class ChatServer:
    """``with ChatServer([Reply(...), ...]) as srv: OpenAI(base_url=srv.url, ...)``."""

    def __init__(
        self,
        replies: Sequence[Reply] | Responder | None = None,
        *,
        models: Sequence[str] = ("test-model",),
        reject_response_format: bool = False,
        reject_fields: Sequence[str] = (),
        served_model: str | None = None,
    ):
        self.replies = replies if replies is not None else [Reply("{}")]
        self.models = list(models)
        self.reject_response_format = reject_response_format
        self.reject_fields = tuple(
            reject_fields
        )  # request fields answered with HTTP 400 (e.g. "max_tokens")
        self.served_model = served_model  # the model answers name (api.openai.com names a dated snapshot); None: the one asked for
        self.requests: list[dict] = []  # every chat request body received, in order
        self.model_requests = 0
        self._i = 0
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle -------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def start(self) -> ChatServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _send(
                self,
                status: int,
                body: dict,
                headers: dict | None = None,
                trickle_s: float = 0.0,
                compress: bool = False,
                hold_headers: threading.Event | None = None,
            ):
                data = json.dumps(body).encode()
                if compress:
                    data = gzip.compress(data)
                    headers = {**(headers or {}), "Content-Encoding": "gzip"}
                try:
                    self.send_response(status)
                    while hold_headers is not None and not hold_headers.wait(0.05):
                        self.send_header("X-Wait", "1")
                        self.flush_headers()
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    if trickle_s > 0:
                        for i in range(0, len(data), 16):
                            self.wfile.write(data[i : i + 16])
                            self.wfile.flush()
                            time.sleep(trickle_s)
                    else:
                        self.wfile.write(data)
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError, OSError):
                    pass  # the client gave up (timeout): fine

            def do_GET(self):
                if self.path.rstrip("/").endswith("/models"):
                    with server._lock:
                        server.model_requests += 1
                    self._send(
                        200,
                        {
                            "object": "list",
                            "data": [
                                {"id": m, "object": "model", "created": 0, "owned_by": "test"}
                                for m in server.models
                            ],
                        },
                    )
                else:
                    self._send(
                        404, {"error": {"message": "not found", "type": "not_found", "code": 404}}
                    )

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(n) or b"{}")
                except ValueError:
                    self._send(
                        400,
                        {
                            "error": {
                                "message": "bad json",
                                "type": "invalid_request_error",
                                "code": 400,
                            }
                        },
                    )
                    return
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(
                        404, {"error": {"message": "not found", "type": "not_found", "code": 404}}
                    )
                    return
                with server._lock:
                    server.requests.append(body)
                if server.reject_response_format and "response_format" in body:
                    self._send(
                        400,
                        {
                            "error": {
                                "message": "response_format is not supported by this server",
                                "type": "BadRequestError",
                                "param": "response_format",
                                "code": 400,
                            }
                        },
                    )
                    return
                for f in server.reject_fields:
                    if f in body:
                        self._send(
                            400,
                            {
                                "error": {
                                    "message": f"Unsupported parameter: '{f}' is not supported with this model.",
                                    "type": "invalid_request_error",
                                    "param": f,
                                    "code": "unsupported_parameter",
                                }
                            },
                        )
                        return
                reply = server._next(body)
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                if reply.status != 200:
                    headers = (
                        {"retry-after": str(reply.retry_after)}
                        if reply.retry_after is not None
                        else {}
                    )
                    self._send(
                        reply.status,
                        {
                            "error": {
                                "message": reply.error_message,
                                "type": "server_error",
                                "code": reply.status,
                            }
                        },
                        headers,
                    )
                    return
                prompt_chars = sum(len(str(m.get("content", ""))) for m in body.get("messages", []))
                content = reply.content
                pt = (
                    reply.prompt_tokens
                    if reply.prompt_tokens is not None
                    else max(1, prompt_chars // 4)
                )
                ct = (
                    reply.completion_tokens
                    if reply.completion_tokens is not None
                    else len(content or "") // 4
                )
                self._send(
                    200,
                    {
                        "id": f"chatcmpl-{len(server.requests)}",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": server.served_model or body.get("model", "test-model"),
                        "choices": [
                            {
                                "index": 0,
                                "message": {
                                    "role": "assistant",
                                    "content": content,
                                    "refusal": reply.refusal,
                                },
                                "finish_reason": reply.finish_reason,
                            }
                        ],
                        "usage": {
                            "prompt_tokens": pt,
                            "completion_tokens": ct,
                            "total_tokens": pt + ct,
                        },
                    },
                    trickle_s=reply.trickle_s,
                    compress=reply.gzip,
                    hold_headers=reply.hold_headers,
                )

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            daemon=True,
            name="llm-test-server",
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> ChatServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- script --------------------------------------------------------------------------------
    def _next(self, body: dict) -> Reply:
        if callable(self.replies):
            return self.replies(body)
        with self._lock:
            r = self.replies[min(self._i, len(self.replies) - 1)]
            self._i += 1
        return r

    @staticmethod
    def prompt_of(body: dict) -> str:
        return "\n".join(str(m.get("content", "")) for m in body.get("messages", []))
