"""The audit service: `create_app(settings)` builds the FastAPI app, its routers and its workers.

    /healthz, /readyz                 liveness and readiness (no key)
    /v1/audits ...                    create (202), get, list, answers, cancel
    /v1/platforms, /v1/classifiers    what the service knows
    /v1/classify                      answers collected elsewhere
    /v1/keys ...                      API keys (admin)
    /v1/scans                         `hspi scan` runs recorded in the database
    /dashboard/                       pages for people, reading the same API with a key (web_dashboard.py)

On start the database is migrated to Alembic's head, the first admin key is made if there is none,
and the workers resume the audits a previous process left.  Every error is `{"detail": "..."}`:
one sentence for a person, never an echo of a credential.
"""

from __future__ import annotations

import logging
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from hspi.api import store
from hspi.api.catalog import Catalog
from hspi.api.db import Database
from hspi.api.deps import Services
from hspi.api.rate_buckets import rate_limiter
from hspi.api.routes import v1
from hspi.api.schemas import Health
from hspi.api.security import BodyLimit, BodyTimeout, EndpointGuard, Vault, new_api_key
from hspi.api.settings import ServiceSettings, get_settings
from hspi.api.web_dashboard import dashboard_files
from hspi.api.workers import AuditWorkers
from hspi.audit.references import ReferenceStore
from hspi.errors import ConfigError, DatasetError, HspiError, ModelError, TargetError

log = logging.getLogger("hspi.api")
SECRET_FIELDS = ("target_api_key", "authorization", "key")  # never echoed in an error message
STATUS = [
    (store.NotFound, 404),
    (store.Conflict, 409),
    (store.Forbidden, 403),
    (store.TooManyAudits, 429),
    (ConfigError, 422),
    (ModelError, 422),
    (TargetError, 502),
    (DatasetError, 500),
]


def build_services(
    settings: ServiceSettings, *, transport_factory: Callable[[], httpx.BaseTransport] | None = None
) -> Services:
    db = Database(settings.database_url)
    vault = Vault.from_settings(
        settings.secret_key.get_secret_value() if settings.secret_key else None, settings.secret_key_file
    )
    guard = EndpointGuard(settings.allow_hosts)
    references = ReferenceStore(settings.dataset, settings.classifier)  # loaded once, shared by API and workers
    workers = AuditWorkers(
        db,
        vault,
        guard,
        workers=settings.workers,
        per_host=settings.per_host,
        lease_s=settings.lease_s,
        max_attempts=settings.max_attempts,
        on_restart=settings.on_restart,
        transport_factory=transport_factory,
        references=references,
    )
    return Services(
        settings=settings,
        db=db,
        vault=vault,
        guard=guard,
        limiter=rate_limiter(db, settings.rate_per_minute, settings.rate_burst),
        workers=workers,
        catalog=Catalog(references),
    )


def bootstrap_admin_key(services: Services) -> str | None:
    """The first admin key, made when the database has none: written to a 0600 file, or printed once."""
    if store.count_keys(services.db):
        return None
    key_id, key, secret_hash = new_api_key()
    if not store.add_first_key(services.db, key_id, "bootstrap admin", secret_hash, ["admin"]):
        return None  # another replica starting at the same time made it
    path = services.settings.bootstrap_key_file
    if path is not None:
        import os

        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
        print(f"hspi: the first admin API key ({key_id}) is in {path}", file=sys.stderr)
    else:
        print(f"hspi: the first admin API key, shown once: {key}", file=sys.stderr)
    return key


