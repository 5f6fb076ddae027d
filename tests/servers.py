"""Real HTTP servers on 127.0.0.1 for the target tests, each in a background thread of this process.

`serve_asgi(app)` runs any ASGI app (the reference target server) under uvicorn on a free port;
`serve_handler(fn)` runs a stdlib `ThreadingHTTPServer` whose POST/GET answers come from `fn`, so
each misbehaviour (HTML, truncated JSON, 500s, 429s, a huge body, silence, a trickle) is a few lines.
Every server stops when its `with` block ends, also when a test fails.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from hspi.loopback import free_port, wait_for_http

__all__ = ["Handled", "Reply", "Request", "free_port", "serve_asgi", "serve_handler", "serve_uvicorn", "wait_for_http"]


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass
class Handled:
    """What the server saw: every request in arrival order, and when to stop stalling handlers."""

    requests: list[Request] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    bytes_sent: int = 0

    @property
    def count(self) -> int:
        with self.lock:
            return len(self.requests)


class Reply:
    """Helpers a behaviour function uses to answer: `send(status, body)` or low-level writes."""

    def __init__(self, handler: BaseHTTPRequestHandler, state: Handled, index: int) -> None:
        self.handler, self.state, self.index = handler, state, index

    def send(
        self,
        status: int,
        body: bytes | str | dict | list,
        *,
        content_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        if isinstance(body, (dict, list)):
            body, content_type = json.dumps(body).encode(), content_type or "application/json"
        elif isinstance(body, str):
            body = body.encode()
        h = self.handler
        h.send_response(status)
        h.send_header("Content-Type", content_type or "application/json")
        h.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        self.write(body)

    def start(self, status: int = 200, *, length: int | None = None, content_type: str = "application/json") -> None:
        h = self.handler
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        if length is not None:
            h.send_header("Content-Length", str(length))
        h.end_headers()
        h.wfile.flush()

    def write(self, data: bytes) -> None:
        self.handler.wfile.write(data)
        self.handler.wfile.flush()
        with self.state.lock:
            self.state.bytes_sent += len(data)

    def stall(self, seconds: float = 60.0) -> None:
        """Say nothing until the server stops (or `seconds` pass)."""
        self.state.stop.wait(seconds)


Behaviour = Callable[[Request, Reply], None]


def _handler_class(behaviour: Behaviour, state: Handled) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            request = Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            with state.lock:
                state.requests.append(request)
                index = len(state.requests) - 1
            try:
                behaviour(request, Reply(self, state, index))
            except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
                self.close_connection = True  # the client hung up: what several behaviours expect

        do_POST = do_GET = _handle

        def log_message(self, *args: Any) -> None:  # quiet
            pass

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:  # a hung-up client is no test failure
        pass


@contextlib.contextmanager
def serve_handler(behaviour: Behaviour) -> Iterator[tuple[str, Handled]]:
    """(base URL ending in /v1, what the server saw) for a stdlib server answering with `behaviour`."""
    state = Handled()
    server = _Server(("127.0.0.1", 0), _handler_class(behaviour, state))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", state
    finally:
        state.stop.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


@contextlib.contextmanager
def serve_uvicorn(app: Any, *, lifespan: str = "off", start_timeout_s: float = 30.0) -> Iterator[str]:
    """Base URL (no path) of an ASGI app under uvicorn on a free loopback port, in a thread."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan=lifespan))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@contextlib.contextmanager
def serve_asgi(app: Any) -> Iterator[str]:
    """Base URL (ending in /v1) of `app` served by uvicorn on a free loopback port in a thread."""
    with serve_uvicorn(app) as base:
        yield base + "/v1"
