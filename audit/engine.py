"""The sequential audit: probe a target, update the evidence after each answer, say what served it.

Platform + probes → target → answers → reference-relative features → classifier → report.
The audit draws prompts from the reference pool, so every answer is compared with what each known
platform returned for the same prompt.  It detects the richest tier the target gives, then asks,
one query at a time, the pool probe that best splits the candidates still likely, and stops as soon
as one candidate is certain and matches, when no unused probe can split the candidates left, when
the answers fit no known platform, or when the budget is spent.  Every answer is kept as evidence
(appended to a JSONL file as it arrives, if asked), also when the target fails or the audit is
stopped from outside (`should_stop`, checked between answers).

`Audit` holds the typed state: `replay(records)` puts stored answers back (an interrupted audit
resumes without asking a probe twice; the queries they cost count against the budget), `step()`
asks one query, `report()` says what the evidence shows.  `report_from(settings, records)` is the
report of stored answers alone, with no target at all.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

import numpy as np
from pydantic import BaseModel, Field, model_validator

from hspi.audit.agnostic import Check
from hspi.audit.agnostic_section import AgnosticSection, SectionTarget, agnostic_section
from hspi.audit.claims import HeadReport, audit_verdict, head_reports, wrong_model_heads
from hspi.audit.decision import (
    BoundReading,
    MatchBound,
    agreement_rates,
    answers_to_bound,
    answers_to_decide,
    candidate_log_evalues,
    decide,
    decide_heads,
)
from hspi.audit.determinism import GREEDY_SLACK
from hspi.audit.model_check import ModelReading, read_answer, wrong_model_reason
from hspi.audit.references import ModelReferences, ReferenceStore
from hspi.audit.repeat_check import REPEATS, repeat_reading
from hspi.audit.text import TextEvidence
from hspi.classifier.sequential import ReferenceBook, ReferenceEvidence, answer_signatures, most_splitting_probe
from hspi.collector.models import CHAT_SUFFIX, is_chat_view, model_spec
from hspi.collector.registry import registered_card
from hspi.collector.targets.base import Target
from hspi.collector.targets.http_client import BudgetExhausted, QueryBudget
from hspi.collector.targets.json_logits import JSONLogitsTarget
from hspi.collector.targets.openai import OpenAICompatibleTarget
from hspi.errors import ConfigError, TargetError
from hspi.features.precision import read_precision
from hspi.features.tiers import TierView
from hspi.files import write_json_atomic
from hspi.responses import AMBIGUOUS_TOKEN, FOREIGN_TOKEN, TierAnswers
from hspi.terms import MatchStatus, StopReason, Tier, Verdict

__all__ = [
    "Audit",
    "AuditReport",
    "AuditSettings",
    "HeadReport",
    "QueryRecord",
    "open_target",
    "posterior_trace",
    "report_from",
    "run_audit",
    "write_report",
]

NO_MATCH_AFTER = 8  # answers before an audit may stop because nothing known fits
NO_CHAT_TEMPLATE = frozenset({"lm-gpt2"})  # built-in GGUF models a chat request would break
# α: a match waits until a platform never collected would have been declared one with probability at most α
DEFAULT_FALSE_MATCH_RATE = 0.01
UNSCORED = "-"  # the tier of an answer that was not scored (no tier known yet)


class QueryRecord(BaseModel):
    index: int
    probe_set: str
    probe_id: int
    tier: str
    complete: bool
    ids: list[int] = Field(default_factory=list)  # what the target showed, best first
    values: list[float] = Field(default_factory=list)  # exact float32 values, as float64
    queries_so_far: int = 0  # billed requests up to and including this answer
    leading: dict[str, str] = Field(default_factory=dict)  # each head's best guess after this answer
    note: str = ""
    # a probe asked again because nothing known fit (audit.repeat_check): compared, never scored
    repeat: bool = False


class MatchedClass(BaseModel):
    """The collected class the answers are identical to, as nmap names an OS: with its members."""

    name: str
    members: list[str]
    labels: dict[str, str]


class LogitPrecision(BaseModel):
    """The number format of the logits, read from the logprobs alone (model-agnostic evidence)."""

    verdict: str  # fp32 | bf16 | fp16 | fp8-e4m3 | fp8-e5m2 | fp8 (either, not told apart) | none-of-these | unknown
    posterior: dict[str, float]
    answers_used: int
    reason: str


OUTSIDE_COLLECTION = (
    "platforms outside the collection may give the same answers: a match says the answers are those of "
    "the collected class, not that no other platform could have produced them"
)


class BatchingReading(BaseModel):
    """Whether the endpoint runs requests in batches (dynamic batching), read from the answers against the
    matched class's answers under batching (`hspi dataset collect-batched`)."""

    state: Literal["observed", "not observed", "unknown"]
    answers: int  # answers that fit the leading class
    from_batches: int  # of them, answers that class gives only inside a batch of 2 or more
    sizes: list[int]  # the batch sizes that give those answers (union)
    reason: str


class AuditReport(BaseModel):
    endpoint: str
    model: str
    api: str
    tier: Tier | None
    status: MatchStatus
    verdict: Verdict | None  # always set now; None in reports stored before audits without a claim had one
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
    heads: dict[str, HeadReport]
    matched_class: MatchedClass | None = None
    caveat: str = ""
    logit_precision: LogitPrecision | None = None
    # the model-agnostic checks (audit.agnostic_section); None in reports stored before they were read
    agnostic: AgnosticSection | None = None
    evidence: list[QueryRecord]
    dataset: str
    classifier: str
    seconds: float
    # the e-value against a platform never collected (audit.decision); None at the text tier
    evidence_bound: BoundReading | None = None
    # dynamic batching seen in the answers; None in reports stored before it was read
    batching: BatchingReading | None = None
    # one prompt asked again when the answers fit nothing known (audit.repeat_check); None when they fit
    determinism: Check | None = None


