"""Dependencies of the routes: the service objects, and API-key authentication with scopes and rate limits."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from hspi.api import store
from hspi.api.catalog import Catalog
from hspi.api.db import Database
from hspi.api.input_text import MAX_PARAMETER_CHARS, text_problem
from hspi.api.rate_buckets import DatabaseRateLimiter
from hspi.api.security import EndpointGuard, RateLimiter, Vault, expand_scopes, key_id_of, key_matches
from hspi.api.settings import ServiceSettings
from hspi.api.workers import AuditWorkers
from hspi.errors import ConfigError

TOUCH_EVERY_S = 60.0  # last_used_at is written at most this often per key: reads must not become writes


@dataclass
class Services:
    settings: ServiceSettings
    db: Database
    vault: Vault
    guard: EndpointGuard
    limiter: RateLimiter | DatabaseRateLimiter  # in the database on PostgreSQL: replicas share it
    workers: AuditWorkers
    catalog: Catalog
    _touched: dict[str, float] = field(default_factory=dict)
    _touch_lock: threading.Lock = field(default_factory=threading.Lock)

    def touch(self, key_id: str) -> None:
        now = time.monotonic()
        with self._touch_lock:
            if now - self._touched.get(key_id, -math.inf) < TOUCH_EVERY_S:
                return
            self._touched[key_id] = now
        store.touch_key(self.db, key_id)


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


@dataclass(frozen=True)
class Principal:
    key_id: str
    scopes: frozenset[str]

    @property
    def admin(self) -> bool:
        return "admin" in self.scopes


def checked_parameters(request: Request) -> None:
    """Every query and path parameter of a /v1 route is short, valid text without control characters.

    The routes' own types come after this: what reaches them (and the database) is at least text.
    """
    items = [("query parameter", k, v) for k, v in request.query_params.multi_items()]
    items += [("path parameter", k, str(v)) for k, v in request.path_params.items()]
    if len(items) > 64:
        raise ConfigError(f"the request has {len(items)} parameters; at most 64 are accepted")
    for where, name, value in items:
        problem = text_problem(name)
        if problem:
            raise ConfigError(f"a {where} name {problem}")
        shown = store.shown(name, 40)
        problem = text_problem(value)
        if problem:
            raise ConfigError(f"{where} {shown} {problem}")
        if len(value) > MAX_PARAMETER_CHARS:
            raise ConfigError(f"{where} {shown} is {len(value)} characters long; at most {MAX_PARAMETER_CHARS}")


_bearer = HTTPBearer(auto_error=False, description="an API key of this service: `Authorization: Bearer hspi_...`")


def require(scope: str):  # type: ignore[no-untyped-def]
    """A dependency that admits a valid, unrevoked key holding `scope`, within its rate limit."""

    def authenticate(
        request: Request,
        services: ServicesDep,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    ) -> Principal:
        if credentials is None:
            raise HTTPException(
                401,
                "missing API key: send the header 'Authorization: Bearer hspi_...'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        key = credentials.credentials
        key_id = key_id_of(key)
        row = store.get_key(services.db, key_id) if key_id else None
        if row is None or row.revoked_at is not None or not key_matches(key, row.secret_hash):
            raise HTTPException(401, "invalid or revoked API key", headers={"WWW-Authenticate": "Bearer"})
        wait = services.limiter.take(row.id)
        if wait > 0:
            s = services.settings
            raise HTTPException(
                429,
                f"rate limit exceeded for API key {row.id}: at most {s.rate_per_minute:g} requests "
                f"a minute (bursts of {s.rate_burst}); retry in {wait:.1f} s",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )
        scopes = frozenset(expand_scopes(row.scopes.split(",")))
        if scope not in scopes:
            raise HTTPException(
                403,
                f"API key {row.id} has scope {max(scopes, key=('read', 'write', 'admin').index)!r}; "
                f"{request.method} {request.url.path} needs {scope!r}",
            )
        services.touch(row.id)
        return Principal(row.id, scopes)

    return authenticate


ReadKey = Annotated[Principal, Depends(require("read"))]
WriteKey = Annotated[Principal, Depends(require("write"))]
AdminKey = Annotated[Principal, Depends(require("admin"))]
