"""The false-match bound (audit.decision): a_p from the known classes, the e-process, Ville's inequality."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hspi.audit.decision import (
    MatchBound,
    agreement_rates,
    answers_to_bound,
    answers_to_decide,
    candidate_log_evalues,
    cell,
    closest_pair_rate,
    decide,
    decide_heads,
    head_closeness,
    level_rates,
    neighbour_indices,
    twin_levels,
)
from hspi.classifier.sequential import same_answers


def signatures_with_twins() -> np.ndarray:
    """Four candidates on six probes: 0 and 1 near twins (part on probe 5), 2 and 3 far from both."""
    return np.array(
        [
            [1, 2, 3, 4, 5, 6],
            [1, 2, 3, 4, 5, 7],
            [9, 9, 3, 9, 9, 9],
            [8, 8, 8, 8, 8, 8],
        ]
    )


def test_levels_count_the_nearest_neighbours_that_agree() -> None:
    same = same_answers(signatures_with_twins())
    levels = twin_levels(same, 1, twin_agreement=0.0)[1]
    assert list(levels[0]) == [1, 1, 1, 1, 1, 0]  # its nearest, 1, parts on probe 5 only
    assert list(twin_levels(same, 0, twin_agreement=0.0)[1][0]) == [0] * 6


def test_only_near_twins_count_as_neighbours() -> None:
    """A class whose nearest others are far has no near twins: its levels say nothing about where an
    unseen twin would part, so they are all 0 in the cell for n = 0."""
    same = same_answers(signatures_with_twins())
    twins, levels = twin_levels(same, 2, twin_agreement=0.5)
    assert list(twins) == [1, 1, 0, 0]
    assert list(levels[0]) == [1, 1, 1, 1, 1, 0] and list(levels[2]) == [0] * 6
    assert [int(cell(n, lv)) for n, lv in ((0, 0), (1, 0), (2, 1), (1, 1), (3, 3))] == [0, 1, 2, 3, 3]


def test_level_rates_are_what_left_out_twins_did_and_the_closest_pair_elsewhere() -> None:
    """0 and 1 are twins (5 of 6 probes alike).  Leaving 0 out, 1 has no near twin left (n = 0), and 0
    agrees with it on 5 of 6 probes; the same the other way: cell (0, 0) tallies 10 of 12.  The prior of
    every cell is the closest pair's rate, (5 + 1) / (6 + 2); a cell nothing calibrates keeps it."""
    same = same_answers(signatures_with_twins())
    bound = MatchBound(neighbours=1, twin_agreement=0.5)
    prior = (5 + 1) / (6 + 2)
    assert closest_pair_rate(same, bound) == pytest.approx(prior)
    rates = level_rates(same, bound)
    assert rates[cell(0, 0)] == pytest.approx((10 + 2 * prior) / (12 + 2))
    assert rates[1:] == pytest.approx(np.full(3, prior))  # no left-out twin kept a near twin of its own
    full = agreement_rates(same, bound)
    assert full.shape == (4, 6) and ((full > 0) & (full < 1)).all()
    # the classes far from every other (2, 3) are no longer the easiest to match: n = 0, the calibrated cell
    assert full[3] == pytest.approx(np.full(6, rates[cell(0, 0)]))


def test_a_lone_class_is_as_hard_to_bound_as_the_closest_known_pair_is_close() -> None:
    """The flaw this guards against: a class no other class resembles got the smallest a_p (its
    neighbours 'part' everywhere) and was matched in a few answers, while a real unseen twin of it
    (another vendor's fp16, 98 % alike) answered those probes like it."""
    sig = np.array([[1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 3, 4, 5, 6, 7, 9], [0, 0, 0, 0, 0, 0, 0, 0]])
    rates = agreement_rates(same_answers(sig), MatchBound(neighbours=2))
    assert rates[2].min() >= rates[0].min()


def test_without_near_twins_the_rates_are_the_closest_pair_prior() -> None:
    same = same_answers(np.arange(12).reshape(3, 4))  # no two classes ever agree
    assert agreement_rates(same, MatchBound()) == pytest.approx(np.full((3, 4), 1 / 6))


def test_neighbours_are_the_closest_classes_and_never_the_candidate() -> None:
    agreement = same_answers(signatures_with_twins()).mean(axis=2)
    assert list(neighbour_indices(agreement, 0, 2)) == [1, 2]
    assert 3 not in neighbour_indices(agreement, 3, 3)


def test_a_parting_answer_zeroes_the_candidate() -> None:
    sig = signatures_with_twins()
    rates = agreement_rates(same_answers(sig), MatchBound())
    rows = np.array([5, 0])
    agree = sig[:, rows].T == np.array([6, 1])[:, None]  # candidate 0's answers (what ReferenceBook.fits reads)
    log_e = candidate_log_evalues(rates, rows, agree)
    assert np.isfinite(log_e[0]) and log_e[0] > 0
    assert log_e[1] == -np.inf  # 1 answers 7 on probe 5
    assert log_e[2] == -np.inf and log_e[3] == -np.inf