class AuditSettings(BaseModel):
    endpoint: str
    model: str = "lm-small"
    claim: dict[str, str] = Field(default_factory=dict)
    budget_queries: int = Field(default=64, ge=1)
    budget_tokens: int | None = Field(default=None, ge=1)  # default: what budget_queries one-token answers cost
    # completions / chat: an OpenAI-compatible endpoint; logits: a JSON-logits one (POST {base}/logits).
    # Default: completions for a language model, logits for a model that takes vectors
    api: Literal["completions", "chat", "logits"] | None = None
    served_model: str | None = None
    order: Literal["split", "random"] = "split"
    max_tier: Tier | None = None  # ask for no more than this (default: the richest the target gives)
    confidence: float = Field(default=0.99, gt=0.5, lt=1.0)
    # answers before a match may be declared; once the candidates are settled, the extra answers
    # verify the leader where its near twins part, which is where a platform never collected shows
    min_answers: int = Field(default=2, ge=1)
    # a match (logits and logprob tiers) also needs the e-value of audit.decision to reach 1/α: an
    # unseen near twin of the leader is declared a match with probability at most α (measured in
    # benchmarks/results/verdicts.json); None: the e-value is reported, a match does not wait for it
    false_match_rate: float | None = Field(default=DEFAULT_FALSE_MATCH_RATE, gt=0.0, lt=1.0)
    timeout_s: float = Field(default=10.0, gt=0)
    retries: int = Field(default=2, ge=0)
    seed: int | None = None
    dataset: Path | None = None
    classifier: Path | None = None
    # pool probes never to ask: an evaluation keeps the probes the classifier was trained on out
    avoid_probes: list[int] = Field(default_factory=list)
    # ask the model-agnostic determinism and engine checks after the verdict (up to 6 more queries, in budget)
    agnostic_checks: bool = False
    # where the dataset holds answers under dynamic batching, ask only those probes and match each answer
    # against the class's set of answers (`classifier.batched`); False: the stored answers only
    batched_references: bool = True

    @model_validator(mode="after")
    def _chat_references(self) -> AuditSettings:
        """A registered model asked through chat is matched against its chat view's references (`NAME:chat`,
        computed on the template's ids); the endpoint is still asked for the model by its own name."""
        if self.api == "chat" and not is_chat_view(self.model) and registered_card(self.model) is not None:
            self.served_model = self.served_model or self.model
            self.model = f"{self.model}{CHAT_SUFFIX}"
        return self

    @property
    def api_kind(self) -> str:
        if self.api is not None:
            return self.api
        return "completions" if model_spec(self.model).input_kind == "tokens" else "logits"


def per_query_tokens(model: str) -> int:
    """What one query bills: a prompt and one generated token, or one input vector's values."""
    spec = model_spec(model)
    return spec.input_shape[0] + 1 if spec.input_kind == "tokens" else int(np.prod(spec.input_shape))


def audit_budget(settings: AuditSettings) -> QueryBudget:
    per_query = per_query_tokens(settings.model)
    return QueryBudget(settings.budget_queries, settings.budget_tokens or settings.budget_queries * per_query)


def open_target(
    settings: AuditSettings, budget: QueryBudget, *, api_key: str | None = None, transport: object = None
) -> Target:
    """The target an audit's settings name: an OpenAI-compatible or a JSON-logits endpoint."""
    if settings.api_kind == "logits":
        # the same base-URL convention as the OpenAI routes: {base}/logits (a full route is kept as given)
        url = settings.endpoint.rstrip("/")
        url = url if url.endswith("/logits") else url + "/logits"
        return JSONLogitsTarget(
            url,
            settings.model,
            budget,
            api_key=api_key,
            timeout_s=settings.timeout_s,
            retries=settings.retries,
            transport=transport,  # type: ignore[arg-type]
        )
    if model_spec(settings.model).input_kind != "tokens":
        raise ConfigError(f"model {settings.model} takes vectors, not prompts: audit it with --api logits")
    if settings.api_kind == "chat" and settings.model in NO_CHAT_TEMPLATE:
        # its GGUF vocabulary (the characters U+4E00 + i) has no byte fallback: a server's chat template
        # wraps the prompt in characters outside it, which kills llama.cpp's tokenizer; never sent
        raise ConfigError(
            f"model {settings.model} has no chat template and no byte fallback: audit it with --api completions"
        )
    return OpenAICompatibleTarget(
        settings.endpoint,
        settings.model,
        budget,
        served_model=settings.served_model,
        api=settings.api_kind,  # type: ignore[arg-type]
        api_key=api_key,
        timeout_s=settings.timeout_s,
        retries=settings.retries,
        transport=transport,  # type: ignore[arg-type]
    )


@dataclass
class AuditState:
    """Everything an audit knows between two answers."""

    tier: Tier | None = None
    evidence: ReferenceEvidence | None = None  # reference-relative evidence (logits and logprob tiers)
    text: TextEvidence | None = None  # the border-prompt vote (text tier)
    stop: StopReason | None = None  # set once the audit has ended
    reason: str = ""
    previous: int | None = None  # the last probe answered (its first token is not asked again next)
    records: list[QueryRecord] = field(default_factory=list)
    model_readings: list[ModelReading] = field(default_factory=list)  # is it this model at all (model_check)
    repeats_stopped: str = ""  # why fewer than REPEATS repeats were asked (audit.repeat_check)


def incomplete_note(ids: np.ndarray) -> str:
    """Why an answer is not scored, counting the alternatives that could not be named."""
    foreign, ambiguous = int((ids == FOREIGN_TOKEN).sum()), int((ids == AMBIGUOUS_TOKEN).sum())
    parts = [f"{foreign} not in the vocabulary"] if foreign else []
    parts += [f"{ambiguous} shown by several tokens (marked, not guessed)"] if ambiguous else []
    return "incomplete answer (" + ("; ".join(parts) or "missing alternatives") + "): not scored"


