"""/v1/audits: create (202, runs in the background), read, list, follow the answers, cancel."""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Query, Response

from hspi.api import store
from hspi.api.db import Audit
from hspi.api.deps import ReadKey, ServicesDep, WriteKey
from hspi.api.public_views import (
    answer_public,
    posterior_points_public,
    stored_agnostic_public,
    stored_report_public,
)
from hspi.api.schemas import (
    AnswerList,
    AuditCreate,
    AuditList,
    AuditPublic,
    AuditSummary,
    ErrorBody,
    PosteriorTrace,
    Progress,
)
from hspi.audit import AuditSettings
from hspi.audit.agnostic import DEFAULT_BUDGET as AGNOSTIC_BUDGET
from hspi.audit.agnostic import AgnosticSettings
from hspi.audit.claims import parse_claim
from hspi.audit.engine import posterior_trace
from hspi.errors import ConfigError, DatasetError
from hspi.platform import HEADS
from hspi.terms import AuditStatus, Tier

router = APIRouter(prefix="/audits", tags=["audits"])
# OpenAPI error responses per route (typed as FastAPI declares them: keys may be ints or strings)
ErrorResponses = dict[int | str, dict[str, Any]]
AUTH_ERRORS: ErrorResponses = {
    401: {"model": ErrorBody, "description": "missing, invalid or revoked API key"},
    403: {"model": ErrorBody, "description": "the key lacks the scope"},
    429: {"model": ErrorBody, "description": "rate limit exceeded (see Retry-After)"},
}
# routes that take parameters or a body: their validation errors are sentences too, not pydantic's list
ERRORS: ErrorResponses = {
    **AUTH_ERRORS,
    422: {"model": ErrorBody, "description": "a request the service cannot accept"},
}
BODY_ERRORS: ErrorResponses = {
    **ERRORS,
    413: {"model": ErrorBody, "description": "the request body is over the service's limit"},
}
NOT_FOUND: ErrorResponses = {404: {"model": ErrorBody, "description": "no such audit"}}
# fields a model-agnostic audit has no use for: sent with agnostic: true they are refused, not ignored
REFERENCE_ONLY = ("model", "claim", "min_answers", "false_match_rate", "agnostic_checks")
MAX_TRACE_ANSWERS = 512  # the trace replays each answer into the evidence (about 40 ms each here): bounded


def claim_of(value: dict[str, str] | str | None) -> dict[str, str]:
    if value is None or isinstance(value, str):
        return parse_claim(value)
    for head, label in value.items():
        if head not in HEADS:
            raise ConfigError(f"claim head {head!r} is not one of {', '.join(HEADS)}")
        if not label.strip():
            raise ConfigError(f"claim {head!r} has an empty value")
    return {h: v.strip() for h, v in value.items()}


def summary(audit: Audit) -> dict:
    return {
        "id": audit.id,
        "kind": "model-agnostic" if store.is_agnostic(audit.settings) else "reference",
        "status": audit.status,
        "created_at": audit.created_at,
        "started_at": audit.started_at,
        "finished_at": audit.finished_at,
        "endpoint": audit.endpoint,
        "model": audit.model,
        "claim": audit.claim or {},
        "label": audit.label,
        "scan_id": audit.scan_id,
        "owner": audit.owner_key_id,
        "attempts": audit.attempts,
        "has_credential": audit.credential is not None,
        "cancel_requested": audit.cancel_requested,
        "progress": Progress(
            queries=audit.queries,
            budget_queries=int(audit.settings.get("budget_queries", 0)),
            answers=audit.answers,
            leading=audit.leading or {},
        ),
        "verdict": audit.verdict,
        "stop": audit.stop,
        "error": audit.error,
    }


def public(audit: Audit) -> AuditPublic:
    return AuditPublic(
        **summary(audit),
        report=stored_report_public(audit.report),
        agnostic_report=stored_agnostic_public(audit.report),
    )


