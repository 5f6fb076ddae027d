"""Pure parts of the audit: claims, the sequential evidence and probe choice, budget decisions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hspi.audit import AuditReport, QueryRecord
from hspi.audit.claims import head_verdict, label_matches, overall_verdict, parse_claim
from hspi.audit.endpoint_evaluation import decision_at
from hspi.classifier.reference import ReferenceMatcher
from hspi.classifier.sequential import (
    SETTLED_BELOW,
    ReferenceBook,
    ReferenceEvidence,
    answer_signatures,
    same_answers,
    split_scores,
)
from hspi.errors import ConfigError
from hspi.features.relative import relative_features
from hspi.features.tiers import tier_view


def test_parse_claim_splits_pairs_and_keeps_kernel_commas() -> None:
    assert parse_claim("dtype=fp32,hardware=x86-amx") == {"dtype": "fp32", "hardware": "x86-amx"}
    assert parse_claim("kernel=attn=sdpa,bs=8,dtype=bf16") == {"kernel": "attn=sdpa,bs=8", "dtype": "bf16"}
    assert parse_claim(None) == {}


@pytest.mark.parametrize("bad", ["dtype", "gpu=h100", "dtype=", "=fp32"])
def test_parse_claim_names_the_bad_part(bad: str) -> None:
    with pytest.raises(ConfigError, match="claim"):
        parse_claim(bad)


def test_label_matching() -> None:
    assert label_matches("x86-avx2", "amd-x86-avx2")
    assert not label_matches("x86-avx2", "amd-x86-avx512")
    assert label_matches("bs=8", "attn=sdpa,bs=8,mm=highest")
    assert label_matches("fp32", "bf16|fp32")
    assert not label_matches("fp16", "bf16|fp32")


def test_head_verdicts() -> None:
    values = ["bf16", "fp32"]
    assert head_verdict("fp32", values, [0.01, 0.99])[0] == "consistent"
    assert head_verdict("fp32", values, [0.99, 0.01])[0] == "inconsistent"
    assert head_verdict("fp32", values, [0.5, 0.5])[0] == "inconclusive"
    verdict, p, why = head_verdict("x86-amx", ["amd-x86-avx2"], [1.0])
    assert verdict == "inconclusive" and p is None and "no reference" in why
    assert overall_verdict({"dtype": "consistent", "hardware": "inconsistent"}) == "inconsistent"
    assert overall_verdict({"dtype": "consistent"}) == "consistent"
    assert overall_verdict({"dtype": "consistent", "hardware": "inconclusive"}) == "inconclusive"


def _toy_candidates(rng: np.random.Generator) -> list[np.ndarray]:
    """Three candidates: B differs from A on probes 0-9 by one ulp, C differs everywhere by more."""
    base = rng.standard_normal((60, 32)).astype(np.float32) * 3
    b = base.copy()
    b[:10] = np.nextafter(b[:10], np.float32(np.inf))
    c = base + np.float32(0.01)
    return [base, b, c]


def _fitted_matcher(refs: list[np.ndarray], labels: list[dict[str, str]], trees: int = 20) -> ReferenceMatcher:
    X, same = [], {h: [] for h in labels[0]}
    for t, target in enumerate(refs):
        view = tier_view(target, "logits")
        feats = np.stack([relative_features(view, r) for r in refs], axis=1)
        X.append(feats.reshape(-1, feats.shape[2]))
        for h in same:
            same[h].append(np.tile([labels[t][h] == lab[h] for lab in labels], len(target)))
    return ReferenceMatcher(heads=tuple(same), n_estimators=trees).fit(
        np.concatenate(X), np.column_stack([np.concatenate(v) for v in same.values()])
    )


def test_signatures_equal_exactly_when_rows_are_bit_identical() -> None:
    refs = _toy_candidates(np.random.default_rng(0))
    a, b = (answer_signatures(tier_view(r, "topk5")) for r in refs[:2])
    assert (a[10:] == b[10:]).all()
    assert (a[:10] != b[:10]).sum() >= 1  # a one-ulp change shows in the shown values at least somewhere


def test_evidence_picks_splitting_probes_and_finds_the_true_candidate() -> None:
    rng = np.random.default_rng(1)
    refs = _toy_candidates(rng)
    labels = [{"dtype": d, "full": f} for d, f in (("fp32", "A"), ("fp32", "B"), ("bf16", "C"))]
    matcher = _fitted_matcher(refs, labels)
    book = ReferenceBook(refs, labels, "logits", np.arange(60))
    evidence = ReferenceEvidence(matcher, book)
    assert evidence.posterior() == pytest.approx(np.full(3, 1 / 3))
    # with A and B still likely, only probes 0-9 split them
    evidence.update(30, tier_view(refs[1][30:31], "logits"))  # the target is B
    scores = evidence.split_scores()
    assert scores[30] == 0.0
    probe = evidence.next_probe(rng)
    assert probe is not None and probe < 10
    evidence.update(probe, tier_view(refs[1][probe : probe + 1], "logits"))
    post = evidence.posterior()
    assert int(np.argmax(post)) == 1 and post[1] > 0.9
    heads = evidence.head_posteriors()
    values, p = heads["dtype"]
    assert values[int(np.argmax(p))] == "fp32"


def test_next_probe_is_none_when_nothing_splits() -> None:
    refs = _toy_candidates(np.random.default_rng(2))
    same = [refs[0], refs[0].copy()]
    labels = [{"full": "A"}, {"full": "B"}]
    book = ReferenceBook(same, labels, "logits", np.arange(60))
    evidence = ReferenceEvidence(_fitted_matcher(refs[:2], labels), book)
    assert evidence.next_probe(np.random.default_rng(0)) is None


def test_decision_at_budget_uses_the_last_decision_within_it() -> None:
    def rec(i: int, q: int, guess: str, complete: bool = True) -> QueryRecord:
        return QueryRecord(
            index=i,
            probe_set="p",
            probe_id=i,
            tier="topk20",
            complete=complete,
            queries_so_far=q,
            leading={"full": guess} if complete else {},
        )

    report = AuditReport(
        endpoint="x",
        model="lm-small",
        api="completions",
        tier="topk20",
        status="match",
        verdict=None,
        reason="",
        stop="confident",
        queries=5,
        tokens=85,
        budget_queries=64,
        budget_tokens=1088,
        answers_used=3,
        match_score=1,
        threshold=0.5,
        claim={},
        heads={},
        evidence=[rec(0, 2, "A"), rec(1, 3, "B", complete=False), rec(2, 5, "C")],
        dataset="d",
        classifier="c",
        seconds=1,
    )
    assert decision_at(report, 1) == {}
    assert decision_at(report, 4) == {"full": "A"}
    assert decision_at(report, 64) == {"full": "C"}


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, 3), min_size=5, max_size=5), min_size=1, max_size=6),
    st.lists(st.floats(0.01, 1.0), min_size=6, max_size=6),
)
def test_split_scores_are_the_chance_two_draws_answer_differently(
    answers: list[list[int]], weights: list[float]
) -> None:
    signatures = np.asarray(answers, dtype=np.int64)  # (C, n): equal ints, equal answers
    posterior = np.asarray(weights[: len(answers)]) / sum(weights[: len(answers)])
    brute = [
        sum(
            posterior[i] * posterior[j]
            for i in range(len(answers))
            for j in range(i + 1, len(answers))
            if signatures[i, n] != signatures[j, n]
        )
        for n in range(signatures.shape[1])
    ]
    assert split_scores(same_answers(signatures), posterior) == pytest.approx(brute, abs=1e-12)


def test_fragility_is_where_close_neighbours_part() -> None:
    refs = _toy_candidates(np.random.default_rng(3))
    book = ReferenceBook(refs, [{"full": x} for x in "ABC"], "logits", np.arange(60))
    fragility = book.fragility(0)
    # B agrees with A on 50 of 60 probes and parts on 0-9 (surprise 60/10); C parts everywhere (1 each)
    assert fragility[:10] == pytest.approx(np.full(10, 6.0 + 1.0))
    assert fragility[10:] == pytest.approx(np.ones(50))


def test_fragility_ranks_a_close_twin_parting_above_a_group_parting() -> None:
    # A's twin B parts on probe 0 only; the group C, D (A's siblings, 7 of 10 alike) parts on probes 1-3
    a = np.random.default_rng(5).standard_normal((10, 8)).astype(np.float32)
    b, group = a.copy(), a.copy()
    b[0] += np.float32(0.25)
    group[1:4] += np.float32(0.25)
    book = ReferenceBook([a, b, group, group.copy()], [{"full": x} for x in "ABCD"], "logits", np.arange(10))
    fragility = book.fragility(0)
    # B's parting (1/0.1) outweighs C's and D's together (2 x 1/0.3); B parts from C and D on both
    assert fragility[0] > fragility[1] == fragility[3] > fragility[4] == 0


def test_fragility_counts_where_the_leaders_close_neighbours_part_from_each_other() -> None:
    # B and C are A's close neighbours (each parts from it on one probe: 1 and 2); on probe 0 they part
    # from each other while A answers like B: rounding is fragile there for the whole neighbourhood
    a = np.random.default_rng(6).standard_normal((10, 8)).astype(np.float32)
    b, c, far = a.copy(), a.copy(), a + np.float32(1.0)
    c[0] += np.float32(0.25)
    b[1] += np.float32(0.25)
    c[2] += np.float32(0.25)
    book = ReferenceBook([a, b, c, far], [{"full": x} for x in "ABCD"], "logits", np.arange(10))
    fragility = book.fragility(0)
    own = np.array([5.0, 10.0, 5.0] + [0.0] * 7) + 1.0  # C parts on 0 and 2 (a = 0.8), B on 1 (a = 0.9); D everywhere
    neighbours = np.array([0.9 * 0.8 / (1 - 0.7), 0.9 * 0.8 / (1 - 0.7), 0.9 * 0.8 / (1 - 0.7)] + [0.0] * 7)
    assert fragility == pytest.approx(own + neighbours)
    assert fragility[0] > fragility[3]  # A itself answers probe 0 like B, yet its neighbourhood is fragile there


def test_settled_candidates_below_confidence_end_the_audit() -> None:
    rng = np.random.default_rng(8)
    a = rng.standard_normal((60, 32)).astype(np.float32) * 3
    b = a.copy()
    b[0] += np.float32(0.01)  # B parts from A on probe 0 only, and that answer was lost
    refs = [a, b, a + np.float32(0.5)]
    labels = [{"full": x} for x in "ABC"]
    evidence = ReferenceEvidence(
        _fitted_matcher(refs, labels, trees=120), ReferenceBook(refs, labels, "logits", np.arange(60))
    )
    evidence.asked.add(0)
    for probe in range(1, 7):
        evidence.update(probe, tier_view(a[probe : probe + 1], "logits"))
    assert evidence.posterior()[:2] == pytest.approx([0.5, 0.5], abs=1e-6)  # A and B answer every other probe alike
    assert evidence.next_probe(rng, confidence=0.99) is None  # no answer can make either certain
    assert evidence.next_probe(rng) is not None  # without a confidence to reach, it goes on verifying


def test_settled_evidence_verifies_the_leader_where_its_twin_parts() -> None:
    rng = np.random.default_rng(4)
    a = rng.standard_normal((60, 32)).astype(np.float32) * 3
    b = a.copy()
    b[:10] += np.float32(0.01)  # B, A's twin, parts from it on probes 0-9 only
    refs = [a, b, a + np.float32(0.5)]
    labels = [{"full": x} for x in "ABC"]
    book = ReferenceBook(refs, labels, "logits", np.arange(60))
    evidence = ReferenceEvidence(_fitted_matcher(refs, labels, trees=120), book)
    split = []  # the target is A: probes where B parts split them until B is ruled out
    while evidence.split_scores().max() > SETTLED_BELOW:
        probe = evidence.next_probe(rng)
        assert probe is not None and probe < 10
        split.append(probe)
        evidence.update(probe, tier_view(a[probe : probe + 1], "logits"))
    assert len(split) < 10 and evidence.posterior()[0] > 0.999
    verified = []
    for _ in range(10 - len(split)):  # nothing splits any more: verify A where B parts first
        verified.append(probe := evidence.next_probe(rng))
        evidence.update(probe, tier_view(a[probe : probe + 1], "logits"))
    assert verified and sorted(split + verified) == list(range(10))
    assert evidence.next_probe(rng) >= 10  # then on, where only the far candidate C parts


# -- honest heads and verdicts ------------------------------------------------------------------


def _posteriors() -> dict[str, tuple[list[str], np.ndarray]]:
    return {
        "dtype": (["bf16", "fp32"], np.array([0.999, 0.001])),
        "hardware": (["x86-avx2", "x86-avx512"], np.array([0.90, 0.10])),  # leading value below 0.95
        "engine": (["llama.cpp"], np.array([1.0])),  # one value in the whole dataset
    }


def test_heads_speak_only_where_the_evidence_decides() -> None:
    from hspi.audit.claims import head_reports

    claim = {"dtype": "fp32", "hardware": "x86-avx512", "engine": "llama.cpp"}
    heads, verdicts = head_reports(_posteriors(), claim)
    assert heads["dtype"].decided and verdicts["dtype"] == "inconsistent"
    # undecided: the guesses are shown, but a claim on it is never called inconsistent
    assert not heads["hardware"].decided and heads["hardware"].guesses and verdicts["hardware"] == "inconclusive"
    assert not heads["engine"].decided and "not measured here" in heads["engine"].why
    assert verdicts["engine"] == "inconclusive" and heads["engine"].guesses == []


def test_no_head_speaks_for_a_platform_never_collected() -> None:
    from hspi.audit.claims import head_reports

    heads, verdicts = head_reports(_posteriors(), {"dtype": "bf16"}, matched=False)
    assert all(not h.decided and h.guesses == [] for h in heads.values())
    assert verdicts == {"dtype": "inconclusive"}  # a true claim is not "inconsistent" either


def test_overall_verdicts_with_and_without_a_claim() -> None:
    from hspi.audit.claims import audit_verdict
    from hspi.terms import MatchStatus

    assert audit_verdict(MatchStatus.MATCH, {}, {}, cut_short=False) == "identified"
    assert audit_verdict(MatchStatus.MATCH, {}, {}, cut_short=False, settled=False) == "inconclusive"
    assert audit_verdict(MatchStatus.MATCH, {}, {}, cut_short=True) == "inconclusive"
    assert audit_verdict(MatchStatus.UNKNOWN, {}, {}, cut_short=False) == "unknown-platform"
    assert audit_verdict(MatchStatus.NO_EVIDENCE, {}, {}, cut_short=False) == "inconclusive"
    claim = {"dtype": "fp32"}
    assert audit_verdict(MatchStatus.MATCH, {"dtype": "consistent"}, claim, cut_short=False) == "consistent"
    assert audit_verdict(MatchStatus.MATCH, {"dtype": "consistent"}, claim, cut_short=True) == "inconclusive"
    assert audit_verdict(MatchStatus.UNKNOWN, {"dtype": "consistent"}, claim, cut_short=False) == "unknown-platform"


def test_exit_codes_follow_the_verdict() -> None:
    from hspi.cli.audit import EXIT_CODES, exit_code
    from hspi.terms import Verdict

    assert set(EXIT_CODES) == set(Verdict)  # every verdict has its documented code
    base = dict(
        endpoint="x", model="lm-small", api="completions", tier="topk20", reason="", queries=1, tokens=17,
        budget_queries=8, budget_tokens=136, answers_used=1, match_score=1, threshold=0.5, claim={}, heads={},
        evidence=[], dataset="d", classifier="c", seconds=1,
    )  # fmt: skip
    codes = {
        (status, verdict, stop): exit_code(AuditReport(status=status, verdict=verdict, stop=stop, **base))
        for status, verdict, stop in [
            ("match", "consistent", "confident"),
            ("match", "identified", "confident"),
            ("match", "inconsistent", "confident"),
            ("unknown", "unknown-platform", "no-match"),
            ("match", "inconclusive", "budget"),
            ("no-evidence", "inconclusive", "target-error"),
            ("match", "inconclusive", "interrupted"),
            ("unknown", "nondeterministic", "no-match"),
        ]
    }
    assert list(codes.values()) == [0, 0, 10, 11, 12, 5, 130, 14]


def test_chat_is_refused_before_sending_for_a_model_without_a_chat_template() -> None:
    from hspi.audit.engine import AuditSettings, audit_budget, open_target
    from hspi.errors import ConfigError

    settings = AuditSettings(endpoint="http://127.0.0.1:9/v1", model="lm-gpt2", api="chat")
    with pytest.raises(ConfigError, match="no chat template"):
        open_target(settings, audit_budget(settings))
