"""Persistence functions of the audit service: they speak SQLAlchemy and hspi types, never HTTP.

The audits table is the work queue.  A worker *claims* a queued audit with one conditional UPDATE
(status queued -> running, its id as the lease holder), so two workers (threads or processes) never
run the same audit; every write a worker makes afterwards is fenced on that lease, so a worker that
lost its lease (it stalled past `lease_until` and the audit was handed to another) cannot write.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, func, or_, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hspi.api.db import ApiKey, Audit, AuditAnswer, Database, Scan, utcnow
from hspi.audit import AuditReport, AuditSettings, QueryRecord
from hspi.audit.agnostic import AGNOSTIC_KIND, AgnosticReport, AgnosticSettings
from hspi.errors import ConfigError, HspiError

FINAL = ("done", "failed", "cancelled", "interrupted")
ACTIVE = ("queued", "running")
AUDIT_ID = re.compile(r"[0-9a-f]{32}")  # uuid4().hex
FIRST_KEY_LOCK = 0x6873706B  # advisory lock (PostgreSQL) while the first admin key is made: "hspk"
ORIGIN_LOCK_SPACE = 0x68737070  # first key of the per-origin advisory locks (PostgreSQL): "hspp"
NO_MODEL = "-"  # the model column of a model-agnostic audit


class NotFound(HspiError):
    exit_code = 2


class Conflict(HspiError):
    exit_code = 2


class Forbidden(HspiError):
    exit_code = 2


class TooManyAudits(HspiError):
    """An API key at its cap of queued and running audits (429)."""

    exit_code = 2


class IdempotencyMismatch(ConfigError):
    """An Idempotency-Key reused with another request body (422, as the IETF draft says)."""


@dataclass
class ListFilter:
    status: str | None = None
    model: str | None = None
    verdict: str | None = None
    endpoint: str | None = None
    label: str | None = None
    scan_id: str | None = None
    owner: str | None = None
    created_after: dt.datetime | None = None
    created_before: dt.datetime | None = None


# -- audits: the API's side ------------------------------------------------------------------------


def is_agnostic(settings: dict[str, Any]) -> bool:
    """Whether stored settings are a model-agnostic audit's (AgnosticSettings with `kind`)."""
    return settings.get("kind") == AGNOSTIC_KIND


def stored_settings(settings: AuditSettings | AgnosticSettings) -> dict[str, Any]:
    dumped = settings.model_dump(mode="json")
    return {**dumped, "kind": AGNOSTIC_KIND} if isinstance(settings, AgnosticSettings) else dumped


def create_audit(
    db: Database,
    settings: AuditSettings | AgnosticSettings,
    *,
    origin: str,
    label: str | None = None,
    credential: bytes | None = None,
    owner: str | None = None,
    idempotency_key: str | None = None,
    max_active: int | None = None,
    request_matches: Callable[[str | None], bool] | None = None,
    request_fingerprint: str | None = None,
    before_commit: Callable[[Audit], object] | None = None,
    scan_id: str | None = None,
    scan_target: str | None = None,
) -> tuple[Audit, bool]:
    """(the audit, whether it was created now); an idempotency key or scan target seen before returns the first.

    `request_matches(stored fingerprint)` says whether the audit an idempotency key made before was
    made by the same request (else `IdempotencyMismatch`).  `max_active` caps the owner's queued and
    running audits (else `TooManyAudits`); a retry with a seen key is answered even at the cap.  `before_commit(audit)` runs inside the
    transaction: if it raises, nothing is stored (the route renders its response there).
    """
    now = utcnow()
    audit = Audit(
        id=uuid.uuid4().hex,
        created_at=now,
        updated_at=now,
        status="queued",
        endpoint=settings.endpoint,
        origin=origin,
        model=NO_MODEL if isinstance(settings, AgnosticSettings) else settings.model,
        claim={} if isinstance(settings, AgnosticSettings) else dict(settings.claim),
        settings=stored_settings(settings),
        label=label,
        credential=credential,
        owner_key_id=owner,
        idempotency_key=idempotency_key,
        request_fingerprint=request_fingerprint,
        scan_id=scan_id,
        scan_target=scan_target,
        cancel_requested=False,
        attempts=0,
        queries=0,
        answers=0,
    )
    try:
        with db.writing() as session:
            if existing := _duplicate(session, owner, idempotency_key, scan_id, scan_target):
                return _same_request(existing, idempotency_key, request_matches), False
            if max_active is not None and owner is not None:
                _check_active(session, owner, max_active)
            session.add(audit)
            if before_commit is not None:
                session.flush()
                before_commit(audit)
    except IntegrityError:  # the same key raced in from another request: the first one wins
        with db.reading() as session:
            existing = _duplicate(session, owner, idempotency_key, scan_id, scan_target)
            if existing is None:
                raise
            return _same_request(existing, idempotency_key, request_matches), False
    return audit, True