@router.post(
    "",
    status_code=202,
    response_model=AuditPublic,
    summary="Create an audit (it runs in the background)",
    responses={
        **BODY_ERRORS,
        200: {"model": AuditPublic, "description": "the audit this Idempotency-Key created before"},
        400: {"model": ErrorBody, "description": "an empty Idempotency-Key"},
        429: {
            "model": ErrorBody,
            "description": "rate limit exceeded, or the key's queued and running audits at its cap",
        },
    },
)
def create_audit(
    body: AuditCreate,
    principal: WriteKey,
    services: ServicesDep,
    response: Response,
    idempotency_key: Annotated[
        str | None,
        Header(
            max_length=200,
            description=(
                "retrying with the same key and body returns the audit created first, never a second one; "
                "the same key with another body is refused (422)"
            ),
        ),
    ] = None,
) -> AuditPublic:
    if idempotency_key is not None:
        _check_idempotency_key(idempotency_key)
    limits = services.settings
    if body.agnostic and "budget" not in body.model_fields_set:
        body = body.model_copy(update={"budget": AGNOSTIC_BUDGET})  # before the fingerprint: a retry matches
    if not 1 <= body.budget <= limits.max_budget:
        raise ConfigError(f"budget must be between 1 and {limits.max_budget}, got {body.budget}")
    settings = _agnostic_settings(body) if body.agnostic else _reference_settings(body, services)
    host, port = services.guard.split(body.endpoint)
    origin = services.guard.origin(services.guard.check_host(host, port), port)
    secret = body.target_api_key.get_secret_value() if body.target_api_key else None
    credential = services.vault.encrypt(secret) if secret is not None else None
    request = _request_bytes(body, secret)
    audit, created = store.create_audit(
        services.db,
        settings,
        origin=origin,
        label=body.label,
        credential=credential,
        owner=principal.key_id,
        idempotency_key=idempotency_key,
        max_active=limits.max_active_per_key,
        request_matches=lambda stored: stored is None or services.vault.fingerprint_matches(request, stored),
        request_fingerprint=services.vault.fingerprint(request) if idempotency_key is not None else None,
        before_commit=_renders,  # an audit whose answer cannot be sent is not stored
    )
    if created:
        services.workers.submit(audit.id)
    else:
        response.status_code = 200
    response.headers["Location"] = f"/v1/audits/{audit.id}"
    return public(audit)


def _agnostic_settings(body: AuditCreate) -> AgnosticSettings:
    given = [f for f in REFERENCE_ONLY if f in body.model_fields_set]
    if given:
        raise ConfigError(
            f"{given[0]} does not apply to a model-agnostic audit (agnostic: true): leave it out, "
            "or leave out agnostic to audit against a reference model"
        )
    if "logits" in (body.api, body.max_tier):
        raise ConfigError("a model-agnostic audit reads an OpenAI-compatible API: api and max_tier cannot be logits")
    return AgnosticSettings(
        endpoint=body.endpoint,
        api=body.api or "completions",  # type: ignore[arg-type]  # logits refused above
        served_model=body.served_model,
        budget_queries=body.budget,
        budget_tokens=body.budget_tokens,
        max_tier=body.max_tier,  # type: ignore[arg-type]  # logits refused above
        timeout_s=body.timeout_s,
        seed=body.seed,
    )


def _reference_settings(body: AuditCreate, services: ServicesDep) -> AuditSettings:
    limits = services.settings
    claim = claim_of(body.claim)
    settings = AuditSettings(
        endpoint=body.endpoint,
        model=body.model,
        claim=claim,
        budget_queries=body.budget,
        budget_tokens=body.budget_tokens,
        api=body.api,
        served_model=body.served_model,
        max_tier=Tier(body.max_tier) if body.max_tier else None,
        seed=body.seed,
        timeout_s=body.timeout_s,
        min_answers=body.min_answers,
        false_match_rate=body.false_match_rate,
        agnostic_checks=body.agnostic_checks,
        dataset=limits.dataset,
        classifier=limits.classifier,
    )
    # the references the audit reads: a registered model asked through chat reads MODEL:chat's
    services.catalog.check_model(settings.model)
    return settings


@router.get("", response_model=AuditList, summary="List audits, newest first", responses=ERRORS)
def list_audits(
    principal: ReadKey,
    services: ServicesDep,
    status: AuditStatus | None = None,
    model: str | None = None,
    verdict: Annotated[
        str | None,
        Query(
            description="consistent, inconsistent, inconclusive, identified, unknown-platform, wrong-model, nondeterministic"
        ),
    ] = None,
    endpoint: str | None = None,
    label: str | None = None,
    scan_id: str | None = None,
    owner: Annotated[str | None, Query(description="an API key id, or 'me'")] = None,
    created_after: dt.datetime | None = None,
    created_before: dt.datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=500, description="next_cursor of the previous page")] = None,
) -> AuditList:
    where = store.ListFilter(
        status=status,
        model=model,
        verdict=verdict,
        endpoint=endpoint,
        label=label,
        scan_id=scan_id,
        owner=principal.key_id if owner == "me" else owner,
        created_after=_utc(created_after, "created_after"),
        created_before=_utc(created_before, "created_before"),
    )
    rows, next_cursor = store.list_audits(services.db, where, limit=limit, cursor=cursor)
    return AuditList(data=[AuditSummary(**summary(a)) for a in rows], next_cursor=next_cursor)


