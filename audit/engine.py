"""`hspi audit`: probe a black-box endpoint, update the evidence after each answer, say what served it.

Platform + probes → target (HTTP) → answers → reference-relative features → classifier → report.
The audit draws prompts from the reference pool, so every answer is compared with what each known
platform returned for the same prompt.  It detects the richest tier the endpoint gives, then asks,
one query at a time, the pool probe that best splits the candidates still likely, and stops as soon
as one candidate is certain and matches, when no unused probe can split the candidates left, when
the answers fit no known platform, or when the budget is spent.  Every answer is kept as evidence
(appended to a JSONL file as it arrives, if asked), also when the target fails or the user stops.

An interrupted audit resumes from its stored answers (`prior`): they are replayed into the evidence,
the queries they cost count against the budget, and their probes are never asked again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from hspi.audit.claims import head_verdict, overall_verdict
from hspi.audit.text import TextEvidence, text_vote
from hspi.audit.verdict import Guess
from hspi.classifier.artifacts import load_matcher
from hspi.classifier.reference import CalibratedMatcher, ReferenceMatcher
from hspi.classifier.sequential import ReferenceBook, ReferenceEvidence, most_splitting_probe
from hspi.collector.models import model_spec
from hspi.collector.probes import ProbeSet
from hspi.collector.targets.http_client import BudgetExhausted, QueryBudget
from hspi.collector.targets.json_logits import JSONLogitsTarget
from hspi.collector.targets.openai import OpenAICompatibleTarget, answers_from_tokens
from hspi.collector.targets.openai_parse import FirstToken
from hspi.collector.vocabulary import token_id
from hspi.dataset import Dataset
from hspi.equivalence import equivalence_classes
from hspi.errors import ConfigError, DatasetError, ModelError, TargetError
from hspi.features.tiers import TierView, tier_view
from hspi.responses import TierAnswers
from hspi.shipped import shipped_classifier, shipped_dataset

TOP_GUESSES = 3
NO_MATCH_AFTER = 8  # answers before an audit may stop because nothing known fits


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


class HeadReport(BaseModel):
    guesses: list[Guess]
    claimed: str | None = None
    claim_probability: float | None = None
    verdict: str | None = None
    why: str = ""


class AuditReport(BaseModel):
    endpoint: str
    model: str
    api: str
    tier: str | None
    status: Literal["match", "unknown", "no-evidence"]
    verdict: Literal["consistent", "inconsistent", "inconclusive", "unknown-platform"] | None
    reason: str
    stop: str  # confident | no-splitting-probe | no-match | budget | pool-exhausted | target-error | interrupted
    queries: int
    tokens: int
    budget_queries: int
    budget_tokens: int
    answers_used: int
    match_score: float
    threshold: float
    claim: dict[str, str]
    heads: dict[str, HeadReport]
    evidence: list[QueryRecord]
    dataset: str
    classifier: str
    seconds: float


class AuditSettings(BaseModel):
    endpoint: str
    model: str = "lm-small"
    claim: dict[str, str] = Field(default_factory=dict)
    budget_queries: int = Field(default=64, ge=1)
    budget_tokens: int | None = Field(default=None, ge=1)  # default: what budget_queries one-token answers cost
    api: Literal["completions", "chat"] = "completions"
    served_model: str | None = None
    order: Literal["split", "random"] = "split"
    max_tier: Literal["topk20", "topk5", "top1", "text"] = "topk20"  # ask for no more than this
    confidence: float = Field(default=0.99, gt=0.5, lt=1.0)
    # answers before a match may be declared; once the candidates are settled, the extra answers
    # verify the leader where its near twins part, which is where a platform never collected shows
    min_answers: int = Field(default=2, ge=1)
    timeout_s: float = Field(default=10.0, gt=0)
    retries: int = Field(default=2, ge=0)
    seed: int | None = None
    dataset: Path | None = None
    classifier: Path | None = None
    # pool probes never to ask: an evaluation keeps the probes the classifier was trained on out
    avoid_probes: list[int] = Field(default_factory=list)


def run_audit(
    settings: AuditSettings,
    *,
    api_key: str | None = None,
    evidence_path: Path | None = None,
    on_query: Callable[[QueryRecord, float], None] | None = None,
    transport: object = None,
    prior: Sequence[QueryRecord] | None = None,
) -> AuditReport:
    """Audit `settings.endpoint`; `prior` resumes an interrupted audit from the answers it stored.

    Prior answers (in their order) are replayed into the evidence and passed to `on_query` (not to
    the evidence file, which holds them already); the queries they cost count against the budget,
    and the probes they answered are not asked again.  Then the audit goes on as if it had never
    stopped: it may stop at once if the replayed evidence is already decisive.
    """
    started = time.perf_counter()
    spec = model_spec(settings.model)
    dataset_dir = settings.dataset or shipped_dataset(settings.model)
    classifier_dir = settings.classifier or shipped_classifier(settings.model)
    context = _references(str(dataset_dir), settings.model, _mtime(dataset_dir / "dataset.json"))
    pool, pool_ids = context.pool, context.pool_ids
    avoid = {int(p) for p in settings.avoid_probes}
    per_query = spec.input_shape[0] + 1 if spec.input_kind == "tokens" else int(np.prod(spec.input_shape))
    budget = QueryBudget(settings.budget_queries, settings.budget_tokens or settings.budget_queries * per_query)
    rng = np.random.default_rng(settings.seed)
    first_tokens = context.first_tokens

    records: list[QueryRecord] = []
    state: dict = {"tier": None, "evidence": None, "stop": "budget", "reason": ""}
    sink = evidence_path.open("a", encoding="utf-8") if evidence_path is not None else None

    def keep(record: QueryRecord, replayed: bool = False) -> None:
        records.append(record)
        if sink is not None and not replayed:  # written as it arrives: an interrupted audit keeps its evidence
            sink.write(record.model_dump_json() + "\n")
            sink.flush()
        if on_query is not None:
            on_query(record, time.perf_counter() - started)

    def add_answer(probe_id: int, answers: TierAnswers | None, view: TierView | None, note: str = "") -> None:
        tier = state["tier"]
        if view is None or answers is None or not bool(answers.complete[0]):
            keep(
                QueryRecord(
                    index=len(records),
                    probe_set=pool.version,
                    probe_id=probe_id,
                    tier=tier or "-",
                    complete=False,
                    queries_so_far=budget.queries,
                    ids=[int(i) for i in answers.ids[0]] if answers is not None else [],
                    note=note or "incomplete answer (missing or unknown tokens): not scored",
                )
            )
            return
        keep(
            QueryRecord(
                index=len(records),
                probe_set=pool.version,
                probe_id=probe_id,
                tier=tier,
                complete=True,
                ids=[int(i) for i in view.ids[0]],
                values=[float(v) for v in view.values[0]],
                queries_so_far=budget.queries,
                leading=score(probe_id, view),
                note=note,
            )
        )

    def score(probe_id: int, view: TierView) -> dict[str, str]:
        """Add one complete answer to the evidence; each head's leading guess after it."""
        if state["evidence"] is None:
            state["evidence"] = ReferenceEvidence(
                _matcher(str(classifier_dir), settings.model, state["tier"]), context.book(state["tier"])
            )
            state["evidence"].asked.update(avoid)
        state["evidence"].update(probe_id, view)
        return {h: values[int(np.argmax(post))] for h, (values, post) in state["evidence"].head_posteriors().items()}

    def replay(stored: Sequence[QueryRecord]) -> int | None:
        """Put stored answers back into the evidence and the budget; the last probe they answered."""
        last = None
        for record in stored:
            if record.probe_set != pool.version:
                raise ConfigError(
                    f"stored answer {record.index} is for probe set {record.probe_set}, "
                    f"not {pool.version}: it cannot resume this audit"
                )
            if record.tier == "text":
                state["tier"] = "text"
                text = text_evidence()
                text.add(text.kind_of(record.probe_set), record.probe_id, record.ids[0] if record.ids else -1)
                keep(record.model_copy(update={"index": len(records)}), replayed=True)
                last = record.probe_id
                continue
            if record.tier != "-":
                if state["tier"] not in (None, record.tier):
                    raise ConfigError(
                        f"stored answer {record.index} is at tier {record.tier}, the ones before "
                        f"it at {state['tier']}: it cannot resume this audit"
                    )
                state["tier"] = record.tier
            budget.queries = max(budget.queries, record.queries_so_far)
            budget.tokens = budget.queries * per_query  # every query bills one probe and one token
            replayed = record.model_copy(update={"index": len(records)})
            if record.complete:
                view = TierView(
                    record.tier, np.asarray([record.ids], dtype=np.int32), np.asarray([record.values], dtype=np.float32)
                )  # float32 -> float64 -> float32 is exact
                replayed.leading = score(record.probe_id, view)
            keep(replayed, replayed=True)
            last = record.probe_id
        return last

    def decided() -> bool:
        """Stop once one candidate is certain and matches, or the answers fit no known platform."""
        evidence = state["evidence"]
        if evidence is not None and len(evidence.used) >= settings.min_answers:
            post = evidence.posterior()
            if post.max() >= settings.confidence and evidence.match_score() >= evidence.matcher.threshold_:
                state["stop"] = "confident"
                return True
            if len(evidence.used) >= NO_MATCH_AFTER and evidence.match_score() < evidence.matcher.threshold_:
                state["stop"] = "no-match"
                return True
        return False

    def next_probe(previous: int | None) -> int | None:
        evidence: ReferenceEvidence | None = state["evidence"]
        used = set(evidence.used if evidence else []) | {r.probe_id for r in records}
        exclude = (
            int(first_tokens[evidence.row_of(previous)])
            if previous is not None and first_tokens is not None and evidence
            else None
        )
        if evidence is not None and settings.order == "split":
            evidence.asked.update(r.probe_id for r in records if not r.complete)
            return evidence.next_probe(
                rng, exclude_first_token=exclude, first_tokens=first_tokens, confidence=settings.confidence
            )
        free = [int(p) for p in pool_ids if int(p) not in used | avoid]
        if first_tokens is not None and previous is not None:
            prev_first = first_tokens[int(np.flatnonzero(pool_ids == previous)[0])]
            free = [p for p in free if first_tokens[int(np.flatnonzero(pool_ids == p)[0])] != prev_first] or free
        return int(rng.choice(free)) if free else None

    def text_evidence() -> TextEvidence:
        if state.get("text") is None:
            state["text"] = TextEvidence(
                text_vote(str(classifier_dir), settings.model), spec, len(pool_ids), avoid_pool=avoid
            )
        return state["text"]

    def add_text_answer(kind: str, probe_id: int, observed: int) -> None:
        text = text_evidence()
        text.add(kind, probe_id, observed)
        verdict = text.verdict()
        keep(
            QueryRecord(
                index=len(records),
                probe_set=text.version(kind),
                probe_id=probe_id,
                tier="text",
                complete=observed >= 0,
                ids=[observed],
                queries_so_far=budget.queries,
                leading={h: label for h, (label, _) in verdict.heads.items()},
                note="" if observed >= 0 else "the answer is not one token of the vocabulary",
            )
        )

    def text_audit(first: tuple[int, FirstToken] | None) -> None:
        """Greedy tokens only: the border-prompt vote, one most informative prompt at a time."""
        text = text_evidence()
        if first is not None:
            add_text_answer("pool", first[0], _greedy_id(first[1], spec.n_outputs))
        while True:
            verdict = text.verdict()
            if text.n >= settings.min_answers and verdict.ranked[0][1] >= settings.confidence and not verdict.unknown:
                state["stop"] = "confident"
                return
            if text.n >= NO_MATCH_AFTER and verdict.unknown:
                state["stop"] = "no-match"
                return
            nxt = text.next_probe()
            if nxt is None:
                state["stop"] = "no-splitting-probe"
                return
            kind, probe_id = nxt
            token = target.first_token(text.inputs(kind, probe_id), None)  # type: ignore[union-attr]
            add_text_answer(kind, probe_id, _greedy_id(token, spec.n_outputs))

    target: OpenAICompatibleTarget | JSONLogitsTarget
    if spec.input_kind == "tokens":
        target = OpenAICompatibleTarget(
            settings.endpoint,
            settings.model,
            budget,
            served_model=settings.served_model,
            api=settings.api,
            api_key=api_key,
            timeout_s=settings.timeout_s,
            retries=settings.retries,
            transport=transport,
        )  # type: ignore[arg-type]
    else:
        target = JSONLogitsTarget(
            settings.endpoint,
            settings.model,
            budget,
            api_key=api_key,
            timeout_s=settings.timeout_s,
            retries=settings.retries,
            transport=transport,
        )  # type: ignore[arg-type]
    previous: int | None = None
    try:
        previous = replay(prior or ())
        if state["tier"] == "text":  # a resumed text-tier audit goes on where it stopped
            text_audit(None)
        while state["tier"] != "text":
            if previous is None:
                # the first prompt splits the classes best at the richest tier asked for (ties at random)
                book = context.book(
                    settings.max_tier
                    if settings.max_tier != "text" and spec.input_kind == "tokens"
                    else "topk20"
                    if spec.input_kind == "tokens"
                    else "logits"
                )
                allowed = ~np.isin(pool_ids, list(avoid))
                first = (
                    None
                    if settings.order == "random"
                    else most_splitting_probe(book, np.where(allowed, book.prior_split_scores(), 0.0), rng)
                )
                probe = int(rng.choice(pool_ids[allowed])) if first is None else first
            else:  # after an answer (or the replayed ones): stop, or pick the next probe
                if decided():
                    break
                nxt = next_probe(previous)
                if nxt is None:
                    evidence = state["evidence"]
                    state["stop"] = (
                        "no-splitting-probe" if evidence is not None and settings.order == "split" else "pool-exhausted"
                    )
                    break
                probe = nxt
            if isinstance(target, OpenAICompatibleTarget):
                prompt = pool.inputs(np.array([probe]))[0]
                if state["tier"] is None:
                    state["tier"], token = target.detect_tier(prompt, most=settings.max_tier)
                    if state["tier"] == "text":
                        text_audit((probe, token))
                        break
                else:
                    token = target.first_token(prompt, {"topk20": 20, "topk5": 5, "top1": 0}[state["tier"]])
                answers = answers_from_tokens(settings.model, pool.version, np.array([probe]), state["tier"], [token])
                view = TierView(state["tier"], answers.ids, answers.values) if bool(answers.complete[0]) else None
            else:
                state["tier"] = "logits"
                responses = target.answer(pool, np.array([probe]))
                view = tier_view(responses.as_float32(), "logits")
                answers = TierAnswers(
                    settings.model, pool.version, responses.probe_ids, "logits", view.ids, view.values
                )
            add_answer(probe, answers, view)
            previous = probe
    except BudgetExhausted:
        state["stop"] = "budget"
    except TargetError as exc:
        state["stop"], state["reason"] = "target-error", str(exc)
    except KeyboardInterrupt:
        state["stop"], state["reason"] = "interrupted", "interrupted by the user: the evidence so far is kept"
    finally:
        target.close()
        if sink is not None:
            sink.close()
    return _report(
        settings,
        state,
        records,
        budget,
        classes_dataset=str(dataset_dir),
        classifier=str(classifier_dir),
        seconds=time.perf_counter() - started,
    )


