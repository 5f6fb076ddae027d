"""hspi.features.precision: the logits' format read from top-k logprobs.

Exact cases draw logits on each format's grid with torch's own dtypes (bfloat16, float16,
float8_e4m3fn, float8_e5m2), take a float32 log-softmax as a server would (torch's CPU kernel, or
numpy's max-shifted form) and keep the top k.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hspi.features.precision import (
    PRECISION_CLASSES,
    PrecisionReading,
    fit_answer,
    read_precision,
    reading_from_fits,
    verdict_probability,
)
from hspi.features.tiers import log_softmax_f32

DTYPES = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp8-e4m3": torch.float8_e4m3fn,
    "fp8-e5m2": torch.float8_e5m2,
}
COARSE = ("bf16", "fp16", "fp8-e4m3", "fp8-e5m2")
PROPERTY = settings(max_examples=60, deadline=None)


def logprob_rows(
    fmt: str,
    n: int,
    k: int = 20,
    *,
    seed: int = 0,
    width: int = 512,
    loc: float = 6.0,
    scale: float = 2.5,
    temperature: float | None = None,
    server: str = "numpy",
) -> list[np.ndarray]:
    """n answers: logits ~ N(loc, scale) rounded onto `fmt`'s grid, float32 log-softmax, top k."""
    gen = torch.Generator().manual_seed(seed)
    z = (torch.randn(n, width, generator=gen) * scale + loc).to(DTYPES[fmt]).float()
    return _rows(z, k, temperature, server)


