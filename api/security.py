"""What keeps the audit service safe to expose: API keys, the credential vault, the SSRF guard, limits.

- API keys look like `hspi_<id>_<secret>` (256 random bits).  Only the SHA-256 of the whole key is
  stored: with that much entropy a slow password hash adds nothing, and a fast one keeps every
  request cheap.  Scopes are ordered: `read` < `write` < `admin`, each including the ones before.
- Target credentials are encrypted at rest with Fernet (AES-128-CBC + HMAC-SHA256).  The key comes
  from `HSPI_SECRET_KEY` (comma-separated for rotation: the first encrypts, all decrypt) or from a
  key file created with mode 0600 on first use.  A credential is decrypted only in the worker, right
  before its audit runs, and wiped from the database when the audit ends.
- The SSRF guard refuses endpoints whose host resolves to any address that is not public (the table
  in address_policy.py: IANA's special-purpose ranges, IPv4 embedded in IPv6 judged by the IPv4
  address, cloud metadata) unless the allowlist admits it.
  It runs when an audit is created, again right before it runs, and at every connection the audit
  opens (the guarded transport connects to the very address it checked, so DNS rebinding cannot
  slip in between); redirects are never followed.
- `BodyLimit` answers 413 to oversized requests; `RateLimiter` is a token bucket per API key.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
import socket
import stat
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpcore
import httpx
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from fastapi import HTTPException

from hspi.api.address_policy import IPAddress, embedded_ipv4, non_public_kind, normalised, parse_literal
from hspi.collector.targets.http_transport import PoolTransport
from hspi.errors import ConfigError, TargetError
from hspi.terms import Scope

SCOPES = tuple(s.value for s in Scope)  # each scope includes the ones before it
KEY_PREFIX = "hspi_"

# cloud instance-metadata services: refused even inside an allowlisted network, unless named exactly
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200", "168.63.129.16")
)


# -- API keys ---------------------------------------------------------------------------------


def expand_scopes(scopes: Sequence[str]) -> set[str]:
    """Every scope a key holds, the implied ones included."""
    bad = [s for s in scopes if s not in SCOPES]
    if bad:
        raise ConfigError(f"unknown scope {bad[0]!r}; allowed: {', '.join(SCOPES)}")
    top = max((SCOPES.index(s) for s in scopes), default=-1)
    return set(SCOPES[: top + 1])


def new_api_key() -> tuple[str, str, str]:
    """(public id, the whole key shown once to its owner, the hash that is stored)."""
    key_id = secrets.token_hex(6)
    key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    return key_id, key, hash_key(key)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id_of(key: str) -> str | None:
    """The public id inside a presented key, or None if it is not shaped like one of ours."""
    if not key.startswith(KEY_PREFIX):
        return None
    key_id, sep, secret = key[len(KEY_PREFIX) :].partition("_")
    return key_id if sep and secret and len(key_id) == 12 and all(c in "0123456789abcdef" for c in key_id) else None


def key_matches(key: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_key(key), stored_hash)


# -- the credential vault -----------------------------------------------------------------------


class Vault:
    """Encrypts target credentials at rest; never logs or returns them."""

    def __init__(self, keys: Sequence[bytes]) -> None:
        try:
            self._fernet = MultiFernet([Fernet(k) for k in keys])
            # a separate key per Fernet key for fingerprints: one key never serves two purposes
            self._fingerprint_keys = [hashlib.sha256(b"hspi request fingerprint\0" + k).digest() for k in keys]
        except (ValueError, TypeError):
            raise ConfigError(
                "the secret key is not a Fernet key (32 url-safe base64-encoded bytes; "
                "make one with: python -c 'from cryptography.fernet import Fernet; "
                "print(Fernet.generate_key().decode())')"
            ) from None

    def __repr__(self) -> str:
        return "Vault(...)"

    @classmethod
    def from_settings(cls, secret_key: str | None, key_file: Path) -> Vault:
        if secret_key:
            return cls([k.strip().encode() for k in secret_key.split(",") if k.strip()])
        return cls([_key_file(key_file)])

    def fingerprint(self, data: bytes) -> str:
        """A keyed hash of `data` (it may hold a credential: a plain hash could be brute-forced)."""
        return self._fingerprints(data)[0]

    def fingerprint_matches(self, data: bytes, stored: str) -> bool:
        """Whether `stored` is the fingerprint of `data` under any of the keys (rotation keeps old ones)."""
        return any(hmac.compare_digest(f, stored) for f in self._fingerprints(data))

    def _fingerprints(self, data: bytes) -> list[str]:
        return [hmac.new(k, data, hashlib.sha256).hexdigest() for k in self._fingerprint_keys]

    def encrypt(self, secret: str) -> bytes:
        return self._fernet.encrypt(secret.encode())

    def decrypt(self, token: bytes) -> str:
        try:
            return self._fernet.decrypt(token).decode()
        except InvalidToken:
            raise ConfigError(
                "the target credential cannot be decrypted with the service's secret key "
                "(was HSPI_SECRET_KEY or the key file changed?)"
            ) from None


def _key_file(path: Path) -> bytes:
    """Read the key file, or create it (mode 0600, atomically) on first use."""
    path = path.expanduser()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise ConfigError(
                f"secret key file {path} is readable by others (mode {mode:04o}): chmod 600 {path}"
            ) from None
        return path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"cannot create the secret key file {path}: {exc.strerror}") from None
    key = Fernet.generate_key()
    with os.fdopen(fd, "wb") as f:
        f.write(key + b"\n")
    return key


# -- the SSRF guard -------------------------------------------------------------------------------


class EndpointRefused(ConfigError):
    """An endpoint the service will not connect to (its message says why, for a person)."""


Resolver = Callable[[str, int], list[str]]


def _system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class EndpointGuard:
    """Admits public addresses, and private ones only where `allow` (networks and host names) says so."""

    def __init__(self, allow: Sequence[str] = (), *, resolver: Resolver | None = None) -> None:
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        self.hosts: set[str] = set()
        for item in allow:
            try:
                self.networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                if not item or any(c in item for c in "/:@ "):
                    raise ConfigError(f"allowlist entry {item!r} is neither a network (CIDR) nor a host name") from None
                self.hosts.add(item.lower().rstrip("."))
        self.resolve: Resolver = resolver or _system_resolver

    def __repr__(self) -> str:
        return f"EndpointGuard(networks={[str(n) for n in self.networks]}, hosts={sorted(self.hosts)})"

    def split(self, url: str) -> tuple[str, int]:
        """(host, port) of an http(s) URL; refuses anything else, and credentials inside URLs."""
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError) as exc:
            raise EndpointRefused(f"endpoint {url!r} is not a valid URL: {exc}") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise EndpointRefused(f"endpoint {url!r} is not an http(s) URL with a host")
        if parsed.userinfo:
            raise EndpointRefused(
                "endpoint URLs must not carry credentials (user:password@); send the target's key as target_api_key"
            )
        return parsed.host.lower().rstrip("."), parsed.port or (443 if parsed.scheme == "https" else 80)

    def check(self, url: str) -> list[str]:
        """The addresses `url`'s host resolves to, all admitted; `EndpointRefused` otherwise."""
        host, port = self.split(url)
        return self.check_host(host, port)

    def check_host(self, host: str, port: int) -> list[str]:
        literal = parse_literal(host)
        if literal is not None:
            addresses = [str(literal)]
        else:
            try:
                addresses = self.resolve(host, port)
            except (socket.gaierror, UnicodeError, OSError):
                raise EndpointRefused(f"endpoint host {host!r} does not resolve") from None
            if not addresses:
                raise EndpointRefused(f"endpoint host {host!r} does not resolve")
        for address in addresses:
            self._admit(host, ipaddress.ip_address(address.split("%")[0]))
        return addresses

    def _admit(self, host: str, address: IPAddress) -> None:
        inner = normalised(address)  # the IPv4 address an IPv4-mapped, -translated or NAT64 one reaches
        reached = [inner, *(v4 for v4, _ in embedded_ipv4(address))]
        metadata = next((a for a in reached if a in METADATA_ADDRESSES), None)
        if metadata is not None:
            if any(n.num_addresses == 1 and metadata in n for n in self.networks):
                return
            raise EndpointRefused(f"endpoint host {host!r} is {metadata}, a cloud metadata address: refused")
        if host in self.hosts or any(inner in n for n in self.networks):
            return
        kind = non_public_kind(inner)
        if kind:
            what = f"endpoint host {host!r}" + ("" if host == str(inner) else f" resolves to {inner}, which")
            article = "an" if kind[0] in "aeiou" else "a"
            raise EndpointRefused(f"{what} is {article} {kind} address; the service's allowlist does not admit it")

    @staticmethod
    def origin(addresses: Sequence[str], port: int) -> str:
        """The unit of per-host limits: the lowest checked address (IPv4 for mapped forms) and the port.

        Keyed by address, not by the spelled host: two names (or spellings) of one server share its slots.
        """
        checked = [normalised(ipaddress.ip_address(a.split("%")[0])) for a in addresses]
        first = min(checked, key=lambda a: (a.version, int(a)))
        return f"{first}:{port}" if first.version == 4 else f"[{first}]:{port}"

    def transport(self) -> PoolTransport:
        """An httpx transport whose every connection goes to an address this guard admitted."""
        return PoolTransport(GuardedBackend(httpcore.SyncBackend(), self))