class _ReferenceContext:
    """A dataset's classes and reference outputs for one model, loaded once per process."""

    def __init__(self, dataset_dir: Path, model: str) -> None:
        ds = Dataset(dataset_dir)
        if model not in ds.models:
            raise ConfigError(f"model {model!r} is not in {dataset_dir}; it has: {', '.join(ds.models)}")
        self.classes = equivalence_classes(ds, model)
        pool_version = next(v for v in ds.manifest.probe_sets[model] if v.endswith("/pool"))
        self.pool = ProbeSet(model_spec(model), "pool", ds.manifest.probe_sets[model][pool_version])
        references = [ds.pool_references(c.members[0], model) for c in self.classes]
        self.pool_ids = references[0].probe_ids
        if any(not np.array_equal(r.probe_ids, self.pool_ids) for r in references):
            raise DatasetError(f"{dataset_dir}: reference runs of {model} cover different pool probes")
        self.logits = [r.as_float32() for r in references]
        tokens = model_spec(model).input_kind == "tokens"
        self.first_tokens = self.pool.inputs(self.pool_ids)[:, 0] if tokens else None
        self._books: dict[str, ReferenceBook] = {}

    def book(self, tier: str) -> ReferenceBook:
        if tier not in self._books:
            self._books[tier] = ReferenceBook(self.logits, [c.labels for c in self.classes], tier, self.pool_ids)
        return self._books[tier]


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


