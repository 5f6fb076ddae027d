"""Alembic migrations of the audit service's schema (`Database.migrate()` runs them to head)."""
