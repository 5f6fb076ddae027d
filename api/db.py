"""Persistence: SQLAlchemy 2.0 models and the `Database` that owns the engine and its sessions.

    api_keys       hashed API keys with their scopes (read < write < admin)
    scans          one row per `hspi scan` run
    audits         one row per audit: what to audit, its state, progress, lease and final report;
                   the target credential only as a Fernet token, wiped when the audit ends
    audit_answers  every probe answer, one row per answer, written as it arrives
    rate_buckets   the request token bucket of each API key, shared by every replica (PostgreSQL)

The schema is created and changed only by Alembic migrations (`api/migrations/`), which
`Database.migrate()` runs to head at start.  SQLite (the embedded default) runs in WAL mode, and
transactions that write start with `BEGIN IMMEDIATE` so that concurrent writers queue on the lock
instead of failing; PostgreSQL is used through a `postgresql+psycopg://` URL.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
    text,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from hspi.errors import ConfigError

SQLITE_BUSY_TIMEOUT_MS = 30_000  # writers wait this long for the lock: answers of many audits arrive at once
POSTGRES_MIGRATION_LOCK = 0x68737069  # "hspi": one replica migrates at a time


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator):
    """Aware UTC datetimes on every backend (SQLite keeps naive text: stored as UTC, read back as UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: hspi stores aware UTC datetimes only")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    pass


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # public part of the key
    name: Mapped[str] = mapped_column(String(200))
    secret_hash: Mapped[str] = mapped_column(String(64))  # SHA-256 of the whole key, hex
    scopes: Mapped[str] = mapped_column(String(64))  # comma-separated
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    last_started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())  # its last audit claimed: turns


class Scan(Base):
    __tablename__ = "scans"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    source: Mapped[str] = mapped_column(Text)  # the targets file
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    total: Mapped[int] = mapped_column(Integer, default=0)


