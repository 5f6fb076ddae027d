"""The audit service's first schema: API keys, scans, audits and their answers.

Revision ID: 0001
Revises:
Create Date: 2026-05-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("scopes", sa.String(64), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("last_used_at", TS, nullable=True),
        sa.Column("revoked_at", TS, nullable=True),
    )
    op.create_table(
        "scans",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("finished_at", TS, nullable=True),
        sa.Column("total", sa.Integer(), nullable=False),
    )
    op.create_table(
        "audits",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("started_at", TS, nullable=True),
        sa.Column("finished_at", TS, nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("endpoint", sa.String(2048), nullable=False),
        sa.Column("origin", sa.String(300), nullable=False),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("claim", sa.JSON(), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("label", sa.String(200), nullable=True),
        sa.Column("credential", sa.LargeBinary(), nullable=True),
        sa.Column("owner_key_id", sa.String(32), sa.ForeignKey("api_keys.id"), nullable=True),
        sa.Column("idempotency_key", sa.String(200), nullable=True),
        sa.Column("scan_id", sa.String(32), sa.ForeignKey("scans.id"), nullable=True),
        sa.Column("scan_target", sa.String(300), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("worker", sa.String(64), nullable=True),
        sa.Column("lease_until", TS, nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("queries", sa.Integer(), nullable=False),
        sa.Column("answers", sa.Integer(), nullable=False),
        sa.Column("leading", sa.JSON(), nullable=True),
        sa.Column("verdict", sa.String(32), nullable=True),
        sa.Column("stop", sa.String(32), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("report", sa.JSON(), nullable=True),
        sa.UniqueConstraint("owner_key_id", "idempotency_key", name="uq_audits_owner_idempotency"),
        sa.UniqueConstraint("scan_id", "scan_target", name="uq_audits_scan_target"),
    )
    op.create_index("ix_audits_created", "audits", ["created_at", "id"])
    op.create_index("ix_audits_status_created", "audits", ["status", "created_at"])
    op.create_index("ix_audits_origin", "audits", ["origin"])
    op.create_index("ix_audits_owner_key_id", "audits", ["owner_key_id"])
    op.create_index("ix_audits_scan_id", "audits", ["scan_id"])
    op.create_index("ix_audits_verdict", "audits", ["verdict"])
    op.create_table(
        "audit_answers",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("audit_id", sa.String(32), sa.ForeignKey("audits.id", ondelete="CASCADE"), nullable=False),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("record", sa.JSON(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("audit_id", "idx", name="uq_audit_answers_audit_idx"),
    )
    op.create_index("ix_audit_answers_audit_id", "audit_answers", ["audit_id"])


def downgrade() -> None:
    op.drop_table("audit_answers")
    op.drop_table("audits")
    op.drop_table("scans")
    op.drop_table("api_keys")
