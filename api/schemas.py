"""Request and response bodies of the audit API (pydantic), apart from the SQLAlchemy models.

Families per resource, as in the FastAPI template: `AuditCreate` in, `AuditPublic` out (with the
report), `AuditSummary` in lists, `AuditList` = `{data, next_cursor}`.  No response model has a
field that could carry a target credential or an API key's hash.

The report, its answers and head readings are the API's own models (`AuditReportPublic`,
`AnswerPublic`, `HeadPublic`), not the audit engine's: `api/public_views.py` converts the engine's
objects into them in one place, so the engine can change without changing this contract (an
import-linter contract keeps this module from importing the engine).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, SecretStr, field_validator
from pydantic_core import PydanticCustomError

from hspi.api.input_text import FREE_TEXT, NAME, text_problem
from hspi.terms import AuditStatus, MatchStatus, Scope, StopReason, Tier, Verdict

FINAL_STATUSES = ("done", "failed", "cancelled", "interrupted")
ClassifyTier = Literal["logits", "topk20", "topk5", "top1"]  # the tiers a reference matcher reads

# what clients may send (see input_text.py): valid Unicode, no NUL, no control characters, bounded
ModelName = Annotated[str, Field(max_length=64), NAME]
ClaimHead = Annotated[str, Field(max_length=64), NAME]
ClaimValue = Annotated[str, Field(max_length=200), NAME]
Claim = Annotated[dict[ClaimHead, ClaimValue], Field(max_length=16)] | Annotated[str, Field(max_length=1000), NAME]
Label = Annotated[str, Field(max_length=200), FREE_TEXT]
MAX_ID = 2**31 - 1  # fits a 32-bit column on every backend


class ErrorBody(BaseModel):
    detail: str = Field(description="what was wrong, in a sentence")


class AuditCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"endpoint": "http://127.0.0.1:8801/v1", "model": "lm-small", "claim": {"dtype": "fp32"}, "budget": 128}
            ]
        },
    )

    endpoint: Annotated[str, NAME] = Field(
        max_length=2048,
        description="base URL of an OpenAI-compatible endpoint, ending in /v1 (or a JSON logits URL for vision models)",
    )
    model: ModelName = Field(default="lm-small", description="the reference model it claims to serve")
    agnostic: bool = Field(
        default=False,
        description=(
            "a model-agnostic audit: no model and no claim, only what the endpoint's own answers say (logit "
            "precision, determinism, engine); budget defaults to 8 queries"
        ),
    )
    agnostic_checks: bool = Field(
        default=False,
        description=(
            "with a model: after the reference verdict, also ask the model-agnostic determinism and engine checks "
            "(up to 6 more queries, inside the budget); logit precision is read from the answers either way"
        ),
    )
    claim: Claim | None = Field(
        default=None, description='what the provider claims: {"dtype": "fp32"} or "dtype=fp32,hardware=x86-avx2"'
    )
    budget: int = Field(default=64, description="most queries to send, retries included (1 to the service's maximum)")
    budget_tokens: int | None = Field(
        default=None, ge=1, le=2**53, description="most billed tokens (default: what the queries cost)"
    )
    api: Literal["completions", "chat", "logits"] | None = None  # default: by the model's inputs
    served_model: Annotated[str, Field(max_length=200), NAME] | None = Field(
        default=None, description="the model name the endpoint expects"
    )
    max_tier: Literal["logits", "topk20", "topk5", "top1"] | None = None  # default: the richest given
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1, description="probe-order seed")
    timeout_s: float = Field(default=10.0, gt=0, le=120, description="seconds per request to the target")
    min_answers: int = Field(
        default=2,
        ge=1,
        le=64,
        description=(
            "answers before a match may be declared; the extra ones verify the leader where its near twins part"
        ),
    )
    false_match_rate: float = Field(
        default=0.01,
        gt=0.0,
        lt=1.0,
        description=(
            "a match waits until a platform never collected that agrees with the leader would have been declared "
            "one with at most this probability (an e-value bound; the answers needed follow from it)"
        ),
    )
    target_api_key: Annotated[SecretStr, Field(max_length=4096)] | None = Field(
        default=None,
        description=(
            "the target's API key (printable ASCII): sent as a Bearer token, encrypted at rest, never returned or logged"
        ),
    )
    label: Label | None = Field(default=None, description="free text to find the audit by")

    @field_validator("target_api_key")
    @classmethod
    def _printable_ascii(cls, value: SecretStr | None) -> SecretStr | None:
        """It goes into an Authorization header: CR/LF would split the header, non-ASCII cannot be sent."""
        if value is not None:
            problem = text_problem(value.get_secret_value(), "credential") if value.get_secret_value() else "is empty"
            if problem:
                raise PydanticCustomError("invalid_text", problem)
        return value


class Progress(BaseModel):
    queries: int = Field(description="billed queries so far, retries included")
    budget_queries: int
    answers: int = Field(description="answers stored so far")
    leading: dict[str, str] = Field(default_factory=dict, description="each head's leading guess after the last answer")


class AnswerPublic(BaseModel):
    """One answer of the target, as stored: what was asked and exactly what it showed."""

    index: int = Field(description="its place in the audit, from 0")
    probe_set: str
    probe_id: int = Field(description="the reference-pool probe asked")
    tier: str = Field(description="the tier it was read at ('-': not scored, no tier known yet)")
    complete: bool = Field(description="the target answered in full (false: an error or a partial answer)")
    ids: list[int] = Field(description="token ids shown, best first")
    values: list[float] = Field(description="their exact float32 values, as float64")
    queries_so_far: int = Field(description="billed requests up to and including this answer")
    leading: dict[str, str] = Field(description="each head's leading guess after this answer")
    note: str = Field(description="why the answer is incomplete, if it is")
    repeat: bool = Field(
        default=False,
        description="a probe asked again because nothing known fit: compared with its first answer, not scored",
    )


class GuessPublic(BaseModel):
    label: str
    probability: float


class HeadPublic(BaseModel):
    """One classifier head's reading: ranked guesses and, for a claimed head, its verdict."""

    guesses: list[GuessPublic] = Field(description="best first; empty where the evidence does not decide the head")
    decided: bool
    basis: str = Field(description="the evidence the reading rests on (reference-match, greedy-vote, none)")
    claimed: str | None
    claim_probability: float | None
    verdict: str | None = Field(description="consistent, inconsistent or inconclusive for a claimed head")
    why: str


