"""An audit of a model with no references collected yet: what the answers alone can say.

A registered model without a collection has no platform classes to match, so no platform head can
speak.  Two things can still be read, and are:

    model   right model first (`model_check`): the vocabulary from the answers' texts, the weights from
            the model's own float32 forward on the same prompt, computed here (the auditor holds the
            weights; it is the one white-box run a reference-free audit needs)
    dtype   the logits' number format read from the top-k logprobs alone (`features.precision`): fp32,
            bf16 or fp16 logits.  A model that computes in another type but emits float32 logits (int8,
            GGUF quantisations) reads fp32; the report says so.

Probes come from the model's `fresh` stream (no pool is stored).  The audit stops when the dtype
reading holds `CONFIDENCE` after at least `MIN_ANSWERS` answers, or on wrong-model, or when the
budget is spent.
"""

from __future__ import annotations

import time
from typing import IO

import numpy as np

from hspi.audit.claims import HeadReport
from hspi.audit.engine import (
    AuditReport,
    AuditSettings,
    LogitPrecision,
    QueryRecord,
    budget_fields,
    incomplete_note,
)
from hspi.audit.identification import Guess
from hspi.audit.model_check import ModelReading, read_answer, wrong_model_reason
from hspi.collector.models import model_spec
from hspi.collector.probes import ProbeSet
from hspi.collector.targets.base import Target
from hspi.collector.targets.http_client import BudgetExhausted, QueryBudget
from hspi.collector.targets.local import LocalTarget
from hspi.errors import TargetError
from hspi.features.precision import PrecisionReading, read_precision
from hspi.platform import Platform
from hspi.terms import MatchStatus, StopReason, Tier, Verdict

FRESH_PROBES = 4096  # the fresh stream a reference-free audit draws from
CONFIDENCE = 0.99
MIN_ANSWERS = 2
DTYPE_READINGS = ("fp32", "bf16", "fp16")  # the readings that name a model dtype of the torch grid
DTYPE_WHY = (
    "read from the logits' number format alone (no references collected for this model): bf16 or fp16 "
    "logits name the compute type; a model computing in int8 or a GGUF quantisation emits float32 logits and "
    "reads fp32"
)
NO_REFERENCES_WHY = "unknown: no references are collected for this model, so no platform class can be matched"


