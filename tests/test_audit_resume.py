"""`run_audit(..., prior=...)`: an interrupted audit resumes from its stored answers.

The stored answers are replayed into the evidence, the queries they cost count against the budget,
their probes are never asked again, and a resumed audit ends as the uninterrupted one would.
"""

from __future__ import annotations

import re

import httpx
import pytest
from reproducing import serving_platform
from servers import serve_asgi

from hspi.audit import AuditSettings, QueryRecord, run_audit
from hspi.collector.target_server import create_target_app
from hspi.errors import ConfigError


@pytest.fixture(scope="module")
def target() -> str:
    """The reference LM on an fp32 platform whose answers here are a collected configuration's (measured)."""
    with serve_asgi(create_target_app("lm-small", serving_platform("lm-small"))) as url:
        yield url


def settings(url: str, **kwargs) -> AuditSettings:
    base = dict(
        endpoint=url,
        model="lm-small",
        claim={"dtype": "fp32"},
        budget_queries=8,
        seed=3,
        order="random",
        min_answers=50,
    )  # min_answers: spend the whole budget (with the default false-match bound, which a few answers cannot meet)
    base.update(kwargs)
    return AuditSettings(**base)


class Counting(httpx.HTTPTransport):
    """A real transport that counts the prompts it sends."""

    def __init__(self) -> None:
        super().__init__()
        self.prompts: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        import json

        self.prompts.append(json.loads(request.content)["prompt"])
        return super().handle_request(request)


def test_resumed_audit_keeps_prior_answers_spends_the_rest_and_never_reasks(target: str) -> None:
    first = run_audit(settings(target, budget_queries=3))
    assert first.stop == "budget" and len(first.evidence) == first.queries == 3
    seen: list[tuple[int, bool]] = []
    counting = Counting()
    resumed = run_audit(
        settings(target, budget_queries=8),
        prior=first.evidence,
        transport=counting,
        on_query=lambda r, _: seen.append((r.index, r.complete)),
    )
    assert resumed.stop == "budget" and resumed.queries == 8 and len(counting.prompts) == 5
    assert [r.probe_id for r in resumed.evidence[:3]] == [r.probe_id for r in first.evidence]
    assert [r.values for r in resumed.evidence[:3]] == [r.values for r in first.evidence]
    probes = [r.probe_id for r in resumed.evidence]
    assert len(set(probes)) == len(probes) == 8  # no probe asked twice
    assert [i for i, _ in seen] == list(range(8))  # replayed answers reach on_query too, in order
    assert [r.queries_so_far for r in resumed.evidence[3:]] == [4, 5, 6, 7, 8]
    assert resumed.answers_used == 8 and resumed.tier == first.tier
    assert resumed.heads["dtype"].guesses[0].label == "fp32"


def test_resumed_audit_that_is_already_decided_asks_nothing(target: str) -> None:
    decided = run_audit(settings(target, order="split", min_answers=2, budget_queries=128))
    # the claimed head (dtype) is decided by its own bound; the class cannot be bounded within 128 queries
    assert decided.stop == "bound-out-of-reach" and decided.verdict == "consistent"
    counting = Counting()
    again = run_audit(
        settings(target, order="split", min_answers=2, budget_queries=128), prior=decided.evidence, transport=counting
    )
    assert counting.prompts == [] and again.stop == decided.stop and again.verdict == decided.verdict
    assert again.queries == decided.queries and again.heads == decided.heads


def test_a_match_the_budget_cannot_bound_stops_once_the_claimed_heads_are_decided(target: str) -> None:
    """The default false-match bound: a leader that fits but whose class cannot be bounded within the budget
    ends the audit as soon as the claimed heads are decided by their own bounds (dtype: no two collected
    dtypes answer alike), instead of spending the rest; the class and the other heads stay undecided."""
    bounded = run_audit(settings(target, order="split", min_answers=2, budget_queries=256))
    assert bounded.stop == "confident" and bounded.evidence_bound is not None and bounded.evidence_bound.met
    assert bounded.verdict == "consistent" and bounded.matched_class is not None
    short = run_audit(settings(target, order="split", min_answers=2, budget_queries=8))
    assert short.stop == "bound-out-of-reach" and short.queries < 8
    assert short.evidence_bound is not None and not short.evidence_bound.met
    assert short.evidence_bound.heads["dtype"].met and short.evidence_bound.heads["dtype"].value == "fp32"
    assert short.verdict == "consistent" and short.heads["dtype"].decided and short.matched_class is None
    assert short.heads["hardware"].guesses and not short.heads["hardware"].decided
    suggested = int(re.search(r"--budget (\d+)", short.reason).group(1))  # type: ignore[union-attr]
    # optimistic (the best probes, every answer agreeing): never more than the audit that got there needed
    assert short.queries < suggested <= bounded.queries
    # a claim on a head whose values come as close as ISA variants do cannot be confirmed within 8 queries
    hardware = run_audit(
        settings(
            target,
            order="split",
            min_answers=2,
            budget_queries=8,
            claim={"hardware": bounded.heads["hardware"].guesses[0].label},
        )
    )
    assert hardware.verdict == "inconclusive" and hardware.heads["hardware"].verdict == "inconclusive"


def test_replay_can_be_stopped_from_on_query_and_keeps_the_evidence(target: str) -> None:
    first = run_audit(settings(target, budget_queries=3))
    counting = Counting()

    def stop_at_last(record: QueryRecord, _: float) -> None:
        if record.index == len(first.evidence) - 1:
            raise KeyboardInterrupt

    report = run_audit(settings(target), prior=first.evidence, transport=counting, on_query=stop_at_last)
    assert counting.prompts == [] and report.stop == "interrupted" and report.queries == 3
    assert len(report.evidence) == 3 and report.verdict != "consistent"  # an audit cut short confirms nothing


def test_prior_answers_from_another_probe_set_are_refused(target: str) -> None:
    first = run_audit(settings(target, budget_queries=1))
    foreign = [first.evidence[0].model_copy(update={"probe_set": "lm-small/v0/pool"})]
    with pytest.raises(ConfigError, match="cannot resume"):
        run_audit(settings(target), prior=foreign)