class Audit(Base):
    __tablename__ = "audits"
    __table_args__ = (
        UniqueConstraint("owner_key_id", "idempotency_key", name="uq_audits_owner_idempotency"),
        UniqueConstraint("scan_id", "scan_target", name="uq_audits_scan_target"),
        Index("ix_audits_created", "created_at", "id"),
        Index("ix_audits_status_created", "status", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    # queued -> running -> done | failed | cancelled | interrupted (running -> queued on a restart)
    status: Mapped[str] = mapped_column(String(16))
    endpoint: Mapped[str] = mapped_column(String(2048))
    origin: Mapped[str] = mapped_column(String(300), index=True)  # host:port, the unit of per-host limits
    model: Mapped[str] = mapped_column(String(64))
    claim: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON)  # AuditSettings, as JSON
    label: Mapped[str | None] = mapped_column(String(200))
    credential: Mapped[bytes | None] = mapped_column(LargeBinary)  # Fernet token; wiped when the audit ends
    owner_key_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id"), index=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    # HMAC of the creating request (Vault.fingerprint): the same key with another body is refused
    request_fingerprint: Mapped[str | None] = mapped_column(String(64))
    scan_id: Mapped[str | None] = mapped_column(ForeignKey("scans.id"), index=True)
    scan_target: Mapped[str | None] = mapped_column(String(300))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    worker: Mapped[str | None] = mapped_column(String(64))  # the process that holds the lease
    lease_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    queries: Mapped[int] = mapped_column(Integer, default=0)
    answers: Mapped[int] = mapped_column(Integer, default=0)
    leading: Mapped[dict[str, str] | None] = mapped_column(JSON)
    verdict: Mapped[str | None] = mapped_column(String(32), index=True)
    stop: Mapped[str | None] = mapped_column(String(32))
    error: Mapped[str | None] = mapped_column(Text)
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class AuditAnswer(Base):
    __tablename__ = "audit_answers"
    __table_args__ = (UniqueConstraint("audit_id", "idx", name="uq_audit_answers_audit_idx"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    audit_id: Mapped[str] = mapped_column(ForeignKey("audits.id", ondelete="CASCADE"), index=True)
    idx: Mapped[int] = mapped_column(Integer)  # the answer's index in its audit
    record: Mapped[dict[str, Any]] = mapped_column(JSON)  # a QueryRecord, values exact (float32 as float64)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class RateBucket(Base):
    """One API key's token bucket: the tokens left at `refreshed_at` (seconds since the epoch, the database's clock)."""

    __tablename__ = "rate_buckets"

    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tokens: Mapped[float] = mapped_column(Float)
    refreshed_at: Mapped[float] = mapped_column(Float)


class Database:
    """The engine and its sessions; `migrate()` brings the schema to Alembic's head."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        try:
            parsed = make_url(url)
        except ArgumentError:
            raise ConfigError(
                f"database URL {_safe_url(url)!r} is not a SQLAlchemy URL "
                "(sqlite:///file.db or postgresql+psycopg://user@host/db)"
            ) from None
        self.url, self.backend = parsed, parsed.get_backend_name()
        if self.backend not in ("sqlite", "postgresql"):
            raise ConfigError(f"database {self.backend!r} is not supported: use sqlite:/// or postgresql+psycopg://")
        try:
            if self.backend == "sqlite":
                self.engine = _sqlite_engine(parsed, echo)
            else:
                self.engine = create_engine(parsed, echo=echo, pool_pre_ping=True, pool_size=10, max_overflow=20)
        except (NoSuchModuleError, ImportError) as exc:
            raise ConfigError(f"no driver for {parsed.drivername}: {exc}") from None
        # SQLite has one writer at a time: this process's writers queue on a lock, not on SQLite's
        # busy handler, whose growing sleeps give long tails under load (other processes still wait there)
        self._local_writer: Any = threading.Lock() if self.backend == "sqlite" else nullcontext()
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write = sessionmaker(self.engine.execution_options(hspi_write=True), expire_on_commit=False)

    def __repr__(self) -> str:
        return f"Database({self.url.render_as_string(hide_password=True)!r})"

    @property
    def safe_url(self) -> str:
        return self.url.render_as_string(hide_password=True)

    @contextmanager
    def reading(self) -> Iterator[Session]:
        with self._read() as session:
            yield session

    @contextmanager
    def writing(self) -> Iterator[Session]:
        """A transaction that commits at the end of the block (rolls back on an exception)."""
        with self._local_writer, self._write() as session, session.begin():
            yield session

    def migrate(self) -> None:
        """Run Alembic's migrations up to head (idempotent; replicas take turns on PostgreSQL)."""
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
        try:
            with self.engine.connect() as connection:
                if self.backend == "postgresql":
                    connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": POSTGRES_MIGRATION_LOCK})
                    connection.commit()
                try:
                    config.attributes["connection"] = connection
                    command.upgrade(config, "head")
                    connection.commit()
                finally:
                    if self.backend == "postgresql":
                        connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": POSTGRES_MIGRATION_LOCK})
                        connection.commit()
        except OperationalError as exc:
            raise ConfigError(f"cannot open the database {self.safe_url}: {_first_line(exc.orig or exc)}") from None

    def revision(self) -> str | None:
        with self.engine.connect() as connection:
            try:
                return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
            except Exception:  # noqa: BLE001 - no table yet
                return None

    def ping(self) -> None:
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_engine(url: Any, echo: bool) -> Engine:
    database = url.database
    if database and database != ":memory:":
        path = Path(database).expanduser().resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():  # key hashes and sealed credentials: readable by its owner only
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    engine = create_engine(
        url,
        echo=echo,
        connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
        pool_size=20,
        max_overflow=20,
    )

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself (below)
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")  # each commit (each stored answer) survives a power cut too
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        # a writer takes the lock up front: upgrading a read lock later can fail at once with "locked"
        connection.exec_driver_sql(
            "BEGIN IMMEDIATE" if connection.get_execution_options().get("hspi_write") else "BEGIN"
        )

    return engine


def _first_line(exc: object) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _safe_url(url: str) -> str:
    """A URL for a message: never its password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url.split("@")[-1]
