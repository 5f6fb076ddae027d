"""Unit tests for hspi.features: bit views, access tiers, relative and intrinsic features."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hspi.errors import ConfigError
from hspi.features.bits import low_bit_rates, ordered_int, significant_bits, ulp_distance
from hspi.features.intrinsic import INTRINSIC_FEATURES, intrinsic_features
from hspi.features.relative import RELATIVE_FEATURES, relative_features
from hspi.features.tiers import TIERS, TierView, check_tier, reference_values, tier_view, top_ids

finite_f32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
PROPERTY = settings(max_examples=100, deadline=None)


def bf16_round(values: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even float32 -> bfloat16 -> float32, independently of the code under test."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).to(torch.bfloat16).float().numpy()


def random_logits(n: int = 6, width: int = 64, seed: int = 0, scale: float = 3.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((n, width)) * scale).astype(np.float32)


def rel(features: np.ndarray, name: str) -> np.ndarray:
    return features[:, RELATIVE_FEATURES.index(name)]


def intr(features: np.ndarray, name: str) -> np.ndarray:
    return features[:, INTRINSIC_FEATURES.index(name)]


def f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def words(*ints: int) -> np.ndarray:
    return np.array(ints, dtype=np.uint32).view(np.float32)


# --- bits --------------------------------------------------------------------------------------


@PROPERTY
@given(finite_f32)
def test_adjacent_floats_are_one_ulp_apart(x):
    a = f32(x)
    with np.errstate(over="ignore"):  # the largest float's neighbour is inf: still one step away
        up = np.nextafter(a, np.float32(np.inf))
        down = np.nextafter(a, np.float32(-np.inf))
    assert ulp_distance(a, up)[0] == 1
    assert ulp_distance(down, a)[0] == 1


@PROPERTY
@given(finite_f32, finite_f32)
def test_ulp_distance_symmetric_and_zero_only_for_equal(x, y):
    a, b = f32(x), f32(y)
    assert ulp_distance(a, b)[0] == ulp_distance(b, a)[0]
    assert ulp_distance(a, a)[0] == 0
    assert (ulp_distance(a, b)[0] == 0) == (x == y)  # +0.0 and -0.0 are the same value, 0 apart


@PROPERTY
@given(finite_f32, finite_f32)
def test_ordered_int_preserves_order(x, y):
    oa, ob = ordered_int(f32(x))[0], ordered_int(f32(y))[0]
    assert np.sign(oa - ob) == np.sign(np.float64(x) - np.float64(y))


def test_ulp_distance_known_values():
    assert ordered_int(f32(0.0, -0.0)).tolist() == [0, 0]
    assert ulp_distance(f32(1.0), f32(2.0))[0] == 2**23
    assert ulp_distance(f32(-1.0), f32(1.0))[0] == 2 * 0x3F800000
    smallest = words(1)
    assert ulp_distance(-smallest, smallest)[0] == 2
    assert ordered_int(f32(1.0, -1.0)).dtype == np.int64


@PROPERTY
@given(st.integers(0, 0xFFFF))
def test_bf16_representable_values_use_at_most_8_bits(high):
    value = words(high << 16)
    assume(np.isfinite(value[0]))
    bits = significant_bits(value)[0]
    assert bits <= 8
    assert bits == 0 if value[0] == 0 else bits >= 1


@PROPERTY
@given(st.integers(0, 0xFFFF))
def test_fp16_representable_values_use_at_most_11_bits(word):
    value = np.array([word], dtype=np.uint16).view(np.float16).astype(np.float32)
    assume(np.isfinite(value[0]))
    assert significant_bits(value)[0] <= 11


@PROPERTY
@given(finite_f32)
def test_significant_bits_matches_trailing_zeros(x):
    a = f32(x)
    bits = significant_bits(a)[0]
    if x == 0:
        assert bits == 0
        return
    # truncating to `bits` mantissa bits leaves the value unchanged, to one fewer bit changes it
    word = int(a.view(np.uint32)[0])
    if (word >> 23) & 0xFF:  # normal numbers: 24-bit significand with the implicit one
        keep = bits - 1  # explicit mantissa bits kept
        assert keep >= 0
        mask = (0xFFFFFFFF << (23 - keep)) & 0xFFFFFFFF
        assert word & mask == word
        if keep > 0:
            assert word & ((mask << 1) & 0xFFFFFFFF) != word


def test_significant_bits_known_values():
    values = f32(0.0, -0.0, 1.0, -2.0, 1.5, 3.0, 1.25, 1.0 + 2.0**-23, 0.1)
    assert significant_bits(values).tolist() == [0, 0, 1, 1, 2, 2, 3, 24, 24]


def test_random_floats_mostly_need_more_than_16_bits():
    values = np.random.default_rng(1).standard_normal(1000).astype(np.float32)
    assert (significant_bits(values) > 16).mean() > 0.9
    assert (significant_bits(bf16_round(values)) <= 8).all()


def test_low_bit_rates_counts_each_low_bit():
    rows = np.stack(
        [words(0x3F800001, 0x3F800000, 0x3F800003, 0x3F808000), words(0x3F800000, 0x3F800000, 0x3F800000, 0x3F800000)]
    )
    rates = low_bit_rates(rows, 16)
    assert rates.shape == (2, 16)
    expected = np.zeros((2, 16))
    expected[0, 0] = 0.5  # bit 0 set in two of four words
    expected[0, 1] = 0.25  # bit 1 set in one
    expected[0, 15] = 0.25  # bit 15 set in one
    np.testing.assert_array_equal(rates, expected)
    assert low_bit_rates(rows, 4).shape == (2, 4)


def test_low_bit_rates_zero_for_bf16_values():
    values = bf16_round(random_logits())
    np.testing.assert_array_equal(low_bit_rates(values), 0.0)
    assert low_bit_rates(random_logits()).mean() > 0.4


# --- tiers -------------------------------------------------------------------------------------


def test_check_tier():
    for tier in ("logits", "topk20", "topk5", "top1"):
        assert check_tier(tier) == tier
    with pytest.raises(ConfigError, match="topk3"):
        check_tier("topk3")
    with pytest.raises(ConfigError, match="probs"):
        tier_view(random_logits(), "probs")


@pytest.mark.parametrize(("tier", "k"), [("logits", 64), ("topk20", 20), ("topk5", 5), ("top1", 1)])
def test_tier_view_shapes(tier, k):
    logits = random_logits(n=7, width=64)
    view = tier_view(logits, tier)
    assert view.tier == tier
    assert view.ids.shape == (7, k)
    assert view.values.shape == (7, k)
    assert view.values.dtype == np.float32


def test_tier_view_k_is_capped_by_width():
    view = tier_view(random_logits(n=2, width=3), "topk5")
    assert view.ids.shape == (2, 3)
    assert sorted(view.ids[0].tolist()) == [0, 1, 2]


def test_logits_tier_is_the_raw_vector():
    logits = random_logits(n=3, width=10)
    view = tier_view(logits, "logits")
    np.testing.assert_array_equal(view.values.view(np.uint32), logits.view(np.uint32))
    np.testing.assert_array_equal(view.ids, np.tile(np.arange(10), (3, 1)))


def test_ties_go_to_the_lower_id():
    logits = np.array([[1.0, 3.0, 3.0, 0.0, 3.0, -1.0]], dtype=np.float32)
    assert tier_view(logits, "topk5").ids[0].tolist() == [1, 2, 4, 0, 3]
    assert tier_view(logits, "top1").ids[0].tolist() == [1]
    flat = np.zeros((1, 30), dtype=np.float32)
    assert tier_view(flat, "topk20").ids[0].tolist() == list(range(20))


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(np.float32, st.tuples(st.integers(1, 4), st.integers(2, 40)), elements=st.floats(-30, 30, width=32)),
    st.sampled_from(["topk20", "topk5", "top1"]),
)
def test_topk_tiers_properties(logits, tier):
    view = tier_view(logits, tier)
    full = reference_values(logits, tier)
    k = min(TIERS[tier], logits.shape[1])
    assert view.ids.shape == (logits.shape[0], k)
    # values are the float32 log-probabilities at the ids, in descending order, ties to the lower id
    np.testing.assert_array_equal(view.values, np.take_along_axis(full, view.ids.astype(np.int64), axis=1))
    for row, ids, vals in zip(full, view.ids, view.values):
        assert len(set(ids.tolist())) == k
        expected = sorted(range(len(row)), key=lambda i: (-float(row[i]), i))[:k]
        assert ids.tolist() == expected
        assert all(vals[i] >= vals[i + 1] for i in range(k - 1))
    # float32 log-probabilities normalise: logsumexp ~ 0
    lse = np.logaddexp.reduce(full.astype(np.float64), axis=1)
    np.testing.assert_allclose(lse, 0.0, atol=1e-5)
    assert (full <= 0).all()


def test_reference_values():
    logits = random_logits(n=2, width=20)
    np.testing.assert_array_equal(reference_values(logits, "logits"), logits)
    logprobs = reference_values(logits, "topk5")
    assert logprobs.dtype == np.float32
    exact = logits.astype(np.float64) - np.logaddexp.reduce(logits.astype(np.float64), axis=1, keepdims=True)
    np.testing.assert_allclose(logprobs, exact, atol=2e-5)
    np.testing.assert_array_equal(reference_values(logits, "top1"), logprobs)


# --- relative features -------------------------------------------------------------------------


@pytest.mark.parametrize("tier", list(TIERS))
def test_identical_answer_is_exact(tier):
    logits = random_logits()
    features = relative_features(tier_view(logits, tier), reference_values(logits, tier))
    assert features.shape == (logits.shape[0], len(RELATIVE_FEATURES))
    for name in ("exact_share", "within_1ulp", "within_16ulp", "top1_same", "id_agree", "set_overlap"):
        np.testing.assert_array_equal(rel(features, name), 1.0, err_msg=name)
    for name in ("ulp_log_median", "ulp_log_mean", "ulp_log_max", "signed_diff_mean"):
        np.testing.assert_array_equal(rel(features, name), 0.0, err_msg=name)


@pytest.mark.parametrize("tier", list(TIERS))
def test_bf16_answer_against_fp32_reference_is_not_exact(tier):
    logits = random_logits(n=8, width=64)
    target = tier_view(bf16_round(logits), tier)
    features = relative_features(target, reference_values(logits, tier))
    assert rel(features, "exact_share").mean() < 1.0
    assert rel(features, "within_1ulp").mean() < 1.0
    assert rel(features, "ulp_log_max").max() > 4.0  # bf16 rounding moves values by many float32 ULPs


def test_one_ulp_nudge_on_logits_tier():
    logits = random_logits(n=4, width=16)
    nudged = np.nextafter(logits, np.float32(np.inf))
    features = relative_features(tier_view(nudged, "logits"), reference_values(logits, "logits"))
    np.testing.assert_array_equal(rel(features, "exact_share"), 0.0)
    np.testing.assert_array_equal(rel(features, "within_1ulp"), 1.0)
    np.testing.assert_array_equal(rel(features, "ulp_log_max"), 1.0)  # log2(1 + 1)
    assert (rel(features, "signed_diff_mean") > 0).all()
    np.testing.assert_array_equal(rel(features, "top1_same"), 1.0)


def test_ranking_disagreement_on_topk_tier():
    logits = np.array([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0, -1.0]], dtype=np.float32)
    swapped = logits[:, [1, 0, 2, 3, 4, 5, 6]]  # the target ranks id 1 first
    features = relative_features(tier_view(swapped, "topk5"), reference_values(logits, "topk5"))
    assert rel(features, "top1_same")[0] == 0.0
    assert rel(features, "id_agree")[0] == pytest.approx(3 / 5)
    assert rel(features, "set_overlap")[0] == 1.0
    shifted = logits[:, [5, 1, 2, 3, 4, 0, 6]]  # id 0 drops out of the target's top 5
    features = relative_features(tier_view(shifted, "topk5"), reference_values(logits, "topk5"))
    assert rel(features, "set_overlap")[0] == pytest.approx(4 / 5)


# --- intrinsic features ------------------------------------------------------------------------


def test_intrinsic_feature_names_are_unique():
    assert len(set(INTRINSIC_FEATURES)) == len(INTRINSIC_FEATURES)


@pytest.mark.parametrize("tier", list(TIERS))
def test_intrinsic_width(tier):
    logits = random_logits(n=5, width=40)
    assert intrinsic_features(tier_view(logits, tier)).shape == (5, len(INTRINSIC_FEATURES))
    full64 = reference_values(logits, tier).astype(np.float64)
    view = tier_view(logits, tier)
    at_ids = np.take_along_axis(full64, view.ids.astype(np.int64), axis=1)
    features = intrinsic_features(view, at_ids)
    assert features.shape == (5, len(INTRINSIC_FEATURES))
    assert np.isfinite(features).all()


def test_bf16_logits_have_at_most_8_significant_bits():
    logits = random_logits(n=6, width=64)
    bf16 = intrinsic_features(tier_view(bf16_round(logits), "logits"))
    fp32 = intrinsic_features(tier_view(logits, "logits"))
    np.testing.assert_array_equal(intr(bf16, "sig_bits_le8"), 1.0)
    assert (intr(fp32, "sig_bits_le8") < 0.2).all()
    assert (intr(bf16, "sig_bits_mean") <= 8).all()
    assert (intr(fp32, "sig_bits_mean") > 16).all()
    np.testing.assert_array_equal(intr(bf16, "sig_bits_le23"), 1.0)


def test_logits_on_a_coarse_grid_are_on_grid():
    rng = np.random.default_rng(3)
    quarters = (rng.integers(-40, 40, size=(4, 32)) / 4.0).astype(np.float32)
    features = intrinsic_features(tier_view(quarters, "logits"))
    np.testing.assert_array_equal(intr(features, "diff_on_grid_2^-2"), 1.0)
    random = intrinsic_features(tier_view(random_logits(n=4, width=32), "logits"))
    assert (intr(random, "diff_on_grid_2^-2") < 0.2).all()


def test_logprob_differences_of_grid_logits_are_on_grid():
    rng = np.random.default_rng(4)
    eighths = (rng.integers(-32, 32, size=(4, 64)) / 8.0).astype(np.float32)
    features = intrinsic_features(tier_view(eighths, "topk20"))
    np.testing.assert_array_equal(intr(features, "diff_on_grid_2^-3"), 1.0)
    random = intrinsic_features(tier_view(random_logits(n=4, width=64), "topk20"))
    assert (intr(random, "diff_on_grid_2^-3") < 0.5).all()


def test_float64_features_absent_without_recomputation():
    features = intrinsic_features(tier_view(random_logits(), "logits"))
    f64_names = [name for name in INTRINSIC_FEATURES if name.startswith("f64_")]
    assert len(f64_names) == 7
    for name in f64_names:
        np.testing.assert_array_equal(intr(features, name), 0.0, err_msg=name)


@pytest.mark.parametrize("tier", ["logits", "topk5"])
def test_float64_equal_to_widened_float32_has_no_deviation(tier):
    view = tier_view(random_logits(), tier)
    features = intrinsic_features(view, view.values.astype(np.float64))
    for name in ("f64_ulp_log_median", "f64_ulp_log_mean", "f64_ulp_log_p90", "f64_ulp_log_max", "f64_signed_mean"):
        np.testing.assert_array_equal(intr(features, name), 0.0, err_msg=name)
    np.testing.assert_array_equal(intr(features, "f64_within_half_ulp"), 1.0)
    np.testing.assert_array_equal(intr(features, "f64_available"), 1.0)


def test_float64_deviation_of_bf16_answer_is_large():
    logits = random_logits()
    view = tier_view(bf16_round(logits), "logits")
    features = intrinsic_features(view, logits.astype(np.float64))
    assert (intr(features, "f64_ulp_log_max") > 4.0).all()
    assert (intr(features, "f64_within_half_ulp") < 1.0).all()
    np.testing.assert_array_equal(intr(features, "f64_available"), 1.0)


def test_intrinsic_accepts_a_hand_built_view():
    values = np.array([[-0.5, -1.0, -2.0]], dtype=np.float32)
    view = TierView("topk5", np.array([[0, 1, 2]], dtype=np.int32), values)
    features = intrinsic_features(view)
    assert intr(features, "sig_bits_mean")[0] == 1.0
    assert intr(features, "diff_on_grid_2^-2")[0] == 1.0


@settings(max_examples=300, deadline=None)
@given(
    hnp.arrays(
        np.float32,
        st.tuples(st.integers(1, 6), st.integers(1, 40)),
        elements=st.sampled_from([-np.inf, -2.5, -1.0, -0.0, 0.0, 0.5, 3.0, np.inf, np.nan]),
    ),
    st.integers(1, 45),
)
def test_top_ids_is_a_stable_sort_of_each_row(values, k):
    """Heavy ties, signed zeros, infinities and NaN: the first k of a stable descending sort, ties to the lower id."""
    expected = np.argsort(-values, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(top_ids(values, k), expected)


@settings(max_examples=100, deadline=None)
@given(
    hnp.arrays(np.float32, st.tuples(st.integers(1, 4), st.integers(30, 600)), elements=st.floats(-30, 5, width=32)),
    st.sampled_from([1, 5, 20]),
)
def test_top_ids_matches_the_stable_sort_on_wide_rows(values, k):
    np.testing.assert_array_equal(top_ids(values, k), np.argsort(-values, axis=1, kind="stable")[:, :k])