def _check_active(session: Any, owner: str, max_active: int) -> None:
    # the key's row is locked first (PostgreSQL; SQLite's writers are serial already): two requests
    # of one key cannot both see one slot free
    session.get(ApiKey, owner, with_for_update=True)
    active = session.scalar(
        select(func.count()).select_from(Audit).where(Audit.owner_key_id == owner, Audit.status.in_(ACTIVE))
    )
    if active >= max_active:
        raise TooManyAudits(
            f"API key {owner} has {active} audits queued or running; the limit is {max_active} "
            "(HSPI_MAX_ACTIVE_PER_KEY): wait for some to end, or cancel some"
        )


def _same_request(existing: Audit, key: str | None, matches: Callable[[str | None], bool] | None) -> Audit:
    if key is not None and matches is not None and not matches(existing.request_fingerprint):
        raise IdempotencyMismatch(
            f"Idempotency-Key {key!r} was used for audit {existing.id} with a different request body: "
            "send the same body to retry, or a new key for a new audit"
        )
    return existing


def _duplicate(
    session: Any, owner: str | None, idempotency_key: str | None, scan_id: str | None, scan_target: str | None
) -> Audit | None:
    if idempotency_key is not None:
        return session.scalars(
            select(Audit).where(Audit.owner_key_id == owner, Audit.idempotency_key == idempotency_key)
        ).first()
    if scan_id is not None and scan_target is not None:
        return session.scalars(select(Audit).where(Audit.scan_id == scan_id, Audit.scan_target == scan_target)).first()
    return None


def get_audit(db: Database, audit_id: str) -> Audit:
    audit = None
    if AUDIT_ID.fullmatch(audit_id):  # anything else names no audit: it never reaches the database
        with db.reading() as session:
            audit = session.get(Audit, audit_id)
    if audit is None:
        raise NotFound(f"no audit with id {shown(audit_id)}")
    return audit


def shown(value: str, limit: int = 64) -> str:
    """A value for a message: quoted, escaped, cut short."""
    return repr(value[:limit]) + ("..." if len(value) > limit else "")


def list_audits(db: Database, where: ListFilter, *, limit: int, cursor: str | None) -> tuple[list[Audit], str | None]:
    """Newest first; `cursor` continues after the last row of the previous page."""
    query = select(Audit)
    for column, value in (
        (Audit.status, where.status),
        (Audit.model, where.model),
        (Audit.verdict, where.verdict),
        (Audit.endpoint, where.endpoint),
        (Audit.label, where.label),
        (Audit.scan_id, where.scan_id),
        (Audit.owner_key_id, where.owner),
    ):
        if value is not None:
            query = query.where(column == value)
    if where.created_after is not None:
        query = query.where(Audit.created_at > where.created_after)
    if where.created_before is not None:
        query = query.where(Audit.created_at < where.created_before)
    if cursor is not None:
        at, last_id = decode_cursor(cursor)
        query = query.where(or_(Audit.created_at < at, and_(Audit.created_at == at, Audit.id < last_id)))
    query = query.order_by(Audit.created_at.desc(), Audit.id.desc()).limit(limit + 1)
    with db.reading() as session:
        rows = list(session.scalars(query))
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, encode_cursor(rows[-1]) if more and rows else None