def test_decide_needs_the_mixture_to_reach_one_over_alpha() -> None:
    n_pool, n_candidates = 40, 4
    rates = np.full((n_candidates, n_pool), 0.2)
    bound = MatchBound(alpha=0.01)
    # one candidate agreeing: E = 5^n / 4, so n = 4 gives 156 >= 100 and n = 3 gives 31 < 100
    for n, met in ((3, False), (4, True)):
        agree = np.zeros((n, n_candidates), dtype=bool)
        agree[:, 2] = True
        reading = decide(rates, np.arange(n), agree, bound)
        assert reading.met is met and reading.leader == 2
        assert reading.log_evalue == pytest.approx(n * math.log(5) - math.log(4))
    none = decide(rates, np.arange(3), np.zeros((3, n_candidates), dtype=bool), bound)
    assert not none.met and none.log_evalue is None and none.leader == -1
    assert not decide(rates, np.arange(0), np.zeros((0, n_candidates), dtype=bool), bound).met


def test_bad_settings_are_refused() -> None:
    for bad in ({"alpha": 0.0}, {"alpha": 1.0}, {"prior_agree": 0.0}, {"neighbours": -1}):
        with pytest.raises(ValueError):
            MatchBound(**bad)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), alpha=st.sampled_from([0.05, 0.1, 0.2]))
def test_ville_bounds_the_false_match_rate_under_the_null(seed: int, alpha: float) -> None:
    """An unseen platform that agrees with the candidate on probe p with probability exactly a_p
    (independently, the worst case H0 allows) reaches 1/α at any time with frequency <= α."""
    rng = np.random.default_rng(seed)
    n_pool, runs = 30, 4000
    rates = rng.uniform(0.2, 0.95, size=(1, n_pool))
    agree = rng.random((runs, n_pool)) < rates[0]
    # the running e-value of each run; it stays 0 after the first parting
    log_e = np.cumsum(np.where(agree, -np.log(rates[0]), -np.inf), axis=1)
    crossed = (log_e >= math.log(1 / alpha)).any(axis=1).mean()
    # Ville: P <= alpha; 4000 runs give a binomial sd of at most 0.0064
    assert crossed <= alpha + 4 * math.sqrt(alpha * (1 - alpha) / runs)


@settings(max_examples=30, deadline=None)
@given(
    sig=st.lists(st.lists(st.integers(0, 2), min_size=8, max_size=8), min_size=2, max_size=5),
    k=st.integers(0, 4),
)
def test_rates_are_probabilities_off_0_and_1_and_grow_with_the_level(sig: list[list[int]], k: int) -> None:
    bound = MatchBound(neighbours=k)
    same = same_answers(np.array(sig))
    rates = agreement_rates(same, bound)
    assert ((rates > 0) & (rates < 1)).all()
    levels = twin_levels(same, min(k, len(sig) - 1), bound.twin_agreement)[1]
    for c in range(len(sig)):  # a probe where more near twins agree never gets a lower a_p
        order = np.argsort(levels[c], kind="stable")
        assert (np.diff(rates[c][order]) >= -1e-12).all()


def test_answers_to_bound_is_the_fewest_that_could_reach_it_and_none_when_no_probes_can() -> None:
    rates = np.array([[0.5, 0.5, 0.25, 0.9], [0.5, 0.5, 0.5, 0.5]])  # two candidates, four pool probes
    bound = MatchBound(alpha=0.2)  # 1/α = 5: the mixture (1/2)(E_0 + E_1) must reach it
    rows, agree = np.array([0]), np.array([[True, False]])  # probe 0 answered: candidate 1 parted
    log_e = candidate_log_evalues(rates, rows, agree)
    reading = decide(rates, rows, agree, bound)
    assert not reading.met and math.isclose(float(log_e[0]), math.log(2))
    # candidate 0 alone: E_0 = 2 now, needs 10; its best unused probes give ×4 (probe 2), then ×2 (probe 1)
    assert answers_to_bound(rates, reading, np.array([1, 2, 3]), log_e) == 2
    assert answers_to_bound(rates, reading, np.array([3]), log_e) is None  # ×1.11 cannot reach ×5
    assert answers_to_bound(rates, reading, np.array([], dtype=np.int64), log_e) is None
    parted = candidate_log_evalues(rates, rows, np.array([[False, False]]))
    assert (
        answers_to_bound(rates, decide(rates, rows, np.array([[False, False]]), bound), np.array([1]), parted) is None
    )


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(0.05, 0.95), min_size=3, max_size=12),
    st.integers(0, 2),
    st.floats(0.001, 0.2),
)
def test_answers_to_bound_is_optimistic_never_stopping_an_audit_that_could_still_reach_it(
    rates: list[float], answered: int, alpha: float
) -> None:
    """Whatever the next answers are (each agreeing with the one candidate), taking the m best unused probes
    reaches the bound exactly when m >= answers_to_bound."""
    a = np.array([rates])  # one candidate
    bound = MatchBound(alpha=alpha)
    rows = np.arange(answered)
    agree = np.ones((answered, 1), dtype=bool)
    reading = decide(a, rows, agree, bound)
    free = np.arange(answered, len(rates))
    needed = answers_to_bound(a, reading, free, candidate_log_evalues(a, rows, agree))
    best = free[np.argsort(a[0, free])]  # lowest a_p first: the largest gains
    for m in range(len(free) + 1):
        asked = np.r_[rows, best[:m]].astype(np.int64)
        met = decide(a, asked, np.ones((len(asked), 1), dtype=bool), bound).met
        assert met == (needed is not None and m >= needed)


