"""The model-agnostic section of a reference audit's report: what the endpoint's own answers say.

    agnostic_section(target, tier, records, budget, ask=...) -> AgnosticSection

A reference audit (`hspi audit --model M`) reports the platform matched against M's references; this
section adds the checks of the model-agnostic audit (audit.agnostic), nmap-style, each a reading
with its probability and evidence or `unknown` and why:

    precision    read from the top-k logprobs the reference audit already collected: no extra query.
    determinism  asked only on request (`ask=True`: `hspi audit --agnostic-checks`, the API's
    engine       `agnostic_checks: true`), after the reference verdict is reached: at most
                 `CHECK_QUERIES` more requests (GET /models, a plain prompt, the same prompt again
                 alone, a malformed request, two concurrent copies), taken from the budget the
                 reference audit left, never beyond it.

Why opt-in: a reference audit's query count is a measured figure (accuracy against queries in
benchmarks/, "consistent within N queries" in the tests and the README); six requests added to every
audit would change it silently.  Asked after the verdict, the extra requests cannot change it either.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field

from hspi.audit.agnostic import AgnosticAudit, AgnosticRecord, AgnosticSettings, Check, precision_check
from hspi.collector.targets.http_client import QueryBudget

# /models, a first answer, a repeat alone, a malformed request, a burst of two concurrent copies
CHECK_QUERIES = 6
CHECK_PLAN = ("models", "first", "repeat", "malformed", "burst")
CHECK_BURST = 2
TOKENS_PER_CHECK = 40  # a plain prompt of ten CJK characters (30 bytes) and one generated token, with slack
NOT_ASKED = (
    f"not asked: it costs up to {CHECK_QUERIES} more queries (opt in with --agnostic-checks, "
    "or agnostic_checks: true through the API)"
)


class AgnosticSection(BaseModel):
    """The model-agnostic checks of a reference audit (the `agnostic` field of its report)."""

    checks: dict[str, Check]
    asked: bool = False  # determinism and engine were asked for (they cost queries)
    queries: int = 0  # what they cost; precision costs none (read from the reference answers)
    tokens: int = 0
    stop: Literal["plan-done", "budget", "target-error", "interrupted"] | None = None  # of the extra requests
    reason: str = ""
    prompts: list[str] = Field(default_factory=list)
    evidence: list[AgnosticRecord] = Field(default_factory=list)


class SectionTarget(BaseModel):
    """What the section needs of the audit's settings (AuditSettings, without importing the engine)."""

    endpoint: str
    api: str
    served_model: str | None = None
    timeout_s: float = 10.0
    retries: int = 2
    seed: int | None = None


def reference_precision(tier: str | None, answers: Sequence[tuple[int, bool, str, list[float]]]) -> Check:
    """Logit precision from the reference audit's answers: (probe id, complete, tier, logprobs) each."""
    if tier is None:
        return Check(verdict="unknown", probability=0.0, reason="no answer was scored")
    if tier == "logits":
        return Check(
            verdict="unknown",
            probability=0.0,
            reason="read at the top-k logprob tiers only: at the logits tier the reference heads read the values",
        )
    rows = [
        (f"probe {probe}", list(values) if values else None, "" if values else "no values kept")
        for probe, complete, answer_tier, values in answers
        if complete and answer_tier == tier
    ]
    return precision_check(rows, tier)


def _unknown(reason: str) -> Check:
    return Check(verdict="unknown", probability=0.0, reason=reason)


def agnostic_section(
    target: SectionTarget,
    tier: str | None,
    answers: Sequence[tuple[int, bool, str, list[float]]],
    budget: QueryBudget | None,
    *,
    ask: bool,
    api_key: str | None = None,
    transport: Any = None,
    should_stop: Callable[[], bool] | None = None,
    skip_why: str = "",
) -> AgnosticSection:
    """The section: precision from `answers`; determinism and engine asked only if `ask`, within what
    `budget` has left (at most CHECK_QUERIES requests), their cost added to it.  `skip_why`: why they are
    not asked although asked for (the reference audit was interrupted or the endpoint failed)."""
    precision = reference_precision(tier, answers)
    if not ask or budget is None or skip_why:
        why = NOT_ASKED if not ask else skip_why or "not asked: the report was read from stored answers"
        return AgnosticSection(checks={"precision": precision, "determinism": _unknown(why), "engine": _unknown(why)})
    if target.api not in ("completions", "chat"):
        why = "not asked: a JSON-logits endpoint has none of the OpenAI routes the checks read"
        return AgnosticSection(checks={"precision": precision, "determinism": _unknown(why), "engine": _unknown(why)})
    queries_left = min(CHECK_QUERIES, budget.max_queries - budget.queries)
    tokens_left = min(TOKENS_PER_CHECK * CHECK_QUERIES, budget.max_tokens - budget.tokens)
    if queries_left < 1 or tokens_left < 1:
        why = (
            f"not asked: the reference audit spent the budget ({budget.queries}/{budget.max_queries} queries, "
            f"{budget.tokens}/{budget.max_tokens} tokens); rerun with --budget {budget.queries + CHECK_QUERIES}"
        )
        return AgnosticSection(
            checks={"precision": precision, "determinism": _unknown(why), "engine": _unknown(why)}, asked=True
        )
    settings = AgnosticSettings(
        endpoint=target.endpoint,
        api=target.api,  # type: ignore[arg-type]  # completions or chat, checked above
        served_model=target.served_model,
        budget_queries=queries_left,
        budget_tokens=tokens_left,
        max_tier=tier if tier in ("topk20", "topk5", "top1", "text") else None,  # type: ignore[arg-type]
        timeout_s=target.timeout_s,
        retries=target.retries,
        seed=target.seed,
    )
    # a budget of its own, capped by what the reference audit left: the audit's caps hold, then its cost is added
    report = AgnosticAudit(
        settings, api_key=api_key, transport=transport, should_stop=should_stop, burst=CHECK_BURST
    ).run(CHECK_PLAN)
    budget.queries += report.queries
    budget.tokens += report.tokens
    return AgnosticSection(
        checks={"precision": precision, **{k: v for k, v in report.checks.items() if k != "precision"}},
        asked=True,
        queries=report.queries,
        tokens=report.tokens,
        stop=report.stop,
        reason=report.reason,
        prompts=report.prompts,
        evidence=report.evidence,
    )