def encode_cursor(audit: Audit) -> str:
    raw = json.dumps([audit.created_at.isoformat(), audit.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[dt.datetime, str]:
    """The (created_at, id) a cursor of `encode_cursor` holds; anything else is refused, never queried with."""
    refused = ConfigError("cursor is not one this service returned: pass next_cursor from the previous page")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, last_id = json.loads(raw)
        created = dt.datetime.fromisoformat(at)
        if created.tzinfo is None or not isinstance(last_id, str) or not AUDIT_ID.fullmatch(last_id):
            raise refused
        return created.astimezone(dt.UTC), last_id
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise refused from None


def answers(db: Database, audit_id: str, *, after: int = -1, limit: int = 1000) -> list[QueryRecord]:
    with db.reading() as session:
        rows = session.scalars(
            select(AuditAnswer.record)
            .where(AuditAnswer.audit_id == audit_id, AuditAnswer.idx > after)
            .order_by(AuditAnswer.idx)
            .limit(limit)
        )
        return [QueryRecord.model_validate(r) for r in rows]


def request_cancel(db: Database, audit_id: str) -> Audit:
    """A queued audit is cancelled at once; a running one at its next answer."""
    get_audit(db, audit_id)  # a malformed id is refused before the write transaction
    with db.writing() as session:
        audit = session.get(Audit, audit_id)
        if audit is None:
            raise NotFound(f"no audit with id {shown(audit_id)}")
        if audit.status in FINAL:
            raise Conflict(f"audit {audit_id} has already ended ({audit.status}): nothing to cancel")
        audit.cancel_requested = True
        if audit.status == "queued":
            audit.status, audit.finished_at, audit.credential = "cancelled", utcnow(), None
            audit.error = "cancelled before it started"
        return audit


def counts_by_status(db: Database, scan_id: str | None = None) -> dict[str, int]:
    query = select(Audit.status, func.count()).group_by(Audit.status)
    if scan_id is not None:
        query = query.where(Audit.scan_id == scan_id)
    with db.reading() as session:
        return {status: int(n) for status, n in session.execute(query)}


# -- audits: the workers' side --------------------------------------------------------------------


def queued(
    db: Database,
    *,
    limit: int,
    per_host: int,
    scan_id: str | None = None,
    worker: str | None = None,
    per_key: int | None = None,
) -> list[tuple[str, str, str | None]]:
    """(id, origin, owner key) of queued audits in the order they should start, leaving out the
    origins already at `per_host` running audits.

    Keys take turns: an audit's place is its key's running audits plus its rank among the key's
    queued audits, so the key with the fewest running audits goes first and a key with many queued
    audits cannot hold back another's one; among equals, the key whose last audit started longest
    ago (`ApiKey.last_started_at`, set at the claim) goes first, then the oldest audit.  With
    `worker` and `per_key`, the keys that already run `per_key` audits of that worker's pool are
    left out: a pool keeps a slot for the other keys.  Audits without a key (a scan's) are not
    counted per key.

    The running audits are counted in the database, whatever process runs them: replicas share
    the per-host limit and the turns.  The service runs the audits made through its API (no scan);
    a scan runs its own only.
    """
    full = select(Audit.origin).where(Audit.status == "running").group_by(Audit.origin)
    full = full.having(func.count() >= per_host)
    rank = func.row_number().over(partition_by=Audit.owner_key_id, order_by=(Audit.created_at, Audit.id))
    candidates = select(Audit.id, Audit.origin, Audit.owner_key_id, Audit.created_at, rank.label("rank")).where(
        Audit.status == "queued",
        Audit.scan_id.is_(None) if scan_id is None else Audit.scan_id == scan_id,
        Audit.origin.not_in(full.scalar_subquery()),
    )
    if worker is not None and per_key is not None:
        held = select(Audit.owner_key_id).where(
            Audit.status == "running", Audit.worker == worker, Audit.owner_key_id.is_not(None)
        )
        held = held.group_by(Audit.owner_key_id).having(func.count() >= per_key)
        candidates = candidates.where(
            or_(Audit.owner_key_id.is_(None), Audit.owner_key_id.not_in(held.scalar_subquery()))
        )
    waiting = candidates.subquery()
    running = (
        select(Audit.owner_key_id.label("owner"), func.count().label("n"))
        .where(Audit.status == "running", Audit.owner_key_id.is_not(None))
        .group_by(Audit.owner_key_id)
        .subquery()
    )
    query = (
        select(waiting.c.id, waiting.c.origin, waiting.c.owner_key_id)
        .outerjoin(running, running.c.owner == waiting.c.owner_key_id)
        .outerjoin(ApiKey, ApiKey.id == waiting.c.owner_key_id)
        .order_by(
            func.coalesce(running.c.n, 0) + waiting.c.rank,
            ApiKey.last_started_at.is_not(None),  # a key that never started an audit first
            ApiKey.last_started_at,
            waiting.c.created_at,
            waiting.c.id,
        )
        .limit(limit)
    )
    with db.reading() as session:
        return [(i, o, k) for i, o, k in session.execute(query)]


def claim(db: Database, audit_id: str, origin: str, worker: str, lease_s: float, *, per_host: int) -> Audit | None:
    """Take a queued audit: None if another worker took it first, it was cancelled, or its origin is full.

    The origin's running audits are counted and the audit taken in one transaction, with the
    origin's claims serialised (a transaction-scoped advisory lock on PostgreSQL; SQLite has one
    writer at a time): two replicas cannot both take the last slot of a host.  An audit of a dead
    worker counts until its lease runs out and it is requeued, so a host is never over its limit
    while that worker might still be talking to it.
    """
    now = utcnow()
    with db.writing() as session:
        if db.backend == "postgresql":
            session.execute(
                text("SELECT pg_advisory_xact_lock(:space, hashtext(:origin))"),
                {"space": ORIGIN_LOCK_SPACE, "origin": origin},
            )
        running = session.scalar(
            select(func.count()).select_from(Audit).where(Audit.origin == origin, Audit.status == "running")
        )
        if (running or 0) >= per_host:
            return None
        done = session.execute(
            update(Audit)
            .where(Audit.id == audit_id, Audit.origin == origin, Audit.status == "queued")
            .values(
                status="running",
                worker=worker,
                lease_until=now + dt.timedelta(seconds=lease_s),
                attempts=Audit.attempts + 1,
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        if done.rowcount != 1:  # type: ignore[attr-defined]  # an UPDATE's CursorResult
            return None
        audit = session.get(Audit, audit_id)
        if audit is not None and audit.started_at is None:
            audit.started_at = now
        if audit is not None and audit.owner_key_id is not None:  # its key waits its turn behind the others
            session.execute(
                update(ApiKey)
                .where(ApiKey.id == audit.owner_key_id)
                .values(last_started_at=now)
                .execution_options(synchronize_session=False)
            )
        return audit


def running_by_origin(db: Database) -> dict[str, int]:
    """Running audits per origin, over every process sharing the database."""
    query = select(Audit.origin, func.count()).where(Audit.status == "running").group_by(Audit.origin)
    with db.reading() as session:
        return {origin: int(n) for origin, n in session.execute(query)}


def _progress_values(queries: int, answers: int, lease_s: float) -> dict[str, Any]:
    now = utcnow()
    return {
        "queries": queries,
        "answers": answers,
        "updated_at": now,
        "lease_until": now + dt.timedelta(seconds=lease_s),
    }


def _update_if_held(session: Session, audit_id: str, worker: str, values: dict[str, Any]) -> bool:
    """Write `values` to the audit if this worker still runs it (its lease was not taken over)."""
    result = session.execute(
        update(Audit)
        .where(Audit.id == audit_id, Audit.worker == worker, Audit.status == "running")
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1  # type: ignore[attr-defined]  # an UPDATE's CursorResult


def _cancel_requested(session: Session, audit_id: str) -> bool:
    return bool(session.scalar(select(Audit.cancel_requested).where(Audit.id == audit_id)))


def store_answer(db: Database, audit_id: str, worker: str, record: QueryRecord, lease_s: float) -> tuple[bool, bool]:
    """Store one answer as it arrives: (whether this worker still holds the audit, whether cancel was asked)."""
    values = _progress_values(record.queries_so_far, record.index + 1, lease_s)
    if record.complete and record.leading:
        values["leading"] = record.leading
    with db.writing() as session:
        if not _update_if_held(session, audit_id, worker, values):
            return False, False
        session.add(AuditAnswer(audit_id=audit_id, idx=record.index, record=record.model_dump(mode="json")))
        cancel = _cancel_requested(session, audit_id)
    return True, cancel


def store_progress(
    db: Database, audit_id: str, worker: str, queries: int, requests: int, lease_s: float
) -> tuple[bool, bool]:
    """A model-agnostic audit's progress after one request (its requests are kept in its report, not as
    answers): (whether this worker still holds the audit, whether cancel was asked)."""
    with db.writing() as session:
        held = _update_if_held(session, audit_id, worker, _progress_values(queries, requests, lease_s))
        cancel = held and _cancel_requested(session, audit_id)
    return held, cancel


def renew(db: Database, worker: str, audit_ids: list[str], lease_s: float) -> None:
    if not audit_ids:
        return
    now = utcnow()
    with db.writing() as session:
        session.execute(
            update(Audit)
            .where(Audit.worker == worker, Audit.status == "running", Audit.id.in_(audit_ids))
            .values(lease_until=now + dt.timedelta(seconds=lease_s))
            .execution_options(synchronize_session=False)
        )


def finish(
    db: Database,
    audit_id: str,
    worker: str,
    status: str,
    *,
    report: AuditReport | AgnosticReport | None = None,
    error: str | None = None,
) -> bool:
    """End an audit this worker holds; the credential is wiped.  False if the lease was lost."""
    assert status in FINAL
    now = utcnow()
    values: dict[str, Any] = {
        "status": status,
        "finished_at": now,
        "updated_at": now,
        "credential": None,
        "worker": None,
        "lease_until": None,
        "error": error,
    }
    if report is not None:
        values.update(
            report=report.model_dump(mode="json"),
            verdict=None if isinstance(report, AgnosticReport) else report.verdict,
            stop=report.stop,
            queries=report.queries,
            answers=len(report.evidence),
        )
    with db.writing() as session:
        return (
            session.execute(
                update(Audit)
                .where(Audit.id == audit_id, Audit.worker == worker, Audit.status == "running")
                .values(**values)
                .execution_options(synchronize_session=False)
            ).rowcount  # type: ignore[attr-defined]  # an UPDATE's CursorResult
            == 1
        )


def release(db: Database, audit_id: str, worker: str) -> bool:
    """Give a running audit back to the queue (a clean shutdown): it resumes on the next start."""
    now = utcnow()
    with db.writing() as session:
        return (
            session.execute(
                update(Audit)
                .where(Audit.id == audit_id, Audit.worker == worker, Audit.status == "running")
                .values(
                    status="queued",
                    worker=None,
                    lease_until=None,
                    updated_at=now,
                    attempts=func.max(Audit.attempts - 1, 0)
                    if db.backend == "sqlite"
                    else func.greatest(Audit.attempts - 1, 0),
                )
                .execution_options(synchronize_session=False)
            ).rowcount  # type: ignore[attr-defined]  # an UPDATE's CursorResult
            == 1
        )


def recover_expired(db: Database) -> list[str]:
    """Requeue running audits whose worker is gone: they resume from their answers.

    An audit is requeued once its lease has run out *and* one request timeout more has passed: the
    dead worker's last request may still be running at the target until then, and the audit keeps
    its slot of the target's per-host limit meanwhile (measured: without this grace, a target under a
    limit of 2 saw 3 requests in flight after a replica was killed; benchmarks/results/service-scale.json).
    """
    now = utcnow()
    with db.writing() as session:
        expired = session.execute(
            select(Audit.id, Audit.settings).where(Audit.status == "running", Audit.lease_until < now)
        ).all()
        by_grace: dict[float, list[str]] = {}
        for audit_id, settings in expired:
            by_grace.setdefault(_request_timeout_s(settings), []).append(audit_id)
        ids: list[str] = []
        for grace, candidates in by_grace.items():
            cut = now - dt.timedelta(seconds=grace)
            ids += list(
                session.scalars(
                    select(Audit.id).where(Audit.id.in_(candidates), Audit.status == "running", Audit.lease_until < cut)
                )
            )
        if ids:
            session.execute(
                update(Audit)
                .where(Audit.id.in_(ids), Audit.status == "running", Audit.lease_until < now)  # not renewed since
                .values(status="queued", worker=None, lease_until=None, updated_at=now)
                .execution_options(synchronize_session=False)
            )
    return ids


def _request_timeout_s(settings: object) -> float:
    """How long one request of an audit may run (its AuditSettings.timeout_s; the default where unreadable)."""
    value = settings.get("timeout_s") if isinstance(settings, dict) else None
    default = float(AuditSettings.model_fields["timeout_s"].default)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else default


# -- API keys ---------------------------------------------------------------------------------------


def add_key(db: Database, key_id: str, name: str, secret_hash: str, scopes: list[str]) -> ApiKey:
    key = ApiKey(id=key_id, name=name, secret_hash=secret_hash, scopes=",".join(scopes))
    with db.writing() as session:
        session.add(key)
    return key


def add_first_key(db: Database, key_id: str, name: str, secret_hash: str, scopes: list[str]) -> bool:
    """Add a key to a database that has none (False if it has one): replicas starting together make one."""
    with db.writing() as session:
        if db.backend == "postgresql":  # SQLite's writers are serial already
            session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": FIRST_KEY_LOCK})
        if session.scalar(select(func.count()).select_from(ApiKey)):
            return False
        session.add(ApiKey(id=key_id, name=name, secret_hash=secret_hash, scopes=",".join(scopes)))
    return True


def get_key(db: Database, key_id: str) -> ApiKey | None:
    with db.reading() as session:
        return session.get(ApiKey, key_id)


def list_keys(db: Database) -> list[ApiKey]:
    with db.reading() as session:
        return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at)))


def count_keys(db: Database) -> int:
    with db.reading() as session:
        return int(session.scalar(select(func.count()).select_from(ApiKey)) or 0)


def revoke_key(db: Database, key_id: str) -> ApiKey:
    with db.writing() as session:
        key = session.get(ApiKey, key_id) if len(key_id) <= 32 else None
        if key is None:
            raise NotFound(f"no API key with id {shown(key_id)}")
        if key.revoked_at is None:
            key.revoked_at = utcnow()
        return key


def touch_key(db: Database, key_id: str) -> None:
    with db.writing() as session:
        session.execute(
            update(ApiKey)
            .where(ApiKey.id == key_id)
            .values(last_used_at=utcnow())
            .execution_options(synchronize_session=False)
        )


# -- scans ------------------------------------------------------------------------------------------


def ensure_scan(db: Database, scan_id: str, name: str, source: str, total: int) -> Scan:
    with db.writing() as session:
        scan = session.get(Scan, scan_id)
        if scan is None:
            scan = Scan(id=scan_id, name=name, source=source, total=total)
            session.add(scan)
        else:
            scan.total, scan.finished_at = total, None
        return scan


def finish_scan(db: Database, scan_id: str) -> None:
    with db.writing() as session:
        scan = session.get(Scan, scan_id)
        if scan is not None:
            scan.finished_at = utcnow()


def get_scan(db: Database, scan_id: str) -> Scan:
    scan = None
    if AUDIT_ID.fullmatch(scan_id):  # scan ids are uuid4().hex too
        with db.reading() as session:
            scan = session.get(Scan, scan_id)
    if scan is None:
        raise NotFound(f"no scan with id {shown(scan_id)}")
    return scan


def list_scans(db: Database, *, limit: int = 100) -> list[Scan]:
    with db.reading() as session:
        return list(session.scalars(select(Scan).order_by(Scan.created_at.desc()).limit(limit)))


def scan_audit(db: Database, scan_id: str, target: str) -> Audit | None:
    with db.reading() as session:
        return session.scalars(select(Audit).where(Audit.scan_id == scan_id, Audit.scan_target == target)).first()


def scan_audits(db: Database, scan_id: str, ids: list[str] | None = None) -> list[Audit]:
    query = select(Audit).where(Audit.scan_id == scan_id)
    if ids is not None:
        query = query.where(Audit.id.in_(ids))
    with db.reading() as session:
        return list(session.scalars(query))


def reset_for_scan(db: Database, audit_id: str) -> None:
    """A scan resumed in a new process takes back its own audits that its dead predecessor left running."""
    with db.writing() as session:
        session.execute(
            update(Audit)
            .where(Audit.id == audit_id, Audit.status == "running")
            .values(status="queued", worker=None, lease_until=None)
            .execution_options(synchronize_session=False)
        )
