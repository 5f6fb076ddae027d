"""Request rate limits that every replica of the service shares: one token bucket per API key, in the database.

Several `hspi serve` processes on one PostgreSQL must not each grant a key its whole rate: the
bucket is a row of `rate_buckets`, read and written under a row lock in one short transaction, and
refilled by the database's clock (replicas on other machines may disagree about the time; the
database does not).  SQLite is the one-process deployment: there the in-process `RateLimiter`
does the same job without turning every read request into a synchronous disk write.
"""

from __future__ import annotations

from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError

from hspi.api.db import Database, RateBucket
from hspi.api.security import RateLimiter


class DatabaseRateLimiter:
    """`take(key)` as `RateLimiter.take`, with the bucket in the database (PostgreSQL)."""

    def __init__(self, db: Database, per_minute: float, burst: int) -> None:
        if db.backend != "postgresql":
            raise ValueError("DatabaseRateLimiter needs PostgreSQL (SQLite serves one process: use RateLimiter)")
        self.db, self.rate, self.burst = db, per_minute / 60.0, float(burst)

    def take(self, key: str) -> float:
        """0 if a request may go now (a token is taken), else the seconds until one may."""
        for _ in range(2):  # the first request of a key may race another replica inserting its row
            try:
                return self._take(key)
            except IntegrityError:
                continue
        return self._take(key)

    def _take(self, key: str) -> float:
        with self.db.writing() as session:
            now = float(session.scalar(text("SELECT extract(epoch FROM clock_timestamp())")))
            bucket = session.scalars(select(RateBucket).where(RateBucket.key_id == key).with_for_update()).first()
            if bucket is None:
                session.add(RateBucket(key_id=key, tokens=self.burst - 1.0, refreshed_at=now))
                return 0.0
            # the clock was read before the lock: another replica may have refreshed the row since
            now = max(now, bucket.refreshed_at)
            tokens = min(self.burst, bucket.tokens + (now - bucket.refreshed_at) * self.rate)
            bucket.refreshed_at = now
            if tokens >= 1.0:
                bucket.tokens = tokens - 1.0
                return 0.0
            bucket.tokens = tokens
            return (1.0 - tokens) / self.rate


def rate_limiter(db: Database, per_minute: float, burst: int) -> RateLimiter | DatabaseRateLimiter:
    """The limiter for this database: shared through PostgreSQL, in process on SQLite (one process)."""
    if db.backend == "postgresql":
        return DatabaseRateLimiter(db, per_minute, burst)
    return RateLimiter(per_minute, burst)