class MatchedClassPublic(BaseModel):
    name: str
    members: list[str] = Field(description="platforms of the collection with bit-identical outputs")
    labels: dict[str, str]


class LogitPrecisionPublic(BaseModel):
    verdict: str = Field(
        description="fp32, bf16, fp16, fp8-e4m3, fp8-e5m2, fp8 (e4m3 or e5m2, not told apart), none-of-these or unknown"
    )
    posterior: dict[str, float]
    answers_used: int
    reason: str


class HeadBoundPublic(BaseModel):
    """One head's own bound: the answers exclude, at alpha, an unseen platform with another value of it."""

    value: str | None = Field(description="the value whose e-value leads (null: no class fits every answer)")
    log_evalue: float | None
    log_threshold: float = Field(description="log(H/alpha): the heads share alpha")
    closeness: float = Field(description="b: how often a platform with another value may answer a probe alike")
    met: bool


class EvidenceBoundPublic(BaseModel):
    """The e-value against a platform never collected, after the answers so far."""

    alpha: float
    log_evalue: float | None
    log_threshold: float = Field(description="log(1/alpha): the bound is met once log_evalue reaches it")
    leader_log_evalue: float | None
    leader: int = Field(description="index of the leading class in GET /v1/platforms?model=... (-1: none)")
    answers: int
    met: bool
    heads: dict[str, HeadBoundPublic] = Field(default_factory=dict, description="per head (all but full)")


class BatchingPublic(BaseModel):
    """Whether the endpoint runs requests in batches, read against the matched class's answers under batching."""

    state: str = Field(description="observed, not observed, or unknown")
    answers: int = Field(description="answers that fit the leading class")
    from_batches: int = Field(description="of them, answers that class gives only inside a batch of 2 or more")
    sizes: list[int] = Field(description="the batch sizes that give those answers")
    reason: str


