"""The model-agnostic audit: what any OpenAI-compatible endpoint's own answers say, with no model given.

    run_agnostic_audit(AgnosticSettings(endpoint=...)) -> AgnosticReport

No vocabulary and no reference are known, so the prompts are plain text: two short sentences of
common Chinese characters (U+4E00..U+4FFF), which every byte-level or SentencePiece tokenizer encodes
and which are also words of hspi's built-in reference vocabulary (one character per token from
U+4E00), so the reference targets answer them too; with a seed, two random strings of those
characters (`audit_prompts`).  The plan, one query each, in order, until the
budget (default 8 queries) is spent:

    models      GET {base}/models (engine tells; the served model name when none is given)
    first       prompt A, asking 20 logprobs; a 4xx refusal asks 5, then the sampled token's, then text
    second      prompt B at the tier found (a second, independent answer for the logit precision)
    repeat      prompt A again, alone
    malformed   prompt A with `max_tokens` not a number (the error body's shape is an engine tell)
    burst-i     up to 3 concurrent copies of prompt A (threads; the budget's lock holds the caps)

Checks, each with a verdict, a probability and its evidence, or `unknown` and the reason:

    precision    the logits' number format from the top-k logprobs (features.precision) of the distinct
                 answers.  The values on the wire are a float32 log-softmax of the logits: the format read
                 is the logits', not the weights' (llama.cpp computes float32 logits for every GGUF type).
    determinism  bitwise comparison of the answers to prompt A (audit.determinism)
    engine       the rule table of audit.engine_tells

Every request is kept as evidence (appended to a JSONL file as it arrives, if asked, and handed to
`on_record`).  `should_stop` is asked before each step (the service's cancel and shutdown): a true
answer ends the audit `interrupted`, its checks read from the requests so far.  Nothing the
endpoint sends makes the audit crash: a body that is no answer, no logprobs, fewer than asked, values
that are not log-probabilities (positive, unsorted, summing past 1) each leave a check `unknown`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from hspi.audit.determinism import Observation, read_determinism
from hspi.audit.engine_tells import first_model, read_engine, tells_from
from hspi.audit.raw_answer import RawAnswer, read_answer
from hspi.collector.targets.http_client import BudgetedHTTPClient, BudgetExhausted, Exchange, QueryBudget
from hspi.errors import TargetError
from hspi.features.precision import read_precision, validate_answer, verdict_probability
from hspi.terms import StopReason

PROMPT_A = "他们从东京买了两件书"  # "they bought two books from Tokyo"
PROMPT_B = "你会为之付代价"  # "you will pay the price for it"
DEFAULT_BUDGET = 8
AGNOSTIC_KIND = "model-agnostic"  # the `kind` of its report (and of its settings as the service stores them)
BURST = 3
FULL_PLAN = ("models", "first", "second", "repeat", "malformed", "burst")
TIER_ASKS: tuple[tuple[str, int | None], ...] = (("topk20", 20), ("topk5", 5), ("top1", 0), ("text", None))
NORMALISATION_SLACK = 1e-3  # top-k probabilities may sum to at most 1 (+ float32 rounding of each value)
PRECISION_NOTE = (
    "the values on the wire are a float32 log-softmax of the logits: the format read is the logits' "
    "number format, not the weights' type (llama.cpp emits float32 logits for every GGUF type, and reads fp32)"
)


class AgnosticSettings(BaseModel):
    endpoint: str
    api: Literal["completions", "chat"] = "completions"
    served_model: str | None = None
    budget_queries: int = Field(default=DEFAULT_BUDGET, ge=1)
    budget_tokens: int | None = Field(default=None, ge=1)  # default: 40 per query (a short prompt, one token)
    max_tier: Literal["topk20", "topk5", "top1", "text"] | None = None
    timeout_s: float = Field(default=10.0, gt=0)
    retries: int = Field(default=2, ge=0)
    seed: int | None = None  # None: the two fixed sentences; a seed: two random strings of the same characters


def audit_prompts(seed: int | None) -> tuple[str, str]:
    """Prompts A and B.  Seeded ones are 6-12 characters drawn from U+4E00..U+4FFF (CJK ideographs, all
    assigned), B never starting with A's first character (a shared first token would take llama-cpp-python's
    prefix-cache path for B)."""
    if seed is None:
        return PROMPT_A, PROMPT_B
    rng = np.random.default_rng(seed)

    def draw() -> str:
        return "".join(chr(0x4E00 + int(c)) for c in rng.integers(0, 0x200, int(rng.integers(6, 13))))

    a = draw()
    b = draw()
    while b[0] == a[0]:
        b = draw()
    return a, b


class AgnosticRecord(BaseModel):
    index: int
    step: str  # models | first | second | repeat | malformed | burst-i
    method: str
    path: str
    status: int | None = None
    tier_asked: str | None = None
    texts: list[str] = Field(default_factory=list)  # the generated token, then its alternatives
    values: list[float] = Field(default_factory=list)  # their logprobs as sent (float64 of the JSON number)
    problem: str = ""  # why this answer is no answer, or why its logprobs cannot be used
    fields: dict[str, Any] = Field(default_factory=dict)  # response field names and formats (engine tells)
    queries_so_far: int = 0
    seconds: float = 0.0


class Check(BaseModel):
    verdict: str
    probability: float
    reason: str
    evidence: dict[str, Any] = Field(default_factory=dict)


class AgnosticReport(BaseModel):
    kind: Literal["model-agnostic"] = "model-agnostic"
    endpoint: str
    prompts: list[str]
    api: str
    served_model: str | None
    tier: str | None
    stop: Literal["plan-done", "budget", "target-error", "interrupted"]
    reason: str
    queries: int
    tokens: int
    budget_queries: int
    budget_tokens: int
    checks: dict[str, Check]
    evidence: list[AgnosticRecord]
    seconds: float


class _Stopped(Exception):
    """`should_stop` said stop (a cancel or a shutdown of the service)."""


def _billed(prompt: str) -> int:
    return len(prompt.encode()) + 1  # at most a token per byte, and the generated one


class AgnosticAudit:
    def __init__(
        self,
        settings: AgnosticSettings,
        *,
        api_key: str | None = None,
        transport: Any = None,
        evidence_sink: IO[str] | None = None,
        on_record: Callable[[AgnosticRecord], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        burst: int = BURST,
    ) -> None:
        self.settings, self.sink = settings, evidence_sink
        self.on_record, self.should_stop = on_record, should_stop
        self.burst = burst
        self.budget = QueryBudget(settings.budget_queries, settings.budget_tokens or 40 * settings.budget_queries)
        self.http = BudgetedHTTPClient(
            settings.endpoint,
            self.budget,
            api_key=api_key,
            timeout_s=settings.timeout_s,
            retries=settings.retries,
            transport=transport,
        )
        self.records: list[AgnosticRecord] = []
        self.answers: dict[str, tuple[Exchange, RawAnswer]] = {}
        self.models: Exchange | None = None
        self.error: Exchange | None = None
        self.tier: str | None = None
        self.tier_note = ""  # why the tier is below the one asked, when the endpoint ignored the ask
        self.served = settings.served_model
        self.prompt_a, self.prompt_b = audit_prompts(settings.seed)

    # -- requests ----------------------------------------------------------------------------
    def _path(self) -> str:
        return "/completions" if self.settings.api == "completions" else "/chat/completions"

    def _payload(self, prompt: str, logprobs: int | None, max_tokens: Any = 1) -> dict:
        payload: dict[str, Any] = {"max_tokens": max_tokens, "temperature": 0.0}
        if self.served is not None:
            payload["model"] = self.served
        if self.settings.api == "completions":
            payload["prompt"] = prompt
            if logprobs is not None:
                payload["logprobs"] = logprobs
        else:
            payload["messages"] = [{"role": "user", "content": prompt}]
            if logprobs is not None:
                payload["logprobs"] = True
                if logprobs > 0:
                    payload["top_logprobs"] = logprobs
        return payload

    def _keep(self, record: AgnosticRecord) -> None:
        record.index = len(self.records)
        self.records.append(record)
        if self.sink is not None:
            self.sink.write(record.model_dump_json() + "\n")
            self.sink.flush()
        if self.on_record is not None:
            self.on_record(record)

    def _settle(self, exchange: Exchange, answer: RawAnswer) -> None:
        usage = answer.fields.get("usage_total")
        if isinstance(usage, int):
            self.budget.settle(exchange.reserved, usage)

    def _ask(self, step: str, prompt: str, tier: str, logprobs: int | None) -> tuple[Exchange, RawAnswer, float]:
        started = time.perf_counter()
        exchange = self.http.exchange("POST", self._path(), self._payload(prompt, logprobs), billed=_billed(prompt))
        seconds = time.perf_counter() - started
        answer = read_answer(exchange.body, self.settings.api) if exchange.status < 300 else RawAnswer()
        if exchange.status < 300:
            self._settle(exchange, answer)
        return exchange, answer, seconds

    def _record(self, step: str, tier: str | None, exchange: Exchange, answer: RawAnswer, seconds: float) -> None:
        problem = (
            f"HTTP {exchange.status}"
            if exchange.status >= 300
            else answer.problem or (answer.logprobs_problem if tier not in (None, "text") else "")
        )
        self._keep(
            AgnosticRecord(
                index=0,
                step=step,
                method="POST",
                path=self._path(),
                status=exchange.status,
                tier_asked=tier,
                texts=list(answer.observation_texts()),
                values=list(answer.observation_values()),
                problem=problem,
                fields={k: v for k, v in answer.fields.items() if k != "usage_total"},
                queries_so_far=self.budget.queries,
                seconds=round(seconds, 4),
            )
        )

    def _get_models(self) -> None:
        started = time.perf_counter()
        exchange = self.http.exchange("GET", "/models", None, billed=0)
        self.models = exchange
        if self.served is None and exchange.status < 300:
            entry = first_model(exchange.body)
            if entry is not None and isinstance(entry.get("id"), str):
                self.served = entry["id"][:200]
        self._keep(
            AgnosticRecord(
                index=0,
                step="models",
                method="GET",
                path="/models",
                status=exchange.status,
                problem="" if exchange.status < 300 else f"HTTP {exchange.status}",
                queries_so_far=self.budget.queries,
                seconds=round(time.perf_counter() - started, 4),
            )
        )

    def _first(self) -> None:
        asks = TIER_ASKS
        if self.settings.max_tier is not None:
            asks = asks[[t for t, _ in TIER_ASKS].index(self.settings.max_tier) :]
        for tier, logprobs in asks:
            exchange, answer, seconds = self._ask("first", self.prompt_a, tier, logprobs)
            self._record("first", tier, exchange, answer, seconds)
            if 400 <= exchange.status < 500 and logprobs is not None:
                continue  # a refusal of this many logprobs: ask for fewer
            if exchange.status >= 300:
                raise TargetError(f"target-error: the endpoint answered HTTP {exchange.status} to a plain prompt")
            self.tier = tier
            if logprobs is not None and answer.top is None and not answer.problem:
                # logprobs asked and not given (ignored, not refused): the tier really shown
                self.tier = "top1" if answer.generated_logprob is not None else "text"
                self.tier_note = f"asked {logprobs} logprobs: {answer.logprobs_problem or 'none came'}"
            self.answers["first"] = (exchange, answer)
            return
        raise TargetError("target-error: the endpoint refused a plain prompt at every tier")

    def _again(self, step: str, prompt: str) -> None:
        assert self.tier is not None
        logprobs = dict(TIER_ASKS)[self.tier]
        exchange, answer, seconds = self._ask(step, prompt, self.tier, logprobs)
        self._record(step, self.tier, exchange, answer, seconds)
        if exchange.status < 300:
            self.answers[step] = (exchange, answer)

    def _malformed(self) -> None:
        started = time.perf_counter()
        payload = self._payload(self.prompt_a, None, max_tokens="one")
        self.error = self.http.exchange("POST", self._path(), payload, billed=_billed(self.prompt_a), retry=False)
        self._keep(
            AgnosticRecord(
                index=0,
                step="malformed",
                method="POST",
                path=self._path(),
                status=self.error.status,
                problem="sent on purpose: max_tokens is not a number",
                queries_so_far=self.budget.queries,
                seconds=round(time.perf_counter() - started, 4),
            )
        )

    def _burst(self) -> None:
        assert self.tier is not None
        copies = min(self.burst, self.budget.max_queries - self.budget.queries)
        if copies < 2:
            return
        logprobs = dict(TIER_ASKS)[self.tier]

        def one(i: int) -> tuple[str, Exchange | None, RawAnswer, float, str]:
            try:
                exchange, answer, seconds = self._ask(f"burst-{i}", self.prompt_a, self.tier or "text", logprobs)
            except (BudgetExhausted, TargetError) as exc:
                return f"burst-{i}", None, RawAnswer(), 0.0, str(exc)
            return f"burst-{i}", exchange, answer, seconds, ""

        with ThreadPoolExecutor(max_workers=copies, thread_name_prefix="burst") as pool:
            results = list(pool.map(one, range(1, copies + 1)))
        for step, exchange, answer, seconds, failure in results:
            if exchange is None:
                self._keep(
                    AgnosticRecord(
                        index=0,
                        step=step,
                        method="POST",
                        path=self._path(),
                        problem=failure,
                        queries_so_far=self.budget.queries,
                    )
                )
                continue
            self._record(step, self.tier, exchange, answer, seconds)
            if exchange.status < 300:
                self.answers[step] = (exchange, answer)

    def run(self, plan: tuple[str, ...] = FULL_PLAN) -> AgnosticReport:
        """Ask the plan's steps in order (`FULL_PLAN`; a reference audit's section leaves out `second`)."""
        started = time.perf_counter()
        stop: Any = "plan-done"
        reason = "every step of the plan was asked"
        steps: dict[str, Callable[[], None]] = {
            "models": self._get_models,
            "first": self._first,
            "second": lambda: self._again("second", self.prompt_b),
            "repeat": lambda: self._again("repeat", self.prompt_a),
            "malformed": self._malformed,
            "burst": self._burst,
        }
        try:
            for name in plan:
                step = steps[name]
                if self.should_stop is not None and self.should_stop():
                    raise _Stopped
                step()
        except _Stopped:
            stop, reason = StopReason.INTERRUPTED.value, "stopped before the plan's end: the evidence so far is kept"
        except BudgetExhausted as exc:
            stop, reason = StopReason.BUDGET.value, f"the budget is spent before the plan's end ({exc})"
        except KeyboardInterrupt:
            stop, reason = StopReason.INTERRUPTED.value, "interrupted by the user: the evidence so far is kept"
        except TargetError as exc:
            stop, reason = StopReason.TARGET_ERROR.value, str(exc)
        finally:
            self.http.close()
        return AgnosticReport(
            endpoint=self.settings.endpoint,
            prompts=[self.prompt_a, self.prompt_b],
            api=self.settings.api,
            served_model=self.served,
            tier=self.tier,
            stop=stop,
            reason=reason,
            queries=self.budget.queries,
            tokens=self.budget.tokens,
            budget_queries=self.budget.max_queries,
            budget_tokens=self.budget.max_tokens,
            checks={
                "precision": self.precision_check(),
                "determinism": self.determinism_check(),
                "engine": self.engine_check(),
            },
            evidence=self.records,
            seconds=round(time.perf_counter() - started, 3),
        )

    # -- checks ------------------------------------------------------------------------------
    def precision_check(self) -> Check:
        if self.tier is None:
            return Check(verdict="unknown", probability=0.0, reason="no answer to a plain prompt")
        answers: list[tuple[str, list[float] | None, str]] = [
            (
                step,
                None if answer.top is None else [v for _, v in answer.top],
                answer.problem or answer.logprobs_problem or ("no top logprobs" if answer.top is None else ""),
            )
            for step, (_, answer) in self.answers.items()
        ]
        return precision_check(answers, self.tier, self.tier_note)

    def determinism_check(self) -> Check:
        observations = [
            Observation(
                step,
                "burst" if step.startswith("burst") else "alone",
                answer.observation_texts(),
                answer.observation_values(),
            )
            for step, (_, answer) in self.answers.items()
            if step != "second" and not answer.problem
        ]
        reading = read_determinism(observations)
        return Check(
            verdict=reading.verdict,
            probability=reading.probability,
            reason=reading.reason,
            evidence={"groups": reading.groups, "differences": reading.differences, "cache_path": reading.cache_path},
        )

    def engine_check(self) -> Check:
        answers = [(e.headers, a) for e, a in self.answers.values() if not a.problem]
        models = (self.models.status, self.models.headers, self.models.body) if self.models is not None else None
        error = (self.error.status, self.error.headers, self.error.body) if self.error is not None else None
        tells = tells_from(answers, models, error)
        reading = read_engine(tells)
        return Check(
            verdict=reading.verdict,
            probability=reading.probability,
            reason=reading.reason,
            evidence={"tells": tells, "fired": reading.fired, "posterior": reading.posterior},
        )


def precision_check(answers: Sequence[tuple[str, list[float] | None, str]], tier: str, tier_note: str = "") -> Check:
    """The logit precision of answers at `tier`: each answer is (its name, its top-k logprobs or None, why it
    cannot be used or ""), from a model-agnostic audit's plain prompts or a reference audit's probes alike."""
    if tier in ("top1", "text"):
        reading = read_precision([], tier)
        note = f"{tier_note}; " if tier_note else ""
        return Check(verdict="unknown", probability=0.0, reason=note + reading.reason)
    if tier not in ("topk20", "topk5"):
        return Check(verdict="unknown", probability=0.0, reason=f"the {tier} tier shows no log-probabilities")
    k = 20 if tier == "topk20" else 5
    rows, seen, why = [], set(), ""
    for step, values, problem in answers:
        if problem or values is None:
            why = why or f"{step}: {problem or 'no top logprobs'}"
            continue
        row, invalid = validate_answer(values, k)
        if row is None:
            why = why or f"{step}: {invalid}" + (f" ({len(values)} given, {k} asked)" if "fewer" in invalid else "")
            continue
        mass = float(np.exp(np.asarray(values, dtype=np.float64)).sum())
        if mass > 1.0 + NORMALISATION_SLACK:
            why = why or f"{step}: not log-probabilities (their probabilities sum to {mass:.4g} > 1)"
            continue
        key = row.tobytes()
        if key not in seen:  # a bit-identical repeat is no new evidence
            seen.add(key)
            rows.append(row)
    if why:  # one answer that is not log-probabilities makes the others suspect too
        return Check(verdict="unknown", probability=0.0, reason=why, evidence={"answers_read": len(rows)})
    if not rows:
        return Check(verdict="unknown", probability=0.0, reason="no answer carried top-k logprobs")
    reading = read_precision(np.stack(rows), tier)
    probability = verdict_probability(reading.verdict, reading.posterior)
    return Check(
        verdict=reading.verdict,
        probability=round(probability, 4),
        reason=f"{reading.reason}; {PRECISION_NOTE}",
        evidence={
            "posterior": {c: round(p, 4) for c, p in reading.posterior.items()},
            "answers_used": reading.answers_used,
            "log_evidence": {c: round(v, 3) if math.isfinite(v) else None for c, v in reading.log_evidence.items()},
            "fits": reading.fits,
        },
    )


def run_agnostic_audit(
    settings: AgnosticSettings,
    *,
    api_key: str | None = None,
    transport: Any = None,
    evidence_sink: IO[str] | None = None,
    on_record: Callable[[AgnosticRecord], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> AgnosticReport:
    return AgnosticAudit(
        settings,
        api_key=api_key,
        transport=transport,
        evidence_sink=evidence_sink,
        on_record=on_record,
        should_stop=should_stop,
    ).run()