class GuardedBackend(httpcore.NetworkBackend):
    """Resolves and checks the host itself, then connects to the checked address (no second lookup)."""

    def __init__(self, inner: httpcore.NetworkBackend, guard: EndpointGuard) -> None:
        self._inner, self._guard = inner, guard

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        try:
            addresses = self._guard.check_host(host, port)
        except EndpointRefused as exc:
            raise TargetError(f"target-error: {exc}") from None
        error: Exception | None = None
        for address in addresses:
            try:
                return self._inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.NetworkStream:
        raise TargetError("target-error: unix sockets are not targets")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


# -- limits ---------------------------------------------------------------------------------------


class RateLimiter:
    """A token bucket per key: `burst` requests at once, refilled at `per_minute` a minute."""

    def __init__(self, per_minute: float, burst: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.clock = per_minute / 60.0, float(burst), clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """0 if a request may go now, else the seconds until one may."""
        with self._lock:
            now = self.clock()
            tokens, last = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate


class BodyTooLarge(HTTPException):
    """Raised while a streamed body is read: FastAPI passes HTTPExceptions through as they are."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is too large; the limit is {limit} bytes")


class BodyLimit:
    """ASGI middleware: 413 for a request body over `limit` bytes (declared or streamed)."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(send, int(declared))
            return
        seen = 0
        started = False

        async def limited_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        async def tracking_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._refuse(send, None)

    async def _refuse(self, send: Callable, size: int | None) -> None:
        what = f"request body is {size} bytes" if size is not None else "request body is too large"
        await send_closing_error(send, 413, f"{what}; the limit is {self.limit} bytes")


async def send_closing_error(send: Callable, status: int, detail: str) -> None:
    """An error answer from ASGI middleware ({"detail": ...}, JSON), closing the connection: the body the
    client was sending is not read to its end."""
    import json

    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyReadTimeout(HTTPException):
    """Raised while a request body is read too slowly: FastAPI passes HTTPExceptions through as they are."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(
            408,
            f"request body not received within {timeout_s:g} s of the request's headers; send it at once",
            headers={"Connection": "close"},
        )


class BodyTimeout:
    """ASGI middleware: a request body must arrive whole within `timeout_s` of the headers, else 408 and close.

    uvicorn times out idle keep-alive connections but not a body that stalls or trickles in a
    byte at a time, which would hold a worker thread and a connection for as long as the client
    likes.  The deadline covers the whole body, so trickling does not reset it.
    """

    def __init__(self, app: Any, timeout_s: float) -> None:
        self.app, self.timeout_s = app, timeout_s

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        import asyncio

        deadline = time.monotonic() + self.timeout_s
        body_done = False
        started = False

        async def timed_receive() -> dict:
            nonlocal body_done
            if body_done:  # after the body: e.g. waiting for a disconnect, which has no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise BodyReadTimeout(self.timeout_s) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def tracking_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, timed_receive, tracking_send)
        except BodyReadTimeout as exc:
            if not started:
                await send_closing_error(send, 408, exc.detail)