class Audit:
    """One audit of one target; `run()` steps until it ends and returns the report."""

    def __init__(
        self,
        settings: AuditSettings,
        references: ReferenceStore,
        target: Target | None = None,
        *,
        budget: QueryBudget | None = None,
        should_stop: Callable[[], bool] | None = None,
        on_record: Callable[[QueryRecord, float], None] | None = None,
        evidence_sink: IO[str] | None = None,
    ) -> None:
        self.settings, self.store, self.target = settings, references, target
        self.spec = model_spec(settings.model)
        self.refs: ModelReferences = references.references(settings.model, settings.dataset)
        self.classifier_dir = references.classifier_dir(settings.model, settings.classifier)
        self.budget = budget or audit_budget(settings)
        self.per_query = per_query_tokens(settings.model)
        self.should_stop = should_stop or (lambda: False)
        self.on_record, self.sink = on_record, evidence_sink
        self.avoid = {int(p) for p in settings.avoid_probes}
        if self.refs.batched is not None and settings.batched_references:
            # a batching server's answer fits only where the class's answers under batching are known
            self.avoid |= {int(p) for p in np.setdiff1d(self.refs.pool_ids, self.refs.batched.probe_ids)}
        self.rng = np.random.default_rng(settings.seed)
        self.state = AuditState()
        self.started = time.perf_counter()
        self.match_bound = MatchBound(alpha=settings.false_match_rate or DEFAULT_FALSE_MATCH_RATE)
        self._rates: np.ndarray | None = None  # a_p per candidate and pool probe, once the tier is known
        self._margins: dict[int, float] = {}  # a pool probe's top-two gap, smallest over the classes (repeat check)

    # -- evidence ----------------------------------------------------------------------------
    def _keep(self, record: QueryRecord, replayed: bool = False) -> None:
        self.state.records.append(record)
        if self.sink is not None and not replayed:  # written as it arrives: an interrupted audit keeps it
            self.sink.write(record.model_dump_json() + "\n")
            self.sink.flush()
        if self.on_record is not None:
            self.on_record(record, time.perf_counter() - self.started)

    def _reference_evidence(self) -> ReferenceEvidence:
        if self.state.evidence is None:
            assert self.state.tier is not None
            matcher = self.store.matcher(self.settings.model, self.state.tier, self.settings.classifier)
            self.state.evidence = ReferenceEvidence(matcher, self.refs.book(self.state.tier))
            self.state.evidence.asked.update(self.avoid)
        return self.state.evidence

    def _text_evidence(self) -> TextEvidence:
        if self.state.text is None:
            vote = self.store.text_vote(self.settings.model, self.settings.classifier)
            self.state.text = TextEvidence(vote, self.spec, len(self.refs.pool_ids), avoid_pool=self.avoid)
        return self.state.text

    def _score(self, probe_id: int, view: TierView) -> dict[str, str]:
        """Add one complete answer to the evidence; each head's leading guess after it."""
        evidence = self._reference_evidence()
        evidence.update(probe_id, view)
        return {head: label for head, (label, _) in self.head_leaders().items()}

    def head_leaders(self) -> dict[str, tuple[str, float]]:
        """Each head's leading value and its posterior after the answers so far ({} before one is scored)."""
        if self.state.tier is Tier.TEXT:
            text = self.state.text
            return (
                {} if text is None or not text.n else {h: (v, float(p)) for h, (v, p) in text.verdict().heads.items()}
            )
        evidence = self.state.evidence
        if evidence is None or not evidence.used:
            return {}
        leaders = {}
        for head, (values, post) in evidence.head_posteriors().items():
            best = int(np.argmax(post))
            leaders[head] = (values[best], float(post[best]))
        return leaders

    def _keep_unscored(self, probe_id: int, answers: TierAnswers, note: str) -> None:
        """An answer kept as evidence but not scored (incomplete, or the wrong model's), with why."""
        tier = self.state.tier
        self._keep(
            QueryRecord(
                index=len(self.state.records),
                probe_set=self.refs.pool.version,
                probe_id=probe_id,
                tier=tier or UNSCORED,
                complete=bool(answers.complete[0]),
                queries_so_far=self.budget.queries,
                ids=[int(i) for i in answers.ids[0]],
                # values where every one is a number (a missing slot is NaN, which JSON evidence cannot carry)
                values=[float(v) for v in answers.values[0]] if np.isfinite(answers.values[0]).all() else [],
                note=note,
            )
        )

    def _check_model(self, probe_id: int, answers: TierAnswers) -> str | None:
        """Read one answer for the right model (vocabulary and weights); why it is the wrong one, if it is."""
        mismatch = self.target.prompt_mismatch() if self.target is not None else None
        if mismatch is not None:
            return f"wrong model: {mismatch}"
        row = int(np.searchsorted(self.refs.pool_ids, probe_id))
        if row >= len(self.refs.pool_ids) or self.refs.pool_ids[row] != probe_id:
            return None
        references = [logits[row] for logits in self.refs.logits] if answers.tier != Tier.LOGITS else []
        self.state.model_readings.append(read_answer(answers.ids[0], references))
        return wrong_model_reason(self.state.model_readings)

    def _add_answer(self, probe_id: int, answers: TierAnswers) -> None:
        tier = self.state.tier
        wrong_model = self._check_model(probe_id, answers) if self.spec.input_kind == "tokens" else None
        if wrong_model is not None:
            self._keep_unscored(probe_id, answers, wrong_model)
            self._end(StopReason.WRONG_MODEL, wrong_model)
            return
        if tier is Tier.TEXT:
            self._add_text_answer("pool", probe_id, int(answers.greedy()[0]))
            return
        if not bool(answers.complete[0]):
            self._keep_unscored(probe_id, answers, incomplete_note(answers.ids[0]))
            return
        assert tier is not None
        view = TierView(tier, answers.ids, answers.values)
        self._keep(
            QueryRecord(
                index=len(self.state.records),
                probe_set=self.refs.pool.version,
                probe_id=probe_id,
                tier=tier,
                complete=True,
                ids=[int(i) for i in answers.ids[0]],
                values=[float(v) for v in answers.values[0]],
                queries_so_far=self.budget.queries,
                leading=self._score(probe_id, view),
            )
        )

    def _add_text_answer(self, kind: str, probe_id: int, observed: int) -> None:
        text = self._text_evidence()
        text.add(kind, probe_id, observed)
        verdict = text.verdict()
        self._keep(
            QueryRecord(
                index=len(self.state.records),
                probe_set=text.version(kind),
                probe_id=probe_id,
                tier=Tier.TEXT,
                complete=observed >= 0,
                ids=[observed],
                queries_so_far=self.budget.queries,
                leading={h: label for h, (label, _) in verdict.heads.items()},
                note="" if observed >= 0 else "the answer is not one token of the vocabulary",
            )
        )

    # -- resuming ----------------------------------------------------------------------------
    def replay(self, stored: Sequence[QueryRecord]) -> None:
        """Put stored answers back into the evidence and the budget; their probes are not asked again.

        Replayed answers go to `on_record` (not to the evidence sink, which holds them already)."""
        state = self.state
        for record in stored:
            if record.repeat:  # compared when the report is read, never scored
                self.budget.queries = max(self.budget.queries, record.queries_so_far)
                self.budget.tokens = self.budget.queries * self.per_query
                self._keep(record.model_copy(update={"index": len(state.records)}), replayed=True)
                continue
            if record.tier == Tier.TEXT:
                state.tier = Tier.TEXT
                text = self._text_evidence()
                text.add(text.kind_of(record.probe_set), record.probe_id, record.ids[0] if record.ids else -1)
                self._keep(record.model_copy(update={"index": len(state.records)}), replayed=True)
                state.previous = record.probe_id
                continue
            if record.probe_set != self.refs.pool.version:
                raise ConfigError(
                    f"stored answer {record.index} is for probe set {record.probe_set}, "
                    f"not {self.refs.pool.version}: it cannot resume this audit"
                )
            if record.tier != UNSCORED:
                if state.tier not in (None, record.tier):
                    raise ConfigError(
                        f"stored answer {record.index} is at tier {record.tier}, the ones before "
                        f"it at {state.tier}: it cannot resume this audit"
                    )
                state.tier = Tier(record.tier)
            self.budget.queries = max(self.budget.queries, record.queries_so_far)
            self.budget.tokens = self.budget.queries * self.per_query  # every query bills one probe and one token
            replayed = record.model_copy(update={"index": len(state.records)})
            if record.complete:
                view = TierView(
                    record.tier,
                    np.asarray([record.ids], dtype=np.int32),
                    np.asarray([record.values], dtype=np.float32),  # float32 -> float64 -> float32 is exact
                )
                replayed.leading = self._score(record.probe_id, view)
            self._keep(replayed, replayed=True)
            state.previous = record.probe_id

    # -- the false-match bound (audit.decision) ----------------------------------------------
    def bound_reading(self) -> BoundReading | None:
        """The e-value of the scored answers against a platform never collected; None at the text tier."""
        parts = self._bound_parts()
        if parts is None or self.state.evidence is None:
            return None
        reading = decide(*parts, self.match_bound)
        book = self.state.evidence.book
        closeness = self._head_closeness(book)
        reading.heads = decide_heads(parts[2], book.labels, closeness, self.match_bound)
        return reading

    def _head_closeness(self, book: ReferenceBook) -> dict[str, float]:
        """b per head with more than one value (`ReferenceStore.head_closeness`); the full head is the class,
        bounded by the class's own e-value.  Computed once per book and bound, kept beside the book."""
        cache = book.__dict__.setdefault("_head_closeness", {})
        if self.match_bound not in cache:
            cache[self.match_bound] = self.store.head_closeness(
                self.settings.model, book, self.match_bound, self.settings.dataset
            )
        return dict(cache[self.match_bound])

    def _bound_parts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """a_p per candidate and pool row, the rows answered, and which candidates each answer agrees with."""
        evidence, tier = self.state.evidence, self.state.tier
        if evidence is None or tier is None or tier is Tier.TEXT:
            return None
        book = evidence.book
        if self._rates is None:  # calibrated over the book's classes: computed once per book, kept beside it
            cache = book.__dict__.setdefault("_match_rates", {})
            if self.match_bound not in cache:
                cache[self.match_bound] = agreement_rates(book.same, self.match_bound)
            self._rates = cache[self.match_bound]
        scored = [r for r in self.state.records if r.complete and r.tier == tier and not r.repeat]
        rows = np.array([evidence.row_of(r.probe_id) for r in scored], dtype=np.int64)
        shown = answer_signatures(
            TierView(
                tier,
                np.asarray([r.ids for r in scored], dtype=np.int32).reshape(len(scored), -1),
                np.asarray([r.values for r in scored], dtype=np.float32).reshape(len(scored), -1),
            )
        )
        return self._rates, rows, book.fits(rows, shown)

    def _bound_out_of_reach(self, reading: BoundReading) -> str | None:
        """Why the bound cannot be met by this audit (None while it can): even if every further answer
        agreed with a candidate on its most telling unused probes, the budget, or the pool, ends first."""
        parts, evidence = self._bound_parts(), self.state.evidence
        if parts is None or evidence is None:
            return None
        rates, rows, agree = parts
        asked = set(evidence.used) | evidence.asked | self.avoid | {r.probe_id for r in self.state.records}
        free = np.array([evidence.row_of(int(p)) for p in self.refs.pool_ids if int(p) not in asked], dtype=np.int64)
        needed = answers_to_bound(rates, reading, free, candidate_log_evalues(rates, rows, agree))
        budget = self.budget
        left = min(budget.max_queries - budget.queries, (budget.max_tokens - budget.tokens) // max(self.per_query, 1))
        alpha = self.match_bound.alpha
        if needed is not None and needed <= left:
            return None
        # the class is out of reach; the heads asked about (the claimed ones, else all) may still be settled
        wanted = [h for h in (self.settings.claim or reading.heads) if h in reading.heads]
        for head in wanted:
            more = answers_to_decide(reading.heads[head], self.match_bound)
            if more is not None and 0 < more <= left and more <= len(free):
                return None
        settled = ", ".join(f"{h}={r.value}" for h, r in reading.heads.items() if r.met)
        settled = f" (decided at that rate: {settled})" if settled else ""
        if needed is None:
            return (
                f"the best candidate fits, but no choice of the {len(free)} pool probes left could exclude a platform "
                f"never collected at false-match rate {alpha}: its known near twins part from it on too few "
                f"probes{settled}"
            )
        return (
            f"the best candidate fits, but excluding a platform never collected at false-match rate {alpha} "
            f"needs at least {needed} more answers and the budget leaves {left}: rerun with "
            f"--budget {budget.queries + needed} or more{settled}"
        )

    # -- asking ------------------------------------------------------------------------------
    def _decided(self) -> tuple[StopReason, str] | None:
        """Stop once one candidate is certain and matches, or the answers fit no known platform."""
        settings = self.settings
        if self.state.tier is Tier.TEXT:
            text = self._text_evidence()
            verdict = text.verdict()
            if text.n >= settings.min_answers and verdict.ranked[0][1] >= settings.confidence and not verdict.unknown:
                return StopReason.CONFIDENT, ""
            if text.n >= NO_MATCH_AFTER and verdict.unknown:
                return StopReason.NO_MATCH, ""
            return None
        evidence = self.state.evidence
        if evidence is not None and len(evidence.used) >= settings.min_answers:
            post = evidence.posterior()
            bound = self.bound_reading()
            bounded = settings.false_match_rate is None or (bound is not None and bound.met)
            if post.max() >= settings.confidence and evidence.matches():
                if bounded:
                    return StopReason.CONFIDENT, ""
                # settled on a candidate the bound cannot clear in time: asking on would only spend the budget
                out_of_reach = None if bound is None else self._bound_out_of_reach(bound)
                if out_of_reach is not None:
                    return StopReason.BOUND_OUT_OF_REACH, out_of_reach
            # every candidate parted from some answer: the e-value is 0 for good, no answer can meet the bound
            parted = settings.false_match_rate is not None and bound is not None and bound.log_evalue is None
            if len(evidence.used) >= NO_MATCH_AFTER and (parted or not evidence.matches()):
                return StopReason.NO_MATCH, ""
        return None

    def _first_probe(self) -> int:
        """The first prompt splits the classes best at the richest tier asked for (ties at random)."""
        settings, refs = self.settings, self.refs
        if self.spec.input_kind == "tokens":
            tier = settings.max_tier if settings.max_tier not in (None, Tier.TEXT) else Tier.TOPK20
        else:
            tier = settings.max_tier if settings.max_tier not in (None, Tier.TEXT) else Tier.LOGITS
        book = refs.book(tier)
        allowed = ~np.isin(refs.pool_ids, list(self.avoid))
        if settings.order == "random":
            return int(self.rng.choice(refs.pool_ids[allowed]))
        first = most_splitting_probe(book, np.where(allowed, book.prior_split_scores(), 0.0), self.rng)
        return int(self.rng.choice(refs.pool_ids[allowed])) if first is None else first

    def _next_pool_probe(self) -> int | None:
        state, refs, settings = self.state, self.refs, self.settings
        evidence, previous, first_tokens = state.evidence, state.previous, refs.first_tokens
        if evidence is not None and settings.order == "split":
            exclude = (
                int(first_tokens[evidence.row_of(previous)])
                if previous is not None and first_tokens is not None
                else None
            )
            evidence.asked.update(r.probe_id for r in state.records if not r.complete)
            return evidence.next_probe(
                self.rng, exclude_first_token=exclude, first_tokens=first_tokens, confidence=settings.confidence
            )
        used = set(evidence.used if evidence else []) | {r.probe_id for r in state.records}
        free = [int(p) for p in refs.pool_ids if int(p) not in used | self.avoid]
        if first_tokens is not None and previous is not None:
            prev_first = first_tokens[int(np.flatnonzero(refs.pool_ids == previous)[0])]
            free = [p for p in free if first_tokens[int(np.flatnonzero(refs.pool_ids == p)[0])] != prev_first] or free
        return int(self.rng.choice(free)) if free else None

    # -- one prompt again, when nothing known fits (audit.repeat_check) ----------------------
    def _repeated(self) -> QueryRecord | None:
        """The answer whose probe is asked again; None once the repeats are done (or cannot be asked)."""
        records = self.state.records
        if self.state.repeats_stopped or sum(r.repeat for r in records) >= REPEATS:
            return None
        return self._repeat_source()

    def _repeat_source(self) -> QueryRecord | None:
        """The answered probe to ask again: the one already repeated, else the pool probe answered whose top
        two outputs are the least far apart, but beyond GREEDY_SLACK, on every collected class
        (audit.repeat_check), else the first answered."""
        records = self.state.records
        answered = [r for r in records if r.complete and not r.repeat and r.tier != UNSCORED]
        repeated = next((r for r in records if r.repeat), None)
        if repeated is not None:
            return next(
                (r for r in answered if (r.probe_id, r.probe_set) == (repeated.probe_id, repeated.probe_set)), None
            )
        # a margin beyond rounding proves a changed greedy token to be a draw; of those probes, one whose shown
        # token no collected class puts first (a sampler's draw, most likely: asked again it draws the top one),
        # else the smallest margin (the one a sampler draws another token on most often)
        clear = [
            r for r in answered if r.probe_set == self.refs.pool.version and self._margin(r.probe_id) > GREEDY_SLACK
        ]
        if clear:
            drawn = [r for r in clear if self._not_first_anywhere(r)]
            return min(drawn or clear, key=lambda r: self._margin(r.probe_id))  # the first of equals: min keeps it
        return answered[0] if answered else None

    def _not_first_anywhere(self, record: QueryRecord) -> bool:
        """A top1 or text answer's token is no collected class's top output for its probe."""
        if record.tier not in (Tier.TOP1, Tier.TEXT) or not record.ids:
            return False
        row = int(np.searchsorted(self.refs.pool_ids, record.probe_id))
        return all(int(np.argmax(logits[row])) != record.ids[0] for logits in self.refs.logits)

    def _margin(self, probe_id: int) -> float:
        """The gap between a pool probe's top two outputs, the smallest over the collected classes."""
        if probe_id not in self._margins:
            row = int(np.searchsorted(self.refs.pool_ids, probe_id))
            top_two = [np.partition(np.asarray(logits[row], dtype=np.float64), -2)[-2:] for logits in self.refs.logits]
            self._margins[probe_id] = min(float(top[1] - top[0]) for top in top_two)
        return self._margins[probe_id]

    def _ask_repeat(self) -> None:
        state, first = self.state, self._repeated()
        assert first is not None and self.target is not None
        tier = Tier(first.tier)
        probe_set = self.refs.pool
        if tier is Tier.TEXT:
            text = self._text_evidence()
            probe_set = text.probe_sets[text.kind_of(first.probe_set)]
        try:
            answers = self.target.ask(probe_set, first.probe_id, tier)
        except BudgetExhausted:
            state.repeats_stopped = "the budget ended the repeats"
            return
        except TargetError as exc:
            state.repeats_stopped = f"the endpoint failed on a repeat: {exc}"
            return
        ids = [int(answers.greedy()[0])] if tier is Tier.TEXT else [int(i) for i in answers.ids[0]]
        values = [] if tier is Tier.TEXT else answers.values[0]
        self._keep(
            QueryRecord(
                index=len(state.records),
                probe_set=first.probe_set,
                probe_id=first.probe_id,
                tier=tier,
                complete=bool(answers.complete[0]) if tier is not Tier.TEXT else ids[0] >= 0,
                ids=ids,
                values=[float(v) for v in values] if np.isfinite(values).all() else [],
                queries_so_far=self.budget.queries,
                leading={head: label for head, (label, _) in self.head_leaders().items()},
                note=f"probe {first.probe_id} asked again: nothing known fits (is its answer stable?)",
                repeat=True,
            )
        )

    def _determinism(self) -> Check | None:
        """The reading of the repeated probe's answers; None where none was asked (the answers fit)."""
        repeats = [r for r in self.state.records if r.repeat]
        if not repeats:
            if self.state.stop is StopReason.NO_MATCH and self.state.repeats_stopped:
                return Check(verdict="unknown", probability=0.0, reason=f"not read: {self.state.repeats_stopped}")
            return None
        first = self._repeat_source()
        assert first is not None  # a repeat is of an answered probe
        margin = self._margin(first.probe_id) if first.probe_set == self.refs.pool.version else None
        answers = [(f"answer {r.index}", r.ids, r.values) for r in (first, *repeats) if r.complete and r.ids]
        generated_first = first.tier in (Tier.TOP1, Tier.TEXT)  # one token shown: the one generated
        return repeat_reading(
            answers, generated_first=generated_first, margin=margin, not_asked=self.state.repeats_stopped
        )

    def _text_step(self, target: Target) -> None:
        text = self._text_evidence()
        nxt = text.next_probe()
        if nxt is None:
            self._end(StopReason.NO_SPLITTING_PROBE)
            return
        kind, probe_id = nxt
        answers = target.ask(text.probe_sets[kind], probe_id, Tier.TEXT)
        self._add_text_answer(kind, probe_id, int(answers.greedy()[0]))

    def _end(self, stop: StopReason, reason: str = "") -> None:
        self.state.stop, self.state.reason = stop, reason

    def interrupt(self, reason: str) -> None:
        """End the audit now (`interrupted`); its evidence is kept and `report()` says what it shows."""
        self._end(StopReason.INTERRUPTED, reason)

    @property
    def finished(self) -> bool:
        return self.state.stop is not None

    def step(self) -> bool:
        """Ask one query, or find that the audit has ended; False once it has."""
        if self.finished:
            return False
        if self.should_stop():
            self.interrupt("stopped from outside: the evidence so far is kept")
            return False
        if self.target is None:
            raise ConfigError("this audit has no target: it can only report its stored answers")
        state = self.state
        try:
            if state.previous is not None or state.records:
                decided = self._decided()
                if decided is not None and decided[0] is StopReason.NO_MATCH and self._repeated() is not None:
                    self._ask_repeat()  # before naming no platform: is one prompt's answer even stable?
                    return not self.finished
                if decided is not None:
                    self._end(*decided)
                    return False
            if state.tier is Tier.TEXT:
                self._text_step(self.target)
                return not self.finished
            if state.previous is None:
                probe = self._first_probe()
            else:
                nxt = self._next_pool_probe()
                if nxt is None:
                    evidence = state.evidence
                    split = evidence is not None and self.settings.order == "split"
                    self._end(StopReason.NO_SPLITTING_PROBE if split else StopReason.POOL_EXHAUSTED)
                    return False
                probe = nxt
            if state.tier is None:
                state.tier, answers = self.target.probe_tier(self.refs.pool, probe, self.settings.max_tier)
            else:
                answers = self.target.ask(self.refs.pool, probe, state.tier)
            self._add_answer(probe, answers)
            state.previous = probe
        except BudgetExhausted:
            self._end(StopReason.BUDGET)
        except TargetError as exc:
            self._end(StopReason.TARGET_ERROR, str(exc))
        return not self.finished

    def run(self) -> AuditReport:
        try:
            while self.step():
                pass
        except KeyboardInterrupt:  # Ctrl-C in a terminal: the evidence so far is kept
            self.interrupt("interrupted by the user: the evidence so far is kept")
        return self.report()

    # -- the report --------------------------------------------------------------------------
    def report(self) -> AuditReport:
        state, settings = self.state, self.settings
        stop = state.stop or StopReason.INTERRUPTED  # a report asked for mid-audit: what is known so far
        reason = state.reason
        head_posteriors: dict[str, tuple[list[str], np.ndarray]] = {}
        answers_used, bound, unbounded = 0, None, False
        text, evidence = state.text, state.evidence
        if text is not None and text.n:
            read = text.verdict()
            match_score, threshold = read.score, float(text.vote.threshold_)
            status = MatchStatus.UNKNOWN if read.unknown else MatchStatus.MATCH
            head_posteriors, answers_used = text.vote.head_posteriors(text.posterior()), text.n
        elif evidence is not None and evidence.used:
            match_score, threshold = evidence.match_score(), evidence.matcher.threshold_
            status = MatchStatus.MATCH if evidence.matches() else MatchStatus.UNKNOWN
            head_posteriors, answers_used = evidence.head_posteriors(), len(evidence.used)
            bound = self.bound_reading()
            required = settings.false_match_rate is not None
            if required and status is MatchStatus.MATCH and not (bound is not None and bound.met):
                status, unbounded = MatchStatus.UNBOUNDED, True
                reason = reason or (
                    f"the best candidate fits, but the answers do not yet exclude a platform never collected at "
                    f"false-match rate {settings.false_match_rate} (e-value below 1/α; see evidence_bound)"
                )
        else:
            status, match_score, threshold = MatchStatus.NO_EVIDENCE, 0.0, 0.0
            reason = reason or "no complete answer was scored"
        if stop is StopReason.WRONG_MODEL:
            status = MatchStatus.WRONG_MODEL
        matched = status is MatchStatus.MATCH
        basis = "text-vote" if text is not None and text.n else "reference-match"
        heads, verdicts = head_reports(
            head_posteriors,
            settings.claim,
            matched=matched or unbounded,
            decided_by_bound=None
            if not unbounded or bound is None
            else {h: r.value for h, r in bound.heads.items() if r.met and r.value is not None},
            basis=basis,
        )
        if status is MatchStatus.WRONG_MODEL:
            heads, verdicts = wrong_model_heads(self.head_names(), settings.claim), {}
        if status is MatchStatus.UNKNOWN:
            reason = reason or (
                f"no known platform matches: best candidate scores {match_score:.3f} < threshold {threshold:.3f}"
            )
        cut_short = stop in (StopReason.TARGET_ERROR, StopReason.INTERRUPTED)
        # a known candidate fits, not yet bounded: it identifies nothing, and a claim stands or falls on the
        # heads whose own bound is met (the others read undecided, their claims inconclusive)
        verdict = audit_verdict(
            MatchStatus.MATCH if unbounded else status,
            verdicts,
            settings.claim,
            cut_short=cut_short or (unbounded and not settings.claim),
            settled=stop is StopReason.CONFIDENT,
        )
        matched_class = self._matched_class(head_posteriors) if matched else None
        determinism = self._determinism()
        if status is MatchStatus.UNKNOWN and determinism is not None and determinism.verdict == "nondeterministic":
            # answers that change with every call fit nothing for that reason: no platform to look for
            verdict = Verdict.NONDETERMINISTIC
            reason = f"the answers to one prompt vary from call to call ({determinism.reason}); {reason}"
        if not reason:
            reason = {
                StopReason.CONFIDENT: "one candidate is certain and matches",
                StopReason.NO_SPLITTING_PROBE: "no unused pool probe separates the candidates still likely",
                StopReason.NO_MATCH: "the answers fit no known platform",
                StopReason.BUDGET: "the budget is spent",
                StopReason.POOL_EXHAUSTED: "every pool probe was asked",
            }.get(stop, "")
        return AuditReport(
            **budget_fields(settings, self.budget),
            tier=state.tier,
            status=status,
            verdict=verdict,
            reason=reason,
            stop=stop,
            answers_used=answers_used,
            match_score=round(match_score, 4),
            threshold=round(threshold, 4),
            heads=heads,
            matched_class=matched_class,
            caveat=OUTSIDE_COLLECTION if matched_class is not None else "",
            logit_precision=self._logit_precision(),
            evidence=state.records,
            dataset=str(self.refs.dataset_dir),
            classifier=str(self.classifier_dir),
            seconds=round(time.perf_counter() - self.started, 3),
            evidence_bound=bound,
            batching=self._batching(head_posteriors),
            determinism=determinism,
        )

    def _batching(self, head_posteriors: dict[str, tuple[list[str], np.ndarray]]) -> BatchingReading | None:
        evidence = self.state.evidence
        if evidence is None or not evidence.used or "full" not in head_posteriors:
            return None
        batched = evidence.book.batched
        if batched is None or not self.settings.batched_references:
            return BatchingReading(
                state="unknown",
                answers=0,
                from_batches=0,
                sizes=[],
                reason="the dataset holds no answers under batching for this model (hspi dataset collect-batched)",
            )
        values, post = head_posteriors["full"]
        leader = next(i for i, c in enumerate(self.refs.classes) if c.name == values[int(np.argmax(post))])
        readings = [r for r in evidence.readings if r is not None and r.fits[leader]]
        single = 1 << batched.batch_sizes.index(1) if 1 in batched.batch_sizes else 0
        # an answer the class gives only in batches of 2 or more, never alone
        batched_masks = [int(r.masks[leader]) for r in readings if r.masks[leader] and not r.masks[leader] & single]
        sizes = sorted({s for m in batched_masks for s in batched.sizes_of(m)})
        name = self.refs.classes[leader].name
        state: Literal["observed", "not observed", "unknown"]
        answered = [r for r in evidence.readings if r is not None]
        misfits = len(answered) - len(readings)  # answers that fit none of the leader's collected answers
        mates = bool(batched.mates_dependent and batched.mates_dependent[leader])
        if not any(c == leader for c, _ in evidence.book.alternates):
            state, reason = "unknown", f"the leading class {name} has no answers under batching (a fixed batch size)"
        elif not readings:
            state, reason = "unknown", f"no answer fits the leading class {name}"
        elif mates and misfits and not batched_masks:
            state = "observed"
            reason = (
                f"{misfits} of {len(answered)} answers fit none of {name}'s collected answers, whose answers change "
                "with the batch-mates (measured at collection): what a batch with other requests gives"
            )
        elif batched_masks:
            state = "observed"
            reason = (
                f"{len(batched_masks)} of {len(readings)} answers fitting {name} are what it gives only inside a "
                f"batch (sizes {', '.join(map(str, sizes))}), never alone"
            )
        elif all(r.masks[leader] == (1 << len(batched.batch_sizes)) - 1 for r in readings):
            state = "unknown"
            reason = f"{name} gives these answers at every batch size: batching cannot show on them"
        else:
            state = "not observed"
            reason = f"all {len(readings)} answers fitting {name} are what it gives alone (batch size 1)"
        return BatchingReading(
            state=state, answers=len(readings), from_batches=len(batched_masks), sizes=sizes, reason=reason
        )

    def head_names(self) -> list[str]:
        return sorted({head for c in self.refs.classes for head in c.labels})

    def _matched_class(self, head_posteriors: dict[str, tuple[list[str], np.ndarray]]) -> MatchedClass | None:
        if "full" not in head_posteriors:
            return None
        values, post = head_posteriors["full"]
        name = values[int(np.argmax(post))]
        cls = next((c for c in self.refs.classes if c.name == name), None)
        if cls is None:
            return None
        return MatchedClass(name=cls.name, members=list(cls.members), labels=dict(cls.labels))

    def _logit_precision(self) -> LogitPrecision | None:
        """Read at the top-k tiers only: one answer's k logprobs are what the format shows on."""
        tier = self.state.tier
        if tier not in (Tier.TOPK20, Tier.TOPK5):
            return None
        rows = [r.values for r in self.state.records if r.complete and r.tier == tier and not r.repeat]
        reading = read_precision(rows, tier.value) if rows else None
        if reading is None:
            return None
        return LogitPrecision(
            verdict=reading.verdict,
            posterior={k: round(v, 4) for k, v in reading.posterior.items()},
            answers_used=reading.answers_used,
            reason=reading.reason,
        )


def budget_fields(settings: AuditSettings, budget: QueryBudget) -> dict:
    """The fields every report carries about what was audited and what it cost."""
    return {
        "endpoint": settings.endpoint,
        "model": settings.model,
        "api": settings.api_kind,
        "claim": settings.claim,
        "queries": budget.queries,
        "tokens": budget.tokens,
        "budget_queries": budget.max_queries,
        "budget_tokens": budget.max_tokens,
    }


def report_from(
    settings: AuditSettings, records: Sequence[QueryRecord], references: ReferenceStore, reason: str
) -> AuditReport:
    """The report of stored answers alone (`stop` = interrupted): no target, nothing asked."""
    if not records:  # nothing to score: no references needed either
        budget = audit_budget(settings)
        return AuditReport(
            **budget_fields(settings, budget),
            tier=None,
            status=MatchStatus.NO_EVIDENCE,
            verdict=audit_verdict(MatchStatus.NO_EVIDENCE, {}, settings.claim, cut_short=True),
            reason=reason,
            stop=StopReason.INTERRUPTED,
            answers_used=0,
            match_score=0.0,
            threshold=0.0,
            heads={},
            evidence=[],
            dataset=str(references.dataset_dir(settings.model, settings.dataset)),
            classifier=str(references.classifier_dir(settings.model, settings.classifier)),
            seconds=0.0,
        )
    audit = Audit(settings, references)
    audit.replay(records)
    audit.interrupt(reason)
    return with_agnostic_section(audit.report(), settings, None)


def posterior_trace(
    settings: AuditSettings, records: Sequence[QueryRecord], references: ReferenceStore
) -> list[dict[str, tuple[str, float]]]:
    """Each head's leading value and its posterior after each stored answer, in order.

    The stored answers are replayed into the evidence exactly as `report_from` and a resumed audit
    replay them, so the leaders are the ones each record stores; the posteriors are not stored and
    are recomputed here.  An answer that was not scored repeats the reading before it."""
    trace: list[dict[str, tuple[str, float]]] = []
    if not records:
        return trace
    audit = Audit(settings, references, on_record=lambda _record, _s: trace.append(audit.head_leaders()))
    audit.replay(records)
    return trace


def run_audit(
    settings: AuditSettings,
    *,
    references: ReferenceStore | None = None,
    api_key: str | None = None,
    evidence_path: Path | None = None,
    on_query: Callable[[QueryRecord, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    transport: object = None,
    prior: Sequence[QueryRecord] | None = None,
) -> AuditReport:
    """Audit `settings.endpoint`; `prior` resumes an interrupted audit from the answers it stored.

    Prior answers (in their order) are replayed into the evidence and passed to `on_query` (not to
    the evidence file, which holds them already); the queries they cost count against the budget,
    and the probes they answered are not asked again.  Then the audit goes on as if it had never
    stopped: it may stop at once if the replayed evidence is already decisive.  `should_stop` is
    checked between answers: when it says so, the audit ends `interrupted` with its evidence.
    """
    store = references or ReferenceStore()
    budget = audit_budget(settings)
    sink = evidence_path.open("a", encoding="utf-8") if evidence_path is not None else None
    try:
        if model_spec(settings.model).source == "registered" and not store.has_references(
            settings.model, settings.dataset
        ):
            from hspi.audit.reference_free import ReferenceFreeAudit  # it builds on this module

            with open_target(settings, budget, api_key=api_key, transport=transport) as target:
                free = ReferenceFreeAudit(settings, target, budget, evidence_sink=sink).run()
            return with_agnostic_section(
                free, settings, budget, api_key=api_key, transport=transport, should_stop=should_stop
            )
        with open_target(settings, budget, api_key=api_key, transport=transport) as target:
            audit = Audit(
                settings,
                store,
                target,
                budget=budget,
                should_stop=should_stop,
                on_record=on_query,
                evidence_sink=sink,
            )
            try:
                audit.replay(prior or ())
            except KeyboardInterrupt:  # Ctrl-C while the stored answers were put back: they are kept
                audit.interrupt("interrupted by the user: the evidence so far is kept")
            report = audit.run()
        return with_agnostic_section(
            report, settings, budget, api_key=api_key, transport=transport, should_stop=should_stop
        )
    finally:
        if sink is not None:
            sink.close()


def with_agnostic_section(
    report: AuditReport,
    settings: AuditSettings,
    budget: QueryBudget | None,
    *,
    api_key: str | None = None,
    transport: object = None,
    should_stop: Callable[[], bool] | None = None,
) -> AuditReport:
    """The report with its model-agnostic section: precision from its answers; determinism and engine
    asked after the verdict if the settings ask for them (`budget` None: stored answers, nothing asked).
    Its queries and tokens then count the section's requests too."""
    skip_why = ""
    if report.stop in (StopReason.INTERRUPTED, StopReason.TARGET_ERROR):
        skip_why = f"not asked: the reference audit ended {report.stop.value}"
    section = agnostic_section(
        SectionTarget(
            endpoint=settings.endpoint,
            api=settings.api_kind,
            served_model=settings.served_model or settings.model,
            timeout_s=settings.timeout_s,
            retries=settings.retries,
            seed=settings.seed,
        ),
        None if report.tier is None else str(report.tier.value),
        [(r.probe_id, r.complete, r.tier, r.values) for r in report.evidence],
        budget,
        ask=settings.agnostic_checks,
        api_key=api_key,
        transport=transport,
        should_stop=should_stop,
        skip_why=skip_why,
    )
    update: dict[str, object] = {"agnostic": section}
    if budget is not None:
        update |= {"queries": budget.queries, "tokens": budget.tokens}
    return report.model_copy(update=update)


def write_report(report: AuditReport, path: Path) -> None:
    """Atomically: a crash mid-write never leaves half a report."""
    write_json_atomic(path, report.model_dump(mode="json"), indent=1)