class AuditReportPublic(BaseModel):
    """What an audit found, in the shape `hspi audit --json` writes (dataset and classifier by name)."""

    endpoint: str
    model: str
    api: str
    tier: Tier | None
    status: MatchStatus
    verdict: Verdict | None = Field(description="null only in reports stored before every audit had one")
    reason: str
    stop: StopReason
    queries: int
    tokens: int
    budget_queries: int
    budget_tokens: int
    answers_used: int
    match_score: float
    threshold: float
    claim: dict[str, str]
    heads: dict[str, HeadPublic]
    matched_class: MatchedClassPublic | None
    caveat: str
    logit_precision: LogitPrecisionPublic | None
    agnostic: AgnosticSectionPublic | None = Field(
        default=None,
        description="the model-agnostic checks (precision, determinism, engine), each a reading or unknown and why",
    )
    evidence: list[AnswerPublic]
    dataset: str = Field(description="the name of the reference dataset (its directory's name)")
    classifier: str = Field(description="the name of the classifier (its directory's name)")
    seconds: float
    evidence_bound: EvidenceBoundPublic | None = Field(description="null at the text tier")
    batching: BatchingPublic | None = Field(
        default=None, description="dynamic batching seen in the answers (null at the text tier and in older reports)"
    )
    determinism: AgnosticCheckPublic | None = Field(
        default=None,
        description="when the answers fit nothing known: one prompt asked again, its answers compared bit for bit "
        "(nondeterministic when no two agree); null when the answers fit",
    )


class AgnosticCheckPublic(BaseModel):
    """One model-agnostic check: a reading and its probability, or `unknown` and why."""

    verdict: str = Field(description="the reading, or unknown")
    probability: float
    reason: str
    evidence: dict[str, Any] = Field(description="what the reading rests on (posteriors, groups of answers, tells)")


class AgnosticRequestPublic(BaseModel):
    """One request of a model-agnostic audit and what the endpoint showed."""

    index: int
    step: str = Field(description="models, first, second, repeat, malformed or burst-i")
    method: str
    path: str
    status: int | None = Field(description="the HTTP status (null: no answer came)")
    tier_asked: str | None
    texts: list[str] = Field(description="the generated token, then its alternatives")
    values: list[float] = Field(description="their logprobs as sent")
    problem: str = Field(description="why this answer is no answer, or why its logprobs cannot be used")
    fields: dict[str, Any] = Field(description="response field names and formats (engine tells)")
    queries_so_far: int
    seconds: float


class AgnosticSectionPublic(BaseModel):
    """The model-agnostic checks of a reference audit: precision read from its answers, determinism and
    engine asked after the verdict when agnostic_checks is set (else unknown, saying so)."""

    checks: dict[str, AgnosticCheckPublic] = Field(description="precision, determinism, engine")
    asked: bool = Field(description="determinism and engine were asked for (they cost queries)")
    queries: int = Field(description="queries the checks cost (precision costs none); counted in the report's")
    tokens: int
    stop: str | None = Field(description="plan-done, budget, target-error or interrupted; null: nothing asked")
    reason: str
    prompts: list[str]
    evidence: list[AgnosticRequestPublic]


class AgnosticReportPublic(BaseModel):
    """What a model-agnostic audit read from the endpoint's own answers, with no model given."""

    kind: Literal["model-agnostic"] = "model-agnostic"
    endpoint: str
    prompts: list[str]
    api: str
    served_model: str | None
    tier: str | None = Field(description="the richest tier the endpoint showed (null: no answer)")
    stop: str = Field(description="plan-done, budget, target-error or interrupted")
    reason: str
    queries: int
    tokens: int
    budget_queries: int
    budget_tokens: int
    checks: dict[str, AgnosticCheckPublic] = Field(description="precision, determinism, engine")
    evidence: list[AgnosticRequestPublic]
    seconds: float


