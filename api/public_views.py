"""The one place the audit engine's objects become the API's response models (api/schemas.py).

The engine's report is what `hspi audit --json` writes and what the database stores; the API
publishes its own models, built here field by field, so a field the engine adds, renames or drops
changes this module (and mypy says where), never the public contract by accident.  Two values are
published differently from the engine's: `dataset` and `classifier` are the directories' names, not
the server's filesystem paths the engine records.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hspi.api.schemas import (
    AgnosticCheckPublic,
    AgnosticReportPublic,
    AgnosticRequestPublic,
    AgnosticSectionPublic,
    AnswerPublic,
    AuditReportPublic,
    BatchingPublic,
    EvidenceBoundPublic,
    GuessPublic,
    HeadBoundPublic,
    HeadLeaderPublic,
    HeadPublic,
    LogitPrecisionPublic,
    MatchedClassPublic,
    PosteriorPointPublic,
)
from hspi.audit import AuditReport, HeadReport, QueryRecord
from hspi.audit.agnostic import AGNOSTIC_KIND, AgnosticRecord, AgnosticReport, Check
from hspi.audit.agnostic_section import AgnosticSection


def answer_public(record: QueryRecord) -> AnswerPublic:
    return AnswerPublic(
        index=record.index,
        probe_set=record.probe_set,
        probe_id=record.probe_id,
        tier=record.tier,
        complete=record.complete,
        ids=list(record.ids),
        values=list(record.values),
        queries_so_far=record.queries_so_far,
        leading=dict(record.leading),
        note=record.note,
        repeat=record.repeat,
    )


def head_public(head: HeadReport) -> HeadPublic:
    return HeadPublic(
        guesses=[GuessPublic(label=g.label, probability=g.probability) for g in head.guesses],
        decided=head.decided,
        basis=head.basis,
        claimed=head.claimed,
        claim_probability=head.claim_probability,
        verdict=head.verdict,
        why=head.why,
    )


def heads_public(heads: dict[str, HeadReport]) -> dict[str, HeadPublic]:
    return {name: head_public(head) for name, head in heads.items()}


def report_public(report: AuditReport) -> AuditReportPublic:
    matched, precision, bound = report.matched_class, report.logit_precision, report.evidence_bound
    return AuditReportPublic(
        endpoint=report.endpoint,
        model=report.model,
        api=report.api,
        tier=report.tier,
        status=report.status,
        verdict=report.verdict,
        reason=report.reason,
        stop=report.stop,
        queries=report.queries,
        tokens=report.tokens,
        budget_queries=report.budget_queries,
        budget_tokens=report.budget_tokens,
        answers_used=report.answers_used,
        match_score=report.match_score,
        threshold=report.threshold,
        claim=dict(report.claim),
        heads=heads_public(report.heads),
        matched_class=None
        if matched is None
        else MatchedClassPublic(name=matched.name, members=list(matched.members), labels=dict(matched.labels)),
        caveat=report.caveat,
        logit_precision=None
        if precision is None
        else LogitPrecisionPublic(
            verdict=precision.verdict,
            posterior=dict(precision.posterior),
            answers_used=precision.answers_used,
            reason=precision.reason,
        ),
        agnostic=None if report.agnostic is None else agnostic_section_public(report.agnostic),
        evidence=[answer_public(r) for r in report.evidence],
        # the engine records where it read them; a client is told their names, not the server's paths
        dataset=Path(report.dataset).name,
        classifier=Path(report.classifier).name,
        seconds=report.seconds,
        evidence_bound=None
        if bound is None
        else EvidenceBoundPublic(
            alpha=bound.alpha,
            log_evalue=bound.log_evalue,
            log_threshold=bound.log_threshold,
            leader_log_evalue=bound.leader_log_evalue,
            leader=bound.leader,
            answers=bound.answers,
            met=bound.met,
            heads={h: HeadBoundPublic(**r.model_dump()) for h, r in bound.heads.items()},
        ),
        batching=None if report.batching is None else BatchingPublic(**report.batching.model_dump()),
        determinism=None if report.determinism is None else check_public(report.determinism),
    )


def stored_report_public(stored: dict[str, Any] | None) -> AuditReportPublic | None:
    """A report as the database keeps it (the engine's JSON), published; None before the audit ends
    and for a model-agnostic audit (`stored_agnostic_public`)."""
    if stored is None or stored.get("kind") == AGNOSTIC_KIND:
        return None
    return report_public(AuditReport.model_validate(stored))


def check_public(check: Check) -> AgnosticCheckPublic:
    return AgnosticCheckPublic(
        verdict=check.verdict, probability=check.probability, reason=check.reason, evidence=dict(check.evidence)
    )


def agnostic_request_public(r: AgnosticRecord) -> AgnosticRequestPublic:
    return AgnosticRequestPublic(
        index=r.index,
        step=r.step,
        method=r.method,
        path=r.path,
        status=r.status,
        tier_asked=r.tier_asked,
        texts=list(r.texts),
        values=list(r.values),
        problem=r.problem,
        fields=dict(r.fields),
        queries_so_far=r.queries_so_far,
        seconds=r.seconds,
    )


def agnostic_section_public(section: AgnosticSection) -> AgnosticSectionPublic:
    return AgnosticSectionPublic(
        checks={name: check_public(check) for name, check in section.checks.items()},
        asked=section.asked,
        queries=section.queries,
        tokens=section.tokens,
        stop=section.stop,
        reason=section.reason,
        prompts=list(section.prompts),
        evidence=[agnostic_request_public(r) for r in section.evidence],
    )


def agnostic_report_public(report: AgnosticReport) -> AgnosticReportPublic:
    return AgnosticReportPublic(
        endpoint=report.endpoint,
        prompts=list(report.prompts),
        api=report.api,
        served_model=report.served_model,
        tier=report.tier,
        stop=report.stop,
        reason=report.reason,
        queries=report.queries,
        tokens=report.tokens,
        budget_queries=report.budget_queries,
        budget_tokens=report.budget_tokens,
        checks={name: check_public(check) for name, check in report.checks.items()},
        evidence=[agnostic_request_public(r) for r in report.evidence],
        seconds=report.seconds,
    )


def stored_agnostic_public(stored: dict[str, Any] | None) -> AgnosticReportPublic | None:
    """A model-agnostic audit's report as the database keeps it, published; None for any other."""
    if stored is None or stored.get("kind") != AGNOSTIC_KIND:
        return None
    return agnostic_report_public(AgnosticReport.model_validate(stored))


def posterior_points_public(
    records: list[QueryRecord], trace: list[dict[str, tuple[str, float]]]
) -> list[PosteriorPointPublic]:
    """`audit.engine.posterior_trace`'s readings beside the answers they follow."""
    return [
        PosteriorPointPublic(
            index=record.index,
            queries_so_far=record.queries_so_far,
            complete=record.complete,
            heads={h: HeadLeaderPublic(label=label, probability=p) for h, (label, p) in leaders.items()},
        )
        for record, leaders in zip(records, trace, strict=True)
    ]