@lru_cache(maxsize=4)
def _references(dataset_dir: str, model: str, manifest_mtime: float) -> _ReferenceContext:
    return _ReferenceContext(Path(dataset_dir), model)


@lru_cache(maxsize=16)
def _matcher(classifier_dir: str, model: str, tier: str) -> ReferenceMatcher | CalibratedMatcher:
    directory = Path(classifier_dir) / model / tier
    if not (directory / "reference.json").exists():
        raise ModelError(f"no classifier for {model} at tier {tier} in {classifier_dir}")
    return load_matcher(directory)[0]


def _report(
    settings: AuditSettings,
    state: dict,
    records: list[QueryRecord],
    budget: QueryBudget,
    *,
    classes_dataset: str,
    classifier: str,
    seconds: float,
) -> AuditReport:
    evidence: ReferenceEvidence | None = state["evidence"]
    text: TextEvidence | None = state.get("text")
    heads: dict[str, HeadReport] = {}
    verdicts: dict[str, str] = {}
    reason = state["reason"]
    head_posteriors: dict[str, tuple[list[str], np.ndarray]] = {}
    answers_used = 0
    if text is not None and text.n:
        read = text.verdict()
        match_score, threshold = read.score, float(text.vote.threshold_)
        status = "unknown" if read.unknown else "match"
        head_posteriors, answers_used = text.vote.head_posteriors(text.posterior()), text.n
    elif evidence is not None and evidence.used:
        match_score, threshold = evidence.match_score(), evidence.matcher.threshold_
        status = "match" if match_score >= threshold else "unknown"
        head_posteriors, answers_used = evidence.head_posteriors(), len(evidence.used)
    else:
        status, match_score, threshold = "no-evidence", 0.0, 0.0
        reason = reason or "no complete answer was scored"
    if head_posteriors:
        for head, (values, post) in head_posteriors.items():
            order = np.argsort(-post)[:TOP_GUESSES]
            report = HeadReport(guesses=[Guess(label=values[i], probability=round(float(post[i]), 4)) for i in order])
            if head in settings.claim:
                verdict, p, why = head_verdict(settings.claim[head], values, [float(x) for x in post])
                report.claimed, report.verdict, report.why = settings.claim[head], verdict, why
                report.claim_probability = None if p is None else round(p, 4)
                verdicts[head] = verdict
            heads[head] = report
        if status == "unknown":
            reason = reason or (
                f"no known platform matches: best candidate scores {match_score:.3f} < threshold {threshold:.3f}"
            )
    if status == "unknown":
        verdict_all = "unknown-platform" if settings.claim else None
    elif status == "no-evidence":
        verdict_all = "inconclusive" if settings.claim else None
    else:
        verdict_all = overall_verdict(verdicts) if settings.claim else None
        if state["stop"] in ("target-error", "interrupted") and verdict_all == "consistent":
            verdict_all = "inconclusive"  # an audit cut short confirms nothing
    if not reason:
        reason = {
            "confident": "one candidate is certain and matches",
            "no-splitting-probe": "no unused pool probe separates the candidates still likely",
            "no-match": "the answers fit no known platform",
            "budget": "the budget is spent",
            "pool-exhausted": "every pool probe was asked",
        }.get(state["stop"], "")
    return AuditReport(
        endpoint=settings.endpoint,
        model=settings.model,
        api=settings.api,
        tier=state["tier"],
        status=status,
        verdict=verdict_all,
        reason=reason,
        stop=state["stop"],
        queries=budget.queries,
        tokens=budget.tokens,
        budget_queries=budget.max_queries,
        budget_tokens=budget.max_tokens,
        answers_used=answers_used,
        match_score=round(match_score, 4),
        threshold=round(threshold, 4),
        claim=settings.claim,
        heads=heads,
        evidence=records,
        dataset=classes_dataset,
        classifier=classifier,
        seconds=round(seconds, 3),
    )


def _greedy_id(token: FirstToken, vocab_size: int) -> int:
    found = token_id(token.text or "", vocab_size)
    return -1 if found is None else found


def write_report(report: AuditReport, path: Path) -> None:
    """Atomically: a crash mid-write never leaves half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(report.model_dump(mode="json"), indent=1), encoding="utf-8")
    tmp.replace(path)