def spread_rows(fmt: str, n: int, k: int = 20, *, seed: int = 0, server: str = "numpy") -> list[np.ndarray]:
    """n answers whose top-k logits are distinct values of `fmt` spread over [1, 12] (several binades)."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        candidates = torch.unique((torch.rand(400, generator=gen) * 11 + 1).to(DTYPES[fmt]).float())
        top = candidates[torch.randperm(candidates.numel(), generator=gen)[:k]]
        z = torch.full((256,), -20.0)
        z[: top.numel()] = top
        rows.append(z)
    return _rows(torch.stack(rows), k, None, server)


def one_binade_rows(fmt: str, n: int, k: int = 20, *, seed: int = 0, server: str = "numpy") -> list[np.ndarray]:
    """n answers like lm-small's (benchmarks/results/fp8-ambiguity.json): top logit near 7.5, the 20th near 5,
    so the top-k values span about one binade, where fp8-e4m3 at 2M mimics fp8-e5m2 at M (on e5m2 logits
    the per-answer log factor e4m3:e5m2 has median 0.34 here, 0.39 on lm-small's)."""
    return logprob_rows(fmt, n, k, seed=seed, loc=0.0, scale=2.5, server=server)


def _rows(z: torch.Tensor, k: int, temperature: float | None, server: str) -> list[np.ndarray]:
    if temperature is not None:
        z = z / torch.tensor(temperature, dtype=torch.float32)
    lp = torch.log_softmax(z, dim=-1).numpy() if server == "torch" else log_softmax_f32(z.numpy())
    top = -np.sort(-lp, axis=1)[:, :k]
    return [row.astype(np.float32) for row in top]


# -- exact cases --------------------------------------------------------------------------------------
@pytest.mark.parametrize("server", ["numpy", "torch"])
@pytest.mark.parametrize("fmt", ["fp32", "bf16", "fp16"])
def test_reads_each_format_at_topk20(fmt: str, server: str) -> None:
    reading = read_precision(logprob_rows(fmt, 3, seed=1, server=server), "topk20")
    assert reading.verdict == fmt, reading
    assert reading.answers_used == 3
    assert math.isclose(sum(reading.posterior.values()), 1.0)


@pytest.mark.parametrize("fmt", ["fp32", "bf16", "fp16"])
def test_reads_each_format_at_topk5_with_more_answers(fmt: str) -> None:
    assert read_precision(logprob_rows(fmt, 4, k=5, seed=2), "topk5").verdict == fmt


@pytest.mark.parametrize("server", ["numpy", "torch"])
@pytest.mark.parametrize("fmt", ["fp8-e4m3", "fp8-e5m2"])
def test_reads_fp8_when_values_span_binades(fmt: str, server: str) -> None:
    reading = read_precision(spread_rows(fmt, 3, seed=3, server=server), "topk20")
    assert reading.verdict == fmt, reading


def test_many_e5m2_answers_never_read_as_confident_e4m3() -> None:
    # a reference audit reads precision from all its answers (often 50+): a per-answer bias of the top-logit
    # prior towards e4m3 must not pile up into a confident wrong reading
    rows = one_binade_rows("fp8-e5m2", 64, seed=11)
    reading = read_precision(rows, "topk20")
    assert reading.verdict in ("fp8", "fp8-e5m2"), reading.reason
    assert reading.posterior["fp8-e4m3"] < 0.95
    assert verdict_probability(reading.verdict, reading.posterior) >= 0.95
    # the bias is real on these answers: summing each grid's own factor reads e4m3 confidently
    fits = [fit_answer(r) for r in rows]
    unpooled = reading_from_fits([replace(f, log_bf=f.grid_log_bf) for f in fits])
    assert unpooled.verdict == "fp8-e4m3", unpooled.reason


@pytest.mark.parametrize("fmt", ["fp8-e4m3", "fp8-e5m2"])
def test_undecided_answers_give_both_fp8_formats_the_same_factor(fmt: str) -> None:
    fits = [fit_answer(r) for r in one_binade_rows(fmt, 24, seed=12)]
    undecided = [f for f in fits if not f.fp8_decisive and f.fits["fp8-e4m3"] and f.fits["fp8-e5m2"]]
    assert undecided  # one-binade answers are mostly undecided
    for f in undecided:
        assert f.log_bf["fp8-e4m3"] == f.log_bf["fp8-e5m2"]
        for cls in ("fp32", "bf16", "fp16", "none-of-these"):
            assert f.log_bf[cls] == f.grid_log_bf[cls]
    for f in fits:
        if not (f.fits["fp8-e4m3"] and f.fits["fp8-e5m2"]):  # one grid fits and the other does not: decisive
            assert f.fp8_decisive and f.log_bf == f.grid_log_bf


def test_fp8_verdict_names_the_group_and_its_probability() -> None:
    reading = read_precision(one_binade_rows("fp8-e5m2", 16, seed=13), "topk20")
    assert reading.verdict == "fp8", reading.reason
    assert "fp8-e4m3 or fp8-e5m2" in reading.reason
    group = reading.posterior["fp8-e4m3"] + reading.posterior["fp8-e5m2"]
    assert verdict_probability("fp8", reading.posterior) == pytest.approx(group)
    assert verdict_probability("bf16", reading.posterior) == reading.posterior["bf16"]


def test_prefers_the_coarsest_format_that_fits() -> None:
    # a bf16 answer lies on fp16's grid as well, and both on float32's: the posterior still says bf16
    rows = logprob_rows("bf16", 1, seed=4)
    fit = fit_answer(rows[0])
    assert fit.fits["bf16"] and fit.fits["fp16"]
    assert not fit.fits["fp8-e4m3"] and not fit.fits["fp8-e5m2"]
    assert fit.log_bf["bf16"] > fit.log_bf["fp16"] > fit.log_bf["fp32"] == 0.0
    assert read_precision(rows, "topk20").verdict == "bf16"
    e5m2 = fit_answer(spread_rows("fp8-e5m2", 1, seed=5)[0])
    assert all(e5m2.fits[f] for f in COARSE)


def test_tolerance_allows_float32_rounding_and_no_more() -> None:
    row = logprob_rows("bf16", 1, seed=6)[0]
    assert fit_answer(row).fits["bf16"]
    moved = row.copy()
    for _ in range(2):  # two float32 steps away: beyond the half-ulp rounding a log-softmax can make
        moved[7] = np.nextafter(moved[7], np.float32(-np.inf))
    assert not fit_answer(moved).fits["bf16"]


def test_fp32_logits_fit_no_coarse_grid() -> None:
    for row in logprob_rows("fp32", 20, seed=7):
        fit = fit_answer(row)
        assert not any(fit.fits[f] for f in COARSE)


@pytest.mark.parametrize("fmt", ["bf16", "fp16"])
@pytest.mark.parametrize("k", [20, 5])
def test_temperature_is_never_read_as_a_confident_wrong_format(fmt: str, k: int) -> None:
    # z / T with T = 0.7 before the log-softmax: no format's grid, and not float32 logits either
    verdicts = []
    for seed in range(12):
        for server in ("numpy", "torch"):
            rows = logprob_rows(fmt, 1, k, seed=seed, temperature=0.7, server=server)
            verdicts.append(read_precision(rows, f"topk{k}").verdict)
    assert set(verdicts) <= {"none-of-these", "unknown"}, verdicts
    if k == 20:
        assert set(verdicts) == {"none-of-these"}


def test_temperature_on_fp32_logits_reads_fp32() -> None:
    assert read_precision(logprob_rows("fp32", 2, seed=8, temperature=0.7), "topk20").verdict == "fp32"


def test_evidence_adds_over_answers() -> None:
    rows = logprob_rows("fp16", 3, k=5, seed=9)
    fits = [fit_answer(r) for r in rows]
    combined = reading_from_fits(fits)
    for cls in PRECISION_CLASSES:
        assert combined.log_evidence[cls] == pytest.approx(sum(f.log_bf[cls] for f in fits))


# -- tiers and bad input ------------------------------------------------------------------------------
@pytest.mark.parametrize("tier", ["top1", "text"])
def test_top1_and_text_say_plainly_it_cannot_be_read(tier: str) -> None:
    reading = read_precision(logprob_rows("bf16", 2), tier)
    assert reading.verdict == "unknown" and reading.posterior == {}
    assert "cannot be read" in reading.reason


@pytest.mark.parametrize(
    ("answers", "tier", "why"),
    [
        ([], "topk20", "no answers"),
        ([[]], "topk20", "no logprobs"),
        ([[-0.5, -1.0, -2.0]], "topk5", "fewer"),
        ([[0.5, -1.0, -2.0, -3.0, -4.0]], "topk5", "positive"),
        ([[-1.0, -0.5, -2.0, -3.0, -4.0]], "topk5", "sorted"),
        ([[-0.5, float("nan"), -2.0, -3.0, -4.0]], "topk5", "non-finite"),
        ([[-0.5, -1.0, -2.0, -3.0, float("-inf")]], "topk5", "non-finite"),
        ([[-0.1234, -1.0, -2.0, -3.0, -4.0]], "topk5", "float32"),
        ([["a", "b", "c", "d", "e"]], "topk5", "not numbers"),
        ([[[-1.0], [-2.0]]], "topk5", "shape"),
        (None, "topk5", "not a sequence"),
        ([[-0.5, -1.0, -2.0, -3.0, -4.0]], "logits", "not the 'logits' tier"),
        ([[-0.5, -1.0, -2.0, -3.0, -4.0]], "bogus", "not the 'bogus' tier"),
    ],
)
def test_bad_input_reads_unknown_with_a_reason(answers: object, tier: str, why: str) -> None:
    reading = read_precision(answers, tier)  # type: ignore[arg-type]
    assert reading.verdict == "unknown"
    assert why in reading.reason


def test_one_bad_answer_makes_the_reading_unknown() -> None:
    rows = [r.tolist() for r in logprob_rows("bf16", 3)]
    rows[1][3] = float("nan")
    reading = read_precision(rows, "topk20")
    assert reading.verdict == "unknown" and "answer 1" in reading.reason


def test_ties_alone_test_nothing() -> None:
    reading = read_precision([[-1.5] * 5, [-0.25] * 5], "topk5")
    assert reading.verdict == "unknown" and reading.answers_used == 0


def test_bad_prior_reads_unknown() -> None:
    rows = logprob_rows("bf16", 1)
    assert read_precision(rows, prior={"bf16": -1.0}).verdict == "unknown"
    assert read_precision(rows, prior={"bf16": "x"}).verdict == "unknown"  # type: ignore[dict-item]
    assert read_precision(rows, prior={"fp16": 1.0}).verdict == "fp16"  # a prior can force a class that fits


def test_python_floats_from_json_are_accepted() -> None:
    rows = [[float(v) for v in r] for r in logprob_rows("fp16", 2)]
    assert read_precision(rows, "topk20").verdict == "fp16"


# -- properties ---------------------------------------------------------------------------------------
any_float = st.floats(allow_nan=True, allow_infinity=True, width=32)


@PROPERTY
@given(
    rows=st.lists(st.lists(any_float, min_size=0, max_size=24), min_size=0, max_size=4),
    tier=st.sampled_from(["topk20", "topk5", "top1", "text", "logits"]),
)
def test_never_raises_on_arbitrary_floats(rows: list[list[float]], tier: str) -> None:
    reading = read_precision(rows, tier)
    assert isinstance(reading, PrecisionReading)
    assert reading.verdict in (*PRECISION_CLASSES, "fp8", "unknown")
    if reading.posterior:
        assert math.isclose(sum(reading.posterior.values()), 1.0, rel_tol=1e-9)


@PROPERTY
@given(
    rows=st.lists(
        st.lists(st.floats(min_value=-30, max_value=0, width=32), min_size=5, max_size=20),
        min_size=1,
        max_size=3,
    )
)
def test_never_raises_on_sorted_nonpositive_floats(rows: list[list[float]]) -> None:
    answers = [sorted(r, reverse=True) for r in rows]
    reading = read_precision(answers, "topk5")
    assert reading.verdict in (*PRECISION_CLASSES, "fp8", "unknown")
    assert reading.posterior and math.isclose(sum(reading.posterior.values()), 1.0, rel_tol=1e-9)


@PROPERTY
@given(
    seed=st.integers(0, 2**31 - 1),
    shift=st.integers(-16, 16),
    k=st.sampled_from([20, 5]),
    server=st.sampled_from(["numpy", "torch"]),
)
def test_shifting_the_logits_changes_nothing(seed: int, shift: int, k: int, server: str) -> None:
    # bf16 logits on multiples of 1/8 in [6, 14): shifted by shift/8 they stay bf16 values, and the
    # log-softmax is shift-invariant up to float32 rounding, which the reading must absorb
    gen = torch.Generator().manual_seed(seed)
    steps = torch.randint(0, 48, (2, 128), generator=gen).float()
    z = 6.0 + steps / 8
    assert torch.equal(z.to(torch.bfloat16).float(), z)
    base = read_precision(_rows(z, k, None, server), f"topk{k}")
    shifted = read_precision(_rows(z + shift / 8, k, None, server), f"topk{k}")
    assert {base.verdict, shifted.verdict} <= {"bf16", "unknown"}
    if k == 20:
        assert base.verdict == shifted.verdict == "bf16"


@PROPERTY
@given(
    seed=st.integers(0, 2**31 - 1),
    fmt=st.sampled_from(["fp8-e4m3", "fp8-e5m2"]),
    n=st.integers(1, 40),
    loc=st.floats(-0.5, 1.5),
    scale=st.floats(2.2, 3.5),
    k=st.sampled_from([20, 5]),
)
def test_fp8_logits_never_read_as_the_other_fp8_format(
    seed: int, fmt: str, n: int, loc: float, scale: float, k: int
) -> None:
    # lm-small-like fp8 logits (top about 6-12, inside the default logit_range [4, 32): a top logit below it
    # may read as another format, a documented limit; the 20th about one binade lower), any number of
    # answers: the reading may name the format, the group "fp8" or nothing, never another format
    rows = logprob_rows(fmt, n, k, seed=seed, loc=loc, scale=scale)
    reading = read_precision(rows, f"topk{k}")
    assert reading.verdict in (fmt, "fp8", "unknown"), (reading.verdict, reading.reason)


def test_bad_options_read_unknown() -> None:
    rows = logprob_rows("bf16", 1)
    assert read_precision(rows, logit_range=(0.0, 32.0)).verdict == "unknown"
    assert read_precision(rows, logit_range=(8.0, 4.0)).verdict == "unknown"
    assert read_precision(rows, logit_range="wide").verdict == "unknown"  # type: ignore[arg-type]
    assert read_precision(rows, threshold=1.5).verdict == "unknown"
    assert read_precision(rows, threshold="high").verdict == "unknown"  # type: ignore[arg-type]
