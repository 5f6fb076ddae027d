"""When an audit's answers fit nothing known, one prompt is asked again (audit.repeat_check).

An endpoint whose answers change from call to call ends `nondeterministic` and names no platform;
one that is merely never collected ends `unknown-platform` with its answers read as stable.  The
servers are real (`hspi target serve`'s app on loopback): a sampler that ignores the request's
temperature, and post-processed logits (divided by a temperature) that fit no collected class.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from reproducing import serving_platform
from servers import serve_asgi

from hspi.audit import AuditSettings, run_audit
from hspi.audit.determinism import VERDICTS
from hspi.audit.repeat_check import REPEATS, repeat_reading
from hspi.collector.target_server import create_target_app
from hspi.platform import Platform

# -- the reading (pure) -----------------------------------------------------------------------------


def answers(*rows: tuple[list[int], list[float]]) -> list[tuple[str, list[int], list[float]]]:
    return [(f"answer {i}", ids, values) for i, (ids, values) in enumerate(rows)]


def test_identical_answers_read_deterministic_and_all_distinct_read_nondeterministic() -> None:
    same = answers(*[([3, 1], [-0.5, -1.5])] * 4)
    assert repeat_reading(same, generated_first=False).verdict == "deterministic"
    distinct = answers(*[([3, 1], [-0.5 - i * 1e-7, -1.5]) for i in range(4)])
    reading = repeat_reading(distinct, generated_first=False)
    assert reading.verdict == "nondeterministic" and reading.evidence["answers"] == 4


def test_a_sampled_token_far_from_the_greedy_one_reads_nondeterministic_even_when_draws_repeat() -> None:
    # a sampler draws the top token twice (bit-identical) and others: the values repeat, the choice does not
    drawn = answers(([7], [-0.37]), ([7], [-0.37]), ([9], [-2.9]), ([7], [-0.37]))
    reading = repeat_reading(drawn, generated_first=True)
    assert reading.verdict == "nondeterministic" and "samples" in reading.reason
    # the same shapes as the best of top-k alternatives are code paths, not a sampler: grouped, not flagged
    assert repeat_reading(drawn, generated_first=False).verdict == "batch-variant"
    # a near tie flipping by rounding is not a sampler either
    tie = answers(([7], [-0.6931]), ([8], [-0.6932]), ([7], [-0.6931]))
    assert repeat_reading(tie, generated_first=True).verdict == "batch-variant"


def test_a_greedy_token_that_changes_where_every_class_has_a_clear_margin_is_a_sampler() -> None:
    draws = answers(([4], []), ([4], []), ([6], []), ([4], []))  # texts only: two groups
    assert repeat_reading(draws, generated_first=True).verdict == "batch-variant"
    clear = repeat_reading(draws, generated_first=True, margin=2.5)
    assert clear.verdict == "nondeterministic" and clear.evidence["margin"] == 2.5 and "samples" in clear.reason
    # a near tie can flip by rounding; and answers that agree say nothing about sampling
    assert repeat_reading(draws, generated_first=True, margin=0.01).verdict == "batch-variant"
    assert repeat_reading(answers(*[([4], [])] * 4), generated_first=True, margin=2.5).verdict == "unknown"


def test_greedy_texts_that_differ_prove_the_numbers_did() -> None:
    assert repeat_reading(answers(*[([i], []) for i in range(4)]), generated_first=True).verdict == "nondeterministic"
    assert repeat_reading(answers(([1], []), ([2], []), ([1], [])), generated_first=True).verdict == "batch-variant"
    agree = repeat_reading(answers(*[([1], [])] * 4), generated_first=True)
    assert agree.verdict == "unknown" and "text only" in agree.reason


answer = st.tuples(
    st.lists(st.integers(0, 3), min_size=1, max_size=3),
    st.lists(st.sampled_from([-0.5, -0.75, -3.0]), min_size=0, max_size=3),
).map(lambda t: (t[0], t[1][: len(t[0])] if len(t[1]) >= len(t[0]) else []))


@given(st.lists(answer, min_size=0, max_size=6), st.booleans(), st.randoms(use_true_random=False))
def test_the_reading_is_a_verdict_and_does_not_depend_on_the_order_of_the_answers(rows, generated_first, rng) -> None:
    reading = repeat_reading(answers(*rows), generated_first=generated_first)
    assert reading.verdict in VERDICTS and 0.0 <= reading.probability < 1.0
    shuffled = list(rows)
    rng.shuffle(shuffled)
    assert repeat_reading(answers(*shuffled), generated_first=generated_first).verdict == reading.verdict


# -- audits of real servers on loopback -------------------------------------------------------------


@pytest.fixture(scope="module")
def platform() -> Platform:
    """An fp32 platform whose answers here are a collected configuration's (measured)."""
    return serving_platform("lm-small")


def audit(url: str, tier: str, budget: int = 32, seed: int = 0, **kwargs):  # type: ignore[no-untyped-def]
    return run_audit(
        AuditSettings(endpoint=url, model="lm-small", max_tier=tier, budget_queries=budget, seed=seed, **kwargs)
    )


@pytest.mark.parametrize(("tier", "sharpen"), [("top1", 1.5), ("text", None)])
def test_a_sampler_that_ignores_the_requested_temperature_ends_nondeterministic(
    platform: Platform, tier: str, sharpen: float | None
) -> None:
    # at top1 the logits are post-processed too, so that their values fit no class whatever is drawn;
    # the sampler's generator is seeded so that the test's draws are the same on every run
    app = create_target_app(
        "lm-small", platform, sampling_temperature=1.0, temperature_before_softmax=sharpen, sampling_seed=11
    )
    with serve_asgi(app) as url:
        report = audit(url, tier)
    assert report.verdict == "nondeterministic" and report.stop == "no-match", report.reason
    assert report.determinism is not None and report.determinism.verdict == "nondeterministic"
    assert report.matched_class is None and all(not h.decided for h in report.heads.values())
    repeats = [r for r in report.evidence if r.repeat]
    assert len(repeats) == REPEATS and report.queries <= 32
    # one prompt asked again: one of the probes answered before
    assert len({r.probe_id for r in repeats}) == 1
    assert repeats[0].probe_id in {r.probe_id for r in report.evidence if not r.repeat}


def test_a_stable_platform_never_collected_stays_unknown_platform_with_its_answers_read_stable(
    platform: Platform,
) -> None:
    app = create_target_app("lm-small", platform, temperature_before_softmax=1.5)
    with serve_asgi(app) as url:
        report = audit(url, "topk20")
        assert report.verdict == "unknown-platform" and report.stop == "no-match"
        assert report.determinism is not None and report.determinism.verdict == "deterministic"
        scored = [r for r in report.evidence if not r.repeat]
        assert report.queries == len(scored) + REPEATS and report.answers_used == len(scored)

        # the budget holds: with none left after the answers, nothing more is asked, and the report says why
        tight = audit(url, "topk20", budget=len(scored))
        assert tight.queries == len(scored) and tight.verdict == "unknown-platform"
        assert tight.determinism is not None and tight.determinism.verdict == "unknown"
        assert "budget" in tight.determinism.reason

        # interrupted during the repeats, a resumed audit asks only the ones missing
        prior = report.evidence[: len(scored) + 1]
        resumed = run_audit(
            AuditSettings(endpoint=url, model="lm-small", max_tier="topk20", budget_queries=32, seed=0), prior=prior
        )
    assert sum(r.repeat for r in resumed.evidence) == REPEATS and resumed.queries == report.queries
    assert resumed.verdict == "unknown-platform" and resumed.determinism == report.determinism