class ReferenceFreeAudit:
    def __init__(
        self, settings: AuditSettings, target: Target, budget: QueryBudget, evidence_sink: IO[str] | None = None
    ) -> None:
        self.settings, self.target, self.budget, self.sink = settings, target, budget, evidence_sink
        self.spec = model_spec(settings.model)
        self.fresh = ProbeSet(self.spec, "fresh", FRESH_PROBES)
        self.rng = np.random.default_rng(settings.seed)
        self.records: list[QueryRecord] = []
        self.readings: list[ModelReading] = []
        self.tier: Tier | None = None
        self._local: LocalTarget | None = None  # the model's float32 forward here, built on first use

    def _keep(self, record: QueryRecord) -> None:
        self.records.append(record)
        if self.sink is not None:  # written as it arrives: an interrupted audit keeps it
            self.sink.write(record.model_dump_json() + "\n")
            self.sink.flush()

    def _own_logits(self, probe_id: int) -> np.ndarray:
        if self._local is None:
            self._local = LocalTarget(self.settings.model, Platform(dtype="fp32"))
        answer = self._local.answer(self.fresh, np.array([probe_id], dtype=np.int32))
        return answer.as_float32()[0]

    def _precision(self) -> PrecisionReading | None:
        rows = [r.values for r in self.records if r.complete and r.tier == self.tier]
        if self.tier not in (Tier.TOPK20, Tier.TOPK5) or not rows:
            return None
        assert self.tier is not None
        return read_precision(rows, self.tier.value)

    def run(self) -> AuditReport:
        started = time.perf_counter()
        stop, reason = StopReason.BUDGET, ""
        order = self.rng.permutation(FRESH_PROBES)
        try:
            for probe in (int(p) for p in order):
                if self.tier is None:
                    self.tier, answers = self.target.probe_tier(self.fresh, probe, self.settings.max_tier)
                else:
                    answers = self.target.ask(self.fresh, probe, self.tier)
                references = [self._own_logits(probe)] if self.tier is not Tier.TEXT else []
                self.readings.append(read_answer(answers.ids[0], references))
                wrong = wrong_model_reason(self.readings)
                complete = bool(answers.complete[0])
                self._keep(
                    QueryRecord(
                        index=len(self.records),
                        probe_set=self.fresh.version,
                        probe_id=probe,
                        tier=self.tier,
                        complete=complete,
                        ids=[int(i) for i in answers.ids[0]],
                        values=[float(v) for v in answers.values[0]] if self.tier is not Tier.TEXT else [],
                        queries_so_far=self.budget.queries,
                        note=wrong or ("" if complete else incomplete_note(answers.ids[0])),
                    )
                )
                if wrong is not None:
                    stop, reason = StopReason.WRONG_MODEL, wrong
                    break
                if self.tier in (Tier.TOP1, Tier.TEXT):
                    stop, reason = StopReason.NO_SPLITTING_PROBE, f"the {self.tier.value} tier shows no logit format"
                    break
                reading = self._precision()
                if reading is not None and reading.answers_used >= MIN_ANSWERS:
                    if max(reading.posterior.values(), default=0.0) >= CONFIDENCE:
                        stop = StopReason.CONFIDENT
                        break
        except BudgetExhausted:
            stop = StopReason.BUDGET
        except KeyboardInterrupt:  # Ctrl-C: the answers so far are in the report (and the evidence file)
            stop, reason = StopReason.INTERRUPTED, "interrupted by the user: the evidence so far is kept"
        except TargetError as exc:
            stop, reason = StopReason.TARGET_ERROR, str(exc)
        return self._report(stop, reason, time.perf_counter() - started)

    def _report(self, stop: StopReason, reason: str, seconds: float) -> AuditReport:
        settings = self.settings
        reading = self._precision() if stop is not StopReason.WRONG_MODEL else None
        heads: dict[str, HeadReport] = {}
        for head in ("hardware", "engine", "kernel", "full"):
            heads[head] = HeadReport(guesses=[], decided=False, basis="none", why=NO_REFERENCES_WHY)
        if stop is StopReason.WRONG_MODEL:
            status, verdict = MatchStatus.WRONG_MODEL, Verdict.WRONG_MODEL
            heads["dtype"] = HeadReport(guesses=[], decided=False, basis="none", why="unknown: wrong model")
        else:
            status = MatchStatus.NO_EVIDENCE
            heads["dtype"] = dtype_head(reading)
            verdict = Verdict.IDENTIFIED if heads["dtype"].decided and not settings.claim else Verdict.INCONCLUSIVE
        for head, claimed in settings.claim.items():
            report = heads.get(head)
            if report is None:
                continue
            report.claimed = claimed
            if report.decided and report.guesses:
                report.verdict = "consistent" if report.guesses[0].label == claimed else "inconsistent"
                report.why = f"the logits read {report.guesses[0].label!r}; the claim is {claimed!r}"
            else:
                report.verdict = "inconclusive"
        if settings.claim and status is not MatchStatus.WRONG_MODEL:
            head_verdicts = [heads[h].verdict for h in settings.claim if h in heads]
            verdict = (
                Verdict.INCONSISTENT
                if "inconsistent" in head_verdicts
                else Verdict.CONSISTENT
                if head_verdicts and all(v == "consistent" for v in head_verdicts)
                else Verdict.INCONCLUSIVE
            )
        if not reason:
            reason = {
                StopReason.CONFIDENT: "reference-free: the logits' number format is read with confidence",
                StopReason.BUDGET: "reference-free: the budget is spent",
            }.get(stop, "")
        precision = (
            LogitPrecision(
                verdict=reading.verdict,
                posterior={k: round(v, 4) for k, v in reading.posterior.items()},
                answers_used=reading.answers_used,
                reason=reading.reason,
            )
            if reading is not None
            else None
        )
        return AuditReport(
            **budget_fields(settings, self.budget),
            tier=self.tier,
            status=status,
            verdict=verdict,
            reason=reason,
            stop=stop,
            answers_used=sum(r.complete for r in self.records),
            match_score=0.0,
            threshold=0.0,
            heads=heads,
            logit_precision=precision,
            evidence=self.records,
            dataset="none: no references collected for this model",
            classifier="none: reference-free",
            seconds=round(seconds, 3),
        )


def dtype_head(reading: PrecisionReading | None) -> HeadReport:
    if reading is None:
        return HeadReport(guesses=[], decided=False, basis="none", why="unknown: no answer showed top-k logprobs")
    posterior = {k: v for k, v in reading.posterior.items() if k in DTYPE_READINGS}
    guesses = [Guess(label=k, probability=round(v, 4)) for k, v in sorted(posterior.items(), key=lambda kv: -kv[1])]
    decided = bool(guesses) and guesses[0].probability >= CONFIDENCE and reading.verdict in DTYPE_READINGS
    why = DTYPE_WHY if decided else f"undecided: {reading.reason or 'the logits fit no one format yet'}"
    return HeadReport(guesses=guesses[:3], decided=decided, basis="logit-precision", why=why)