class AuditSummary(BaseModel):
    id: str
    kind: Literal["reference", "model-agnostic"] = Field(
        description="reference: matched against a model's references; model-agnostic: no model given"
    )
    status: AuditStatus
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    endpoint: str
    model: str = Field(description="the reference model ('-' for a model-agnostic audit)")
    claim: dict[str, str]
    label: str | None
    scan_id: str | None
    owner: str | None = Field(description="id of the API key that created it (none for scans)")
    attempts: int = Field(description="times a worker started it (a resumed audit starts again)")
    has_credential: bool = Field(description="a target credential is stored (encrypted) for it")
    cancel_requested: bool
    progress: Progress
    verdict: str | None
    stop: str | None
    error: str | None = Field(description="why it failed, was cancelled or interrupted")


class AuditPublic(AuditSummary):
    report: AuditReportPublic | None = Field(description="the report of a reference audit, once finished")
    agnostic_report: AgnosticReportPublic | None = Field(
        default=None, description="the report of a model-agnostic audit, once finished"
    )


class AuditList(BaseModel):
    data: list[AuditSummary]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null on the last page")


class AnswerList(BaseModel):
    data: list[AnswerPublic]
    next_index: int | None = Field(description="pass as ?after= to read on; null when nothing more is stored yet")


class HeadLeaderPublic(BaseModel):
    label: str = Field(description="the head's leading value")
    probability: float = Field(description="its posterior probability")


class PosteriorPointPublic(BaseModel):
    """Each head's reading after one stored answer."""

    index: int = Field(description="the answer's place in the audit, from 0")
    queries_so_far: int = Field(description="billed requests up to and including this answer")
    complete: bool = Field(description="the answer was scored (false: it repeats the reading before it)")
    heads: dict[str, HeadLeaderPublic] = Field(description="empty until the first answer is scored")


class PosteriorTrace(BaseModel):
    data: list[PosteriorPointPublic] = Field(description="one point per stored answer, in order")
    note: str = Field(description="why there are no points, if there are none")


class PlatformClass(BaseModel):
    name: str
    members: list[str] = Field(description="platforms of the grid with bit-identical outputs")
    labels: dict[str, str] = Field(description="the label of each classifier head")


class PlatformList(BaseModel):
    model: str
    dataset: str
    data: list[PlatformClass]


class ClassifierInfo(BaseModel):
    model: str
    tier: str
    kind: str
    heads: list[str]
    threshold: float
    classes: int
    dataset: str | None
    versions: dict[str, str]


class ClassifierList(BaseModel):
    data: list[ClassifierInfo]


class ClassifyAnswer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    probe_id: int = Field(ge=0, le=MAX_ID, description="the reference-pool probe that was answered")
    ids: list[Annotated[int, Field(ge=0, le=MAX_ID)]] = Field(
        max_length=4096, description="token ids shown, best first (logits tier: 0..V-1)"
    )
    values: list[FiniteFloat] = Field(max_length=4096, description="their exact float32 values (logprobs or logits)")


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: ModelName = "lm-small"
    tier: ClassifyTier
    probe_set: Annotated[str, Field(max_length=200), NAME] | None = Field(
        default=None, description="default: the model's reference pool"
    )
    answers: list[ClassifyAnswer] = Field(min_length=1, max_length=512)
    claim: Claim | None = None


class ClassifyResult(BaseModel):
    model: str
    tier: str
    status: MatchStatus
    verdict: Verdict | None
    reason: str
    answers_used: int
    match_score: float
    threshold: float
    claim: dict[str, str]
    heads: dict[str, HeadPublic]


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(min_length=1, max_length=200), FREE_TEXT]
    scopes: list[Scope] = Field(
        min_length=1, max_length=3, description="read < write < admin: each includes the ones before"
    )


class KeyPublic(BaseModel):
    id: str
    name: str
    scopes: list[Scope]
    created_at: dt.datetime
    last_used_at: dt.datetime | None
    revoked_at: dt.datetime | None


class KeyCreated(KeyPublic):
    key: str = Field(description="the API key: shown this once, stored only as a hash")


class KeyList(BaseModel):
    data: list[KeyPublic]


class ScanPublic(BaseModel):
    id: str
    name: str
    source: str
    created_at: dt.datetime
    finished_at: dt.datetime | None
    total: int
    counts: dict[str, int] = Field(description="its audits by status")


class ScanList(BaseModel):
    data: list[ScanPublic]


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(default_factory=dict)