def test_head_closeness_is_the_closest_pair_with_different_values() -> None:
    sig = signatures_with_twins()  # 0 ~ 1 (5/6), 2 ~ 0 and 1 (1/6)
    same = same_answers(sig)
    bound = MatchBound()
    # dtype: 0 and 1 share a value, so the closest pair with different ones agrees on 1 of 6 probes
    assert head_closeness(same, ["fp32", "fp32", "bf16", "fp16"], bound) == pytest.approx((1 + 1) / (6 + 2))
    # hardware: 0 and 1 differ, 5 of 6 alike
    assert head_closeness(same, ["a", "b", "a", "a"], bound) == pytest.approx((5 + 1) / (6 + 2))
    assert head_closeness(same, ["x"] * 4, bound) == pytest.approx(0.5)


def test_a_head_is_decided_once_its_value_alone_reaches_one_over_alpha() -> None:
    labels = [{"dtype": "fp32"}, {"dtype": "fp32"}, {"dtype": "bf16"}, {"dtype": "fp16"}]
    bound = MatchBound(alpha=0.01)
    b = 0.1
    # candidates 0 and 1 (fp32) fit every answer: E_fp32 = (2/4) * 10^m, so m = 3 reaches 100 and m = 2 does not
    for m, met in ((2, False), (3, True)):
        agree = np.zeros((m, 4), dtype=bool)
        agree[:, :2] = True
        reading = decide_heads(agree, labels, {"dtype": b}, bound)["dtype"]
        assert reading.value == "fp32" and reading.met is met
        assert reading.log_evalue == pytest.approx(math.log(0.5) + m * math.log(10))
    reading = decide_heads(np.ones((2, 4), dtype=bool) & [True, True, False, False], labels, {"dtype": b}, bound)
    assert answers_to_decide(reading["dtype"], bound) == 1
    # four heads share α: each needs E >= 4/α = 400; with b = 0.2, E = 0.5 * 5^m reaches 100 at m = 4, 400 at m = 5
    four = [{h: lab["dtype"] for h in ("dtype", "engine", "hardware", "kernel")} for lab in labels]
    rates = dict.fromkeys(four[0], 0.2)
    for m, alone, shared in ((4, True, False), (5, True, True)):
        agree = np.zeros((m, 4), dtype=bool)
        agree[:, :2] = True
        assert decide_heads(agree, labels, {"dtype": 0.2}, bound)["dtype"].met is alone
        assert decide_heads(agree, four, rates, bound)["dtype"].met is shared
    parted = decide_heads(np.zeros((1, 4), dtype=bool), labels, {"dtype": b}, bound)["dtype"]
    assert parted.value is None and not parted.met and answers_to_decide(parted, bound) is None


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), alpha=st.sampled_from([0.05, 0.1, 0.2]))
def test_a_wrong_head_value_is_decided_at_most_alpha_of_the_time(seed: int, alpha: float) -> None:
    """An unseen bf16 platform that agrees with each fp32 candidate with probability exactly b on every
    probe (the worst H0 allows) gets dtype=fp32 decided with frequency <= α at any stopping time."""
    rng = np.random.default_rng(seed)
    labels = [{"dtype": "fp32"}, {"dtype": "fp32"}, {"dtype": "bf16"}]
    b, runs, answers = float(rng.uniform(0.2, 0.9)), 2000, 12
    bound = MatchBound(alpha=alpha)
    wrong = 0
    for _ in range(runs):
        agree = np.ones((answers, 3), dtype=bool)
        agree[:, :2] = rng.random((answers, 2)) < b
        fp32 = [decide_heads(agree[:m], labels, {"dtype": b}, bound)["dtype"] for m in range(1, answers + 1)]
        wrong += any(r.met and r.value == "fp32" for r in fp32)
    assert wrong / runs <= alpha + 4 * math.sqrt(alpha * (1 - alpha) / runs)