def create_app(
    settings: ServiceSettings | None = None,
    *,
    start_workers: bool = True,
    transport_factory: Callable[[], httpx.BaseTransport] | None = None,
) -> FastAPI:
    settings = settings or get_settings()
    services = build_services(settings, transport_factory=transport_factory)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services.db.migrate()
        bootstrap_admin_key(services)
        if start_workers:
            services.workers.start()
        try:
            yield
        finally:
            services.workers.stop()
            services.db.dispose()

    app = FastAPI(
        title="hspi audit service",
        version="1",
        description="Audit what hardware and software serve a model endpoint: create an audit, follow it, "
        "read its report.  Every request needs an API key (`Authorization: Bearer hspi_...`) "
        'with the scope its route names; errors are `{"detail": "..."}`.',
        lifespan=lifespan,
    )
    app.state.services = services
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(BodyTimeout, timeout_s=settings.body_timeout_s)
    _install_error_handlers(app)
    app.include_router(v1)
    app.mount("/dashboard", dashboard_files(), name="dashboard")

    @app.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        return RedirectResponse("/dashboard/")

    @app.get("/healthz", response_model=Health, tags=["health"], summary="Liveness: the process answers")
    def healthz() -> Health:
        return Health(status="ok")

    @app.get(
        "/readyz",
        response_model=Health,
        tags=["health"],
        summary="Readiness: database, schema, workers",
        responses={503: {"model": Health, "description": "not ready: see checks"}},
    )
    def readyz() -> Any:
        checks: dict[str, str] = {}
        try:
            services.db.ping()
            checks["database"] = "ok"
            revision = services.db.revision()
            checks["schema"] = "ok" if revision == _head_revision() else f"at {revision}, not {_head_revision()}"
        except Exception as exc:  # noqa: BLE001 - readiness reports, it does not raise
            checks["database"] = f"unreachable ({type(exc).__name__})"
        if start_workers:
            checks["workers"] = "ok" if services.workers.alive else "stopped"
        checks["classifiers"] = "ok" if services.catalog.models() else "none found"
        ok = all(v == "ok" for v in checks.values())
        health = Health(status="ok" if ok else "unavailable", checks=checks)
        return health if ok else JSONResponse(health.model_dump(), status_code=503)

    return app


def _head_revision() -> str:
    from pathlib import Path

    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    return str(ScriptDirectory.from_config(config).get_current_head())


# -- errors -------------------------------------------------------------------------------------------


def error_response(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """`{"detail": ...}` on one line, sendable whatever the detail holds (a lone surrogate is escaped)."""
    text = " ".join(str(detail).encode("utf-8", "backslashreplace").decode("utf-8").split())
    return JSONResponse({"detail": text}, status_code=status, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, validation_message(exc.errors()))

    @app.exception_handler(ValidationError)
    async def _invalid_model(_: Request, exc: ValidationError) -> JSONResponse:
        return error_response(422, validation_message(exc.errors()))

    @app.exception_handler(HspiError)
    async def _hspi(_: Request, exc: HspiError) -> JSONResponse:
        status = next((code for kind, code in STATUS if isinstance(exc, kind)), 500)
        return error_response(status, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no such path: {request.method} {request.url.path} (the API is described at /docs)"
        elif exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}"
        return error_response(exc.status_code, detail, getattr(exc, "headers", None))

    # the catch-all: a bug answers 500 with an incident id to quote; the traceback goes to the log only
    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        incident = uuid.uuid4().hex[:12]
        log.error(
            "incident %s on %s %s: %s",
            incident,
            request.method,
            request.url.path,
            type(exc).__name__,
            exc_info=(type(exc), exc, exc.__traceback__),
        )
        return error_response(500, f"internal error (incident {incident}); the service logged it")


def validation_message(errors: Any) -> str:
    """Pydantic's errors as sentences: `field: what is wrong[, got value]` (secrets never echoed)."""
    parts = []
    for error in list(errors)[:3]:
        # pydantic names the members of a union in brackets (claim.dict[str,str].dtype): not for people
        loc = [str(p) for p in error.get("loc", ()) if p not in ("body", "query", "header", "path")]
        loc = [p if p.isprintable() else repr(p) for p in loc if not ("[" in p and p.endswith("]"))]
        where = ".".join(loc)
        kind, msg = error.get("type", ""), str(error.get("msg", "invalid")).rstrip(".")
        if kind == "json_invalid":
            parts.append(f"request body is not valid JSON ({error.get('ctx', {}).get('error', msg)})")
            continue
        if kind == "missing" and not where:
            parts.append("request body is missing: send a JSON object")
            continue
        if kind == "missing":
            parts.append(f"{where} is required")
            continue
        if kind == "extra_forbidden":
            parts.append(f"unknown field {where!r}")
            continue
        if kind == "string_unicode":  # pydantic's words for a lone surrogate, as input_text.py says it
            parts.append(f"{where or 'a value'}: contains a lone UTF-16 surrogate, which is not valid Unicode text")
            continue
        text = f"{where}: {msg[0].lower() + msg[1:]}" if where else msg
        value = error.get("input")
        secret = any(s in part.lower() for part in loc for s in SECRET_FIELDS)
        if not secret and (isinstance(value, (int, float, bool)) or (isinstance(value, str) and len(value) <= 80)):
            text += f", got {value!r}"
        parts.append(text)
    more = len(list(errors)) - 3
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")
