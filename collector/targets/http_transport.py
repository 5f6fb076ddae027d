"""The HTTP stack hspi sends targets' requests through, composed from public httpx/httpcore parts.

    httpx.Client(transport=PoolTransport(backend), auth=BearerToken(key))
      PoolTransport            an httpx.BaseTransport over an httpcore.ConnectionPool
        DeadlineBackend        every socket read and write ends at the request's overall deadline
          backend              the caller's (the service's SSRF guard) or httpcore.SyncBackend()

httpx's timeouts bound each socket read only: a server trickling its status line or headers one
byte at a time would hold a request open for hours.  `request_deadline()` sets the deadline of the
request the current thread sends; a connection opened outside one is bounded by its timeouts only.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Generator, Iterator
from typing import Any

import httpcore
import httpx

from hspi.errors import ConfigError

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("hspi_request_deadline", default=None)


@contextlib.contextmanager
def request_deadline(deadline: float) -> Iterator[None]:
    """Bound every socket operation inside the block by `deadline` (a `time.monotonic()` instant)."""
    token = _deadline.set(deadline)
    try:
        yield
    finally:
        _deadline.reset(token)


def _bounded(timeout: float | None, error: type[Exception]) -> float | None:
    deadline = _deadline.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise error("overall deadline passed")
    return left if timeout is None else min(timeout, left)


class DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _bounded(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _bounded(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None) -> Any:
        return DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        timeout = _bounded(timeout, httpcore.ConnectTimeout)
        return DeadlineStream(self._inner.connect_tcp(host, port, timeout, local_address, socket_options))

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.NetworkStream:
        timeout = _bounded(timeout, httpcore.ConnectTimeout)
        return DeadlineStream(self._inner.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


# httpcore's exceptions as httpx's, most specific first (what httpx's own transport raises)
_EXCEPTIONS: list[tuple[type[Exception], type[httpx.TransportError]]] = [
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.ProxyError, httpx.ProxyError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
]


@contextlib.contextmanager
def _as_httpx_errors(request: httpx.Request) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        for source, target in _EXCEPTIONS:
            if isinstance(exc, source):
                raise target(str(exc), request=request) from exc
        raise


class _ResponseStream(httpx.SyncByteStream):
    def __init__(self, inner: Any, request: httpx.Request) -> None:
        self._inner, self._request = inner, request

    def __iter__(self) -> Iterator[bytes]:
        with _as_httpx_errors(self._request):
            yield from self._inner

    def close(self) -> None:
        with _as_httpx_errors(self._request):
            self._inner.close()


class PoolTransport(httpx.BaseTransport):
    """httpx requests over an httpcore connection pool whose sockets come from `backend`, deadline-bounded."""

    def __init__(self, backend: httpcore.NetworkBackend | None = None) -> None:
        self.connection_pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            network_backend=DeadlineBackend(backend or httpcore.SyncBackend()),
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.SyncByteStream)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _as_httpx_errors(request):
            response = self.connection_pool.handle_request(core_request)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream, request),
            extensions=response.extensions,
        )

    def close(self) -> None:
        self.connection_pool.close()


class BearerToken(httpx.Auth):
    """`Authorization: Bearer <token>` on every request; the token appears in no repr or message."""

    def __init__(self, token: str) -> None:
        if not token or not all(0x21 <= ord(c) <= 0x7E for c in token):
            raise ConfigError("the target's API key must be printable ASCII without spaces or line breaks")
        self._header = f"Bearer {token}"

    def __repr__(self) -> str:
        return "BearerToken(...)"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self._header
        yield request
