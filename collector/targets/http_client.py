"""`BudgetedHTTPClient`: the one way hspi talks to a black-box target.

Every request sent counts against a hard `QueryBudget` (retries included: a provider bills them);
responses are read with a size cap and an overall deadline, so a trickling or huge answer cannot
hang an audit; timeouts, connection failures, 429 (`Retry-After` honoured) and 5xx are retried
with exponential backoff; other 4xx are the caller's to handle.  The API key is sent as a Bearer
token (`BearerToken`, an httpx.Auth) and appears in no message, log or repr.  Requests go through
`PoolTransport` (see http_transport.py), or the caller's transport (the service passes its
SSRF-guarded one, built the same way).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import httpx

from hspi.collector.targets.http_transport import BearerToken, PoolTransport, request_deadline
from hspi.collector.targets.openai_parse import load_json
from hspi.errors import ConfigError, TargetError

MAX_RESPONSE_BYTES = 4_000_000  # a one-token answer with 20 alternatives is a few kB
MAX_RETRY_AFTER_S = 30.0


class BudgetExhausted(Exception):
    """The next request would exceed the audit's budget of queries or tokens: nothing was sent."""


@dataclass
class QueryBudget:
    """A hard cap on requests and billed tokens (prompt + completion) sent to a target."""

    max_queries: int
    max_tokens: int
    queries: int = 0
    tokens: int = 0
    # billed tokens a server counted beyond hspi's estimate (a BOS, a template...): added to later estimates
    overhead: int = 0
    # concurrent requests (a burst of copies) reserve and settle under it: the caps hold across threads
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.max_queries < 1 or self.max_tokens < 1:
            raise ConfigError(
                f"a budget needs at least 1 query and 1 token, got {self.max_queries} / {self.max_tokens}"
            )

    def spend(self, tokens: int) -> int:
        """Reserve one query of about `tokens` billed tokens (plus the overhead seen so far); the reservation."""
        with self._lock:
            tokens += self.overhead
            if self.queries + 1 > self.max_queries or self.tokens + tokens > self.max_tokens:
                raise BudgetExhausted(
                    f"budget spent: {self.queries}/{self.max_queries} queries, {self.tokens}/{self.max_tokens} tokens"
                )
            self.queries += 1
            self.tokens += tokens
            return tokens

    def settle(self, reserved: int, billed: int) -> None:
        """The server says a query cost `billed` tokens, not the `reserved` estimate: count what it billed."""
        with self._lock:
            self.tokens += billed - reserved
            self.overhead = max(self.overhead, billed - (reserved - self.overhead))


@dataclass(frozen=True)
class Exchange:
    """One answered request: its status, headers (names lower-cased), body, and the tokens reserved for it."""

    status: int
    headers: dict[str, str]
    body: bytes
    reserved: int


class BudgetedHTTPClient:
    def __init__(
        self,
        base_url: str,
        budget: QueryBudget,
        *,
        api_key: str | None = None,
        timeout_s: float = 10.0,
        retries: int = 2,
        backoff_s: float = 0.2,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url, self.budget = base_url.rstrip("/"), budget
        try:
            parsed = httpx.URL(self.base_url)
        except httpx.InvalidURL as exc:
            raise ConfigError(f"endpoint {base_url!r} is not a valid URL: {exc}") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ConfigError(f"endpoint {base_url!r} is not an http(s) URL with a host")
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self.max_response_bytes = max_response_bytes
        self._secret = api_key.encode() if api_key else None
        self.last_reserved = 0
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout_s),
            auth=BearerToken(api_key) if api_key else None,
            transport=transport or PoolTransport(),
            follow_redirects=False,
        )

    def __repr__(self) -> str:  # never the key
        return f"BudgetedHTTPClient({self.base_url!r}, {self.budget})"

    def close(self) -> None:
        self._client.close()

    def post(self, path: str, payload: dict, *, billed: int) -> bytes:
        """POST JSON, return the body of a 2xx answer; every attempt is billed to the budget; any other
        answer (after the retries `exchange` makes) is a `TargetError` naming it."""
        answer = self.exchange("POST", path, payload, billed=billed)
        self.last_reserved = answer.reserved  # the answered attempt's, for `QueryBudget.settle`
        if answer.status < 300:
            return answer.body
        raise TargetError(
            f"target-error: {self.base_url + path} answered HTTP {answer.status}{_error_message(answer.body)}"
        )

    def exchange(self, method: str, path: str, payload: dict | None, *, billed: int, retry: bool = True) -> Exchange:
        """One request whose answer is read whatever its status (a 4xx is evidence too); billed like `post`.

        Retries what `post` retries (timeouts, connection failures, 429, 5xx) unless `retry` is False, when
        any answer, a 5xx included, comes back (a malformed request's error is the evidence asked for).
        The reservation of the answered attempt comes back with the answer (`last_reserved` is not safe
        across threads).
        """
        url = self.base_url + path
        last = "no attempt"
        attempts = self.retries + 1 if retry else 1
        for attempt in range(attempts):
            reserved = self.budget.spend(billed)
            wait = self.backoff_s * (2**attempt)
            try:
                status, headers, body = self._send(url, payload, method)
                if self._secret:
                    body = body.replace(self._secret, b"[redacted]")
            except httpx.TimeoutException:
                last = f"no answer within {self.timeout_s:g}s"
            except httpx.TransportError as exc:
                last = f"connection failed ({type(exc).__name__})"
            else:
                if (status < 500 and status != 429) or not retry:
                    return Exchange(status, {k.lower(): v for k, v in headers.items()}, body, reserved)
                last = f"HTTP {status}{_error_message(body)}"
                if status == 429:
                    wait = _retry_after(headers.get("retry-after"), default=wait)
            if attempt < attempts - 1:
                time.sleep(wait)
        raise TargetError(f"target-error: {url}: {last} (after {attempts} attempt{'s' if attempts > 1 else ''})")

    def _send(self, url: str, payload: dict | None, method: str = "POST") -> tuple[int, httpx.Headers, bytes]:
        deadline = time.monotonic() + self.timeout_s
        # bounds every socket read, the status line and headers included
        with request_deadline(deadline), self._client.stream(method, url, json=payload) as response:
            chunks, size = [], 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > self.max_response_bytes:
                    raise TargetError(
                        f"target-error: {url} sent more than {self.max_response_bytes} bytes for one token"
                    )
                if time.monotonic() > deadline:
                    raise httpx.ReadTimeout("overall deadline passed")  # a trickling server must not hang us
                chunks.append(chunk)
            return response.status_code, response.headers, b"".join(chunks)


def _retry_after(value: str | None, default: float) -> float:
    try:
        return min(max(float(value), 0.0), MAX_RETRY_AFTER_S) if value is not None else default
    except ValueError:
        return default


def _error_message(body: bytes) -> str:
    try:
        payload = load_json(body)
    except TargetError:
        return ""
    error = payload.get("error") if isinstance(payload, dict) else None
    message = (
        error.get("message")
        if isinstance(error, dict)
        else error
        if isinstance(error, str)
        else payload.get("detail")
        if isinstance(payload, dict)
        else None
    )
    return f": {' '.join(str(message).split())[:160]}" if message else ""  # one line, whatever the server sent
