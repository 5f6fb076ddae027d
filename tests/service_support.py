"""Helpers of the audit-service tests: databases (SQLite, and PostgreSQL when HSPI_TEST_POSTGRES_URL
is set), the service under a real uvicorn on 127.0.0.1 in a thread, API clients, waiting."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from servers import serve_uvicorn

POSTGRES_URL = os.environ.get("HSPI_TEST_POSTGRES_URL")
BACKENDS = [
    "sqlite",
    pytest.param(
        "postgresql",
        marks=pytest.mark.skipif(
            not POSTGRES_URL,
            reason="HSPI_TEST_POSTGRES_URL is not set (.ci/run starts a PostgreSQL server and sets it)",
        ),
    ),
]


def database_url(backend: str, tmp_path: Path) -> str:
    """A fresh, empty database of `backend` for one test."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'service.db'}"
    assert POSTGRES_URL
    from sqlalchemy import create_engine, text

    engine = create_engine(POSTGRES_URL)
    with engine.begin() as connection:  # every table of an earlier test goes
        connection.execute(
            text("DROP TABLE IF EXISTS rate_buckets, audit_answers, audits, scans, api_keys, alembic_version CASCADE")
        )
    engine.dispose()
    return POSTGRES_URL


def service_settings(url: str, tmp_path: Path, **kwargs: Any):  # type: ignore[no-untyped-def]
    from hspi.api.settings import ServiceSettings

    base: dict[str, Any] = dict(
        database_url=url,
        secret_key_file=tmp_path / "secret.key",
        bootstrap_key_file=tmp_path / "admin.key",
        allow_hosts=["127.0.0.0/8"],
        lease_s=2.0,
        workers=8,
        per_host=4,
    )
    base.update(kwargs)
    return ServiceSettings(**base)


@contextlib.contextmanager
def serve_app(app: Any) -> Iterator[str]:
    """Base URL (no /v1) of an ASGI app under uvicorn on a free loopback port, lifespan included."""
    with serve_uvicorn(app, lifespan="on", start_timeout_s=60.0) as base:
        yield base


def client(base: str, key: str | None, **kwargs: Any) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=base, headers=headers, timeout=30.0, **kwargs)


def admin_key(tmp_path: Path) -> str:
    return (tmp_path / "admin.key").read_text().strip()


def make_key(base: str, admin: str, scopes: list[str], name: str = "test") -> str:
    with client(base, admin) as c:
        r = c.post("/v1/keys", json={"name": name, "scopes": scopes})
        assert r.status_code == 201, r.text
        return r.json()["key"]


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str, every_s: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")


def wait_final(c: httpx.Client, audit_id: str, timeout_s: float = 60.0) -> dict:
    def final() -> dict | None:
        body = c.get(f"/v1/audits/{audit_id}").json()
        return body if body["status"] in ("done", "failed", "cancelled", "interrupted") else None

    return wait_for(final, timeout_s, f"audit {audit_id} to end", every_s=0.1)