@router.get(
    "/{audit_id}",
    response_model=AuditPublic,
    summary="One audit: status, progress, report",
    responses={**ERRORS, **NOT_FOUND},
)
def get_audit(audit_id: str, principal: ReadKey, services: ServicesDep) -> AuditPublic:
    return public(store.get_audit(services.db, audit_id))


@router.get(
    "/{audit_id}/answers",
    response_model=AnswerList,
    summary="The answers stored so far, in order",
    responses={
        **ERRORS,
        **NOT_FOUND,
        409: {"model": ErrorBody, "description": "a model-agnostic audit: its requests are in its report"},
    },
)
def get_answers(
    audit_id: str,
    principal: ReadKey,
    services: ServicesDep,
    after: Annotated[int, Query(ge=-1, le=2**31 - 1, description="index of the last answer already read")] = -1,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> AnswerList:
    if store.is_agnostic(store.get_audit(services.db, audit_id).settings):
        raise store.Conflict(
            f"audit {audit_id} is model-agnostic: it has no reference answers; its requests are in "
            "agnostic_report.evidence once it ends (progress counts them meanwhile)"
        )
    records = store.answers(services.db, audit_id, after=after, limit=limit)
    return AnswerList(
        data=[answer_public(r) for r in records], next_index=records[-1].index if len(records) == limit else None
    )


@router.get(
    "/{audit_id}/posteriors",
    response_model=PosteriorTrace,
    summary="Each head's leading value and its posterior after each answer (the evidence over queries)",
    responses={**ERRORS, **NOT_FOUND},
)
def get_posteriors(audit_id: str, principal: ReadKey, services: ServicesDep) -> PosteriorTrace:
    audit = store.get_audit(services.db, audit_id)
    if store.is_agnostic(audit.settings):
        return PosteriorTrace(data=[], note="a model-agnostic audit has no reference posteriors: see its checks")
    records = store.answers(services.db, audit_id, limit=MAX_TRACE_ANSWERS)
    if not records:
        return PosteriorTrace(data=[], note="no answers are stored yet")
    try:  # the stored answers, replayed into the evidence as a resumed audit replays them
        trace = posterior_trace(AuditSettings.model_validate(audit.settings), records, services.workers.references)
    except (ConfigError, DatasetError) as exc:  # e.g. a model audited without references: nothing to replay into
        return PosteriorTrace(data=[], note=f"the answers cannot be replayed into reference evidence: {exc}")
    more = audit.answers > len(records)
    note = f"the first {len(records)} of {audit.answers} answers" if more else ""
    return PosteriorTrace(data=posterior_points_public(records, trace), note=note)


@router.post(
    "/{audit_id}/cancel",
    status_code=202,
    response_model=AuditPublic,
    summary="Cancel an audit",
    responses={**ERRORS, **NOT_FOUND, 409: {"model": ErrorBody, "description": "the audit has already ended"}},
)
def cancel_audit(audit_id: str, principal: WriteKey, services: ServicesDep) -> AuditPublic:
    audit = store.get_audit(services.db, audit_id)
    if not principal.admin and audit.owner_key_id != principal.key_id:
        raise store.Forbidden(
            f"audit {audit_id} was created by another API key: only that key or an admin key can cancel it"
        )
    audit = store.request_cancel(services.db, audit_id)
    services.workers.cancel(audit_id)
    return public(audit)


def _utc(value: dt.datetime | None, name: str) -> dt.datetime | None:
    """An aware UTC datetime (naive means UTC); one that UTC cannot represent is refused."""
    if value is None:
        return None
    try:
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)
    except (OverflowError, ValueError):
        raise ConfigError(f"{name} is out of range once converted to UTC (years 1 to 9999)") from None


def _check_idempotency_key(key: str) -> None:
    """The draft's key is a non-empty string of printable ASCII (an sf-string)."""
    if not key.strip():
        raise HTTPException(400, "Idempotency-Key is empty: send a unique value (e.g. a UUID) or leave the header out")
    if not all(0x20 <= ord(c) <= 0x7E for c in key):
        raise ConfigError("Idempotency-Key must be printable ASCII")


def _request_bytes(body: AuditCreate, secret: str | None) -> bytes:
    """The request as canonical JSON (defaults filled in), for the Idempotency-Key fingerprint."""
    fields = body.model_dump(mode="json", exclude={"target_api_key"})
    return json.dumps({**fields, "target_api_key": secret}, sort_keys=True, ensure_ascii=True).encode()


def _renders(audit: Audit) -> None:
    public(audit).model_dump_json()
