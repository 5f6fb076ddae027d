"""The audit service's one settings class: `HSPI_`-prefixed environment variables, built by a factory.

Nothing is read at import time: `get_settings()` reads the environment once, when first called, and
the app factory takes an instance, so tests (and `hspi serve`) pass their own.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_DATABASE = "sqlite:///hspi.db"


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HSPI_", extra="ignore")

    database_url: str = Field(default=DEFAULT_DATABASE, description="sqlite:///file.db or postgresql+psycopg://...")
    # Fernet keys (comma-separated: the first encrypts, all decrypt, for rotation); else the key file
    secret_key: SecretStr | None = None
    secret_key_file: Path = Path("hspi-secret.key")
    # networks (CIDR or single addresses) and host names that the SSRF guard admits although they
    # are not public: e.g. 127.0.0.0/8 for a demo target on loopback
    allow_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    workers: int = Field(default=8, ge=1, le=256, description="audits running at once in this process")
    per_host: int = Field(
        default=2, ge=1, le=64, description="audits running at once against one address:port (as resolved and checked)"
    )
    max_active_per_key: int = Field(
        default=100, ge=1, description="audits one API key may have queued or running at once (more: 429)"
    )
    lease_s: float = Field(
        default=15.0, gt=0, description="a running audit whose worker is silent this long is resumed"
    )
    max_attempts: int = Field(
        default=3, ge=1, description="starts of one audit before a crash loop ends it interrupted"
    )
    on_restart: Literal["resume", "interrupt"] = "resume"  # what happens to audits a dead process left running
    max_budget: int = Field(default=4096, ge=1)
    max_body_bytes: int = Field(default=256 * 1024, ge=1024)
    body_timeout_s: float = Field(
        default=30.0, gt=0, description="a request body not fully received this long after its headers: 408, closed"
    )
    rate_per_minute: float = Field(default=600.0, gt=0, description="requests per minute per API key (sustained)")
    rate_burst: int = Field(default=120, ge=1, description="requests a key may send at once")
    dataset: Path | None = None  # default: the shipped dataset of each model
    classifier: Path | None = None  # default: the shipped classifier of each model
    bootstrap_key_file: Path | None = None  # where the first admin key is written (else printed once)

    @field_validator("allow_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        """HSPI_ALLOW_HOSTS=127.0.0.0/8,::1 (NoDecode keeps it a plain string, not JSON)."""
        items = value.split(",") if isinstance(value, str) else value
        return [str(h).strip() for h in items if str(h).strip()] if isinstance(items, (list, tuple)) else value


@lru_cache(maxsize=1)
def get_settings() -> ServiceSettings:
    """The settings from the environment, read once."""
    return ServiceSettings()
