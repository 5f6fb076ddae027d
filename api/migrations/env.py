"""Alembic environment: the service passes its open connection; `alembic` on the command line
(with `-x url=...` or `sqlalchemy.url`) opens one itself."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from hspi.api.db import Base

config = context.config
target_metadata = Base.metadata


def _configure(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if context.is_offline_mode():
        context.configure(url=url, target_metadata=target_metadata, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    if not url:
        raise RuntimeError("alembic: no database URL (pass -x url=... or set sqlalchemy.url)")
    engine = create_engine(url)
    with engine.connect() as connection:
        _configure(connection)
        connection.commit()
    engine.dispose()


run()
