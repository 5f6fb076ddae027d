"""Logit precision from returned logprobs: on which floating-point grid were the logits computed?

Public API (model-agnostic: needs nothing but the returned top-k logprobs)::

    read_precision(answers, tier="topk20", *, prior=None, threshold=0.95,
                   logit_range=(4.0, 32.0)) -> PrecisionReading

    answers      one row of top-k logprobs per answer (generated token), largest first, as the endpoint
                 returned them (float32 values; Python floats must be exact float32 numbers)
    tier         "topk20" | "topk5": readable, each answer must carry at least that many values
                 (the first k are used); "top1" | "text" | anything else -> "unknown" with the reason
    prior        optional {class: weight} over PRECISION_CLASSES (default uniform)
    threshold    posterior the leading class needs to become the verdict, else "unknown"
    logit_range  plausible magnitude of the logits: every top-k logit |z| < hi, top logit |m| >= lo

    PrecisionReading.verdict       one of PRECISION_CLASSES, "fp8" or "unknown"
    PrecisionReading.posterior     {class: probability} (empty when nothing could be read)
    PrecisionReading.log_evidence  {class: summed log Bayes factor against fp32, natural log}
    PrecisionReading.answers_used, .reason, .fits (per answer: {format or "lattice": fits})

    PRECISION_CLASSES = ("fp32", "bf16", "fp16", "fp8-e4m3", "fp8-e5m2", "none-of-these")
    verdict: a class, "fp8" (fp8-e4m3 or fp8-e5m2, not told apart: see "fp8" below) or "unknown";
    verdict_probability(verdict, posterior) is its probability (the group's for "fp8")

    fit_answer(row) -> AnswerFit and reading_from_fits(fits, prior=..., threshold=...) are the two
    halves of read_precision, for callers that combine answers themselves.

It never raises on bad input: no answers, no logprobs, fewer values than the tier asks, positive,
unsorted, non-finite or non-float32 values (e.g. rounded for display) give "unknown" and a reason.

Model.  A server computes lp_i = z_i - LSE(z) in float32 from logits z.  Allowed, and nothing looser:
  A  lp_i = fl(fl(z_i - m) - L)   (numpy's max-shifted form; torch 2.13's CPU log_softmax, measured:
                                   lp_0 = -L exactly, L its own float32 log-sum-exp)
  B  lp_i = fl(z_i - fl(m + L))   (a fused shift: lp_0 carries one rounding)
With d_i = lp_i - lp_0 (exact in float64) and z on a grid coarser than float32 (so z_i - m is exact),
z_i = m + d_i + e_i, |e_i| <= ulp32(lp_i)/2 + ulp32(lp_0)/2.  A format F *fits* an answer when some
top logit m on F's grid (lo <= |m|, every |m + d_i| < hi) puts every m + d_i within that tolerance
of F's grid.  How L was computed does not matter: it is a common shift.

Evidence.  Per answer, a Bayes factor against float32 logits (values at float32 resolution):
BF_F = ETA + (1 - ETA) * mean over F's candidate top logits m of prod_i [fits] max(1, s_F(z_i) / 2 tol_i),
where s_F(z_i) is F's spacing at z_i = m + d_i: a value on F's grid carries the mass of its grid
point, a float32 value that of its tolerance window.  Coarser grids give larger factors, so the
coarsest format that fits wins (a bf16 answer fits fp16 too, with smaller factors); a grid that
does not fit gives ETA, the share of answers allowed to break the model above.  The log Bayes factors
add over answers (independent answers); the posterior is prior x exp(sum).

Limits that no fit test can remove (the logits' offset is unknown, so only grid spacings relative to
binade boundaries are seen): format F at magnitude M has the grid of a format with b more mantissa
bits at 2^b M.  bf16 at |z| ~ M looks like fp16 at 8M, fp8-e4m3 at M like fp8-e5m2 at M/2; so
logit_range decides, and a range wider than a factor 8 leaves bf16/fp16 open.  The default [4, 32)
covers the top logits of common LLMs; fp8-e4m3 vs fp8-e5m2 stays open when an answer's values
span a single binade (with few distinct values, as fp8 top-k lists have).
Logits outside logit_range can read as another format (the same grid at another magnitude), and
a rare answer whose values happen to sit on a coarser grid reads as that grid: on bf16 logits
divided by T = 0.7, about 1 single top-5 answer in 1500 read as bf16 or fp16 (tests' generator).

"fp8".  fp8-e4m3 and fp8-e5m2 are told apart only by structurally decisive answers: one grid fits and
the other does not under every feasible top logit, or the coarsest explanation under one grid (the best
single m's factor) is coarser than any under the other, e.g. e5m2 values spread over several binades,
which e4m3 puts on its grid only by coincidence (by at least FP8_DECISIVE_MARGIN: smaller differences
arise by coincidence with few distinct values).  When both grids explain an answer equally coarsely
(e4m3 at 2M mimics e5m2 at M when the values span about one binade), their two factors differ only
through the prior over where the top logit sits, and that difference is biased, not informative: on
lm-small's fp8 logits the per-answer log factor e4m3:e5m2 had median +0.39 on fp8-e5m2 logits, so
summing it over 16 answers read an e5m2 endpoint as fp8-e4m3 at 0.9985 (benchmarks/fp8_ambiguity.py).
Such an answer therefore gives both fp8 classes the same factor, their mean (the Bayes factor of "fp8,
either format, equally likely"): the evidence for fp8 against the other classes is kept, the split
between the two is left to decisive answers and the prior.  When neither fp8 class reaches the
threshold but the two together do, the verdict is "fp8".  (Capping the per-answer e4m3:e5m2 factor
instead would still let a capped bias pile up over answers; a composite verdict alone would not stop
fp8-e4m3 alone from crossing the threshold after enough biased answers.)

"none-of-these" is read positively: the differences lie on a lattice n_i q of a free spacing q
(q >= 2^-12) that no format's grid explains, e.g. bf16 or fp16 logits divided by a temperature before
the log-softmax.  Its tolerance adds the float32 roundings of z/T and m/T for |z/T| < hi; its prior
is log-uniform over q = a_j / n (a_j the smallest difference, n = 1..8192).  So "fp32" means no
coarse grid at any scale: float32 logits, or float32 logits post-processed (temperature, penalties),
which are float32 logits again.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# coarsest first: name -> (explicit mantissa bits, minimum normal exponent, largest finite value)
FORMATS: dict[str, tuple[int, int, float]] = {
    "fp8-e5m2": (2, -14, 57344.0),
    "fp8-e4m3": (3, -6, 448.0),
    "bf16": (7, -126, 3.3895313892515355e38),
    "fp16": (10, -14, 65504.0),
}
PRECISION_CLASSES: tuple[str, ...] = ("fp32", "bf16", "fp16", "fp8-e4m3", "fp8-e5m2", "none-of-these")
# verdicts that name a group of classes the logprobs do not tell apart (see the module doc, "fp8")
COMPOSITE_VERDICTS: dict[str, tuple[str, ...]] = {"fp8": ("fp8-e4m3", "fp8-e5m2")}
READABLE_TIERS: dict[str, int] = {"topk20": 20, "topk5": 5}

ETA = 1e-3  # share of answers whose arithmetic lies outside the model above (they read as float32)
LOGIT_RANGE = (4.0, 32.0)  # default plausible top logit: |m| in [4, 32), both signs (see the module doc)
LATTICE_Q_MIN = 2.0**-12  # finest free lattice spacing searched
LATTICE_N = 8192  # lattice candidates: q = a / n, n = 1..LATTICE_N (the prior counts all of them)
# an answer's coarsest e4m3 and e5m2 explanations must differ by at least 3 values' spacing (a factor 2
# each) to split the two: with 1-6 distinct values, differences of log 2 and log 4 arise by coincidence
# (the range cap on m offers each grid other coarse binades): 6 of 200 one-binade e5m2 answers of the
# tests' generator, 4 of them favouring e4m3; e5m2 values over several binades differ by 5 log 2
FP8_DECISIVE_MARGIN = 3.0 * math.log(2.0) - 1e-9
_HARMONIC = float(np.sum(1.0 / np.arange(1, LATTICE_N + 1)))


@dataclass(frozen=True)
class AnswerFit:
    """One answer's tests: which grids fit, and each class's log Bayes factor against float32."""

    fits: dict[str, bool]
    lattice_fit: bool
    log_bf: dict[str, float]  # what the answer contributes (fp8 classes pooled unless decisive)
    informative: bool
    grid_log_bf: dict[str, float] = field(default_factory=dict)  # each grid's own factor, before the pooling
    fp8_decisive: bool = False  # the answer itself tells fp8-e4m3 from fp8-e5m2 (their factors kept apart)


@dataclass(frozen=True)
class PrecisionReading:
    verdict: str
    posterior: dict[str, float]
    answers_used: int
    reason: str
    log_evidence: dict[str, float] = field(default_factory=dict)
    fits: list[dict[str, bool]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "posterior": self.posterior,
            "answers_used": self.answers_used,
            "reason": self.reason,
            "log_evidence": self.log_evidence,
        }


def _unknown(reason: str, answers_used: int = 0) -> PrecisionReading:
    return PrecisionReading("unknown", {}, answers_used, reason)


def _ulp32(values: np.ndarray) -> np.ndarray:
    """Spacing of the float32 grid just above |value| (the bound on a float32 result's rounding)."""
    v = np.abs(np.asarray(values, dtype=np.float32))
    return (np.nextafter(v, np.float32(np.inf)) - v).astype(np.float64)


def grid_spacing(x: np.ndarray, fmt: str) -> np.ndarray:
    """Spacing of format `fmt`'s grid at each |x| (subnormal spacing below the normal range)."""
    mant, emin, _ = FORMATS[fmt]
    _, exp = np.frexp(np.abs(x))  # |x| = f 2^exp, f in [0.5, 1): floor(log2|x|) = exp - 1
    return np.ldexp(1.0, np.maximum(exp - 1, emin) - mant)


def grid_distance(x: np.ndarray, fmt: str) -> np.ndarray:
    """Distance from each x to the nearest finite value of `fmt` (inf beyond its range)."""
    spacing = grid_spacing(x, fmt)
    dist = np.abs(x - np.rint(x / spacing) * spacing)
    return np.where(np.abs(x) <= FORMATS[fmt][2], dist, np.inf)


@functools.lru_cache(maxsize=32)
def grid_points(fmt: str, lo: float, hi: float) -> np.ndarray:
    """Candidate top logits of `fmt`: every finite value with |m| in [lo, hi), both signs."""
    mant, emin, top = FORMATS[fmt]
    exps = np.arange(max(math.floor(math.log2(lo)), emin), math.ceil(math.log2(hi)) + 1)
    mantissas = 1.0 + np.arange(2**mant) / 2**mant
    positive = np.ldexp(mantissas[None, :], exps[:, None]).ravel()
    positive = positive[(positive >= lo) & (positive < hi) & (positive <= top)]
    out = np.concatenate([positive, -positive])
    out.setflags(write=False)
    return out


def _log_mean_exp(log_terms: np.ndarray, count: int) -> float:
    """log(sum(exp(log_terms)) / count); -inf for no terms."""
    if log_terms.size == 0:
        return -math.inf
    top = float(log_terms.max())
    return top + math.log(float(np.exp(log_terms - top).sum())) - math.log(count)


def _format_log_bf(
    d: np.ndarray, tol: np.ndarray, fmt: str, logit_range: tuple[float, float]
) -> tuple[bool, float, float]:
    """Does some top logit m on `fmt`'s grid put every m + d_i on it; log P(d | fmt) / P(d | float32); and
    the best single m's log factor (how coarse the coarsest explanation is, whatever the prior over m).

    Under `fmt`, with m uniform over the candidates, each value lands on one grid point, whose mass
    (spacing / R) is spacing / (2 tol) times that of a float32 value's tolerance window (2 tol / R),
    or the same when the grid is finer than the window.
    """
    m = grid_points(fmt, *logit_range)
    # every logit, not only the top one, stays within the plausible magnitude (a negative top logit
    # would otherwise reach coarser binades below -hi), then a cheap first cut on one value
    ok = (np.abs(m + d.min()) < logit_range[1]) & (grid_distance(m + d[0], fmt) <= tol[0])
    m_fit = m[ok]
    if m_fit.size:
        x = m_fit[:, None] + d[None, :]
        m_fit = m_fit[(grid_distance(x, fmt) <= tol[None, :]).all(axis=1)]
    if m_fit.size == 0:
        return False, -math.inf, -math.inf
    x = m_fit[:, None] + d[None, :]
    log_ratio = np.log(np.maximum(1.0, grid_spacing(x, fmt) / (2.0 * tol[None, :]))).sum(axis=1)
    return True, _log_mean_exp(log_ratio, m.size), float(log_ratio.max())


def _lattice_log_bf(d: np.ndarray, tol: np.ndarray, hi: float) -> tuple[bool, float]:
    """Do the differences sit on a lattice n_i q of a free spacing q, and its log Bayes factor vs float32."""
    a = np.abs(d)
    tol_l = tol + _ulp32(np.array([hi]))[0]  # + the float32 roundings of z_i / T and m / T, |z / T| < hi
    j = int(np.argmin(a))
    q_floor = max(LATTICE_Q_MIN, 4.0 * float(tol_l.max()))
    n_max = min(LATTICE_N, int(a[j] / q_floor))
    if a.size < 2 or n_max < 1:  # one difference is always on a lattice; a finer one is not searched
        return True, 0.0
    n_candidates = np.arange(1, n_max + 1)
    q = a[j] / n_candidates
    for _ in range(2):  # refine each candidate spacing by least squares on all the differences
        n = np.maximum(np.rint(a[None, :] / q[:, None]), 1.0)
        q = (n * a[None, :]).sum(axis=1) / (n * n).sum(axis=1)
    n = np.maximum(np.rint(a[None, :] / q[:, None]), 1.0)
    ok = (np.abs(a[None, :] - n * q[:, None]) <= tol_l[None, :]).all(axis=1)
    if not ok.any():
        return False, -math.inf
    # prior over the candidates: log-uniform in q, P(n) = 1 / (n H_LATTICE_N)
    log_prior = -np.log(n_candidates[ok]) - math.log(_HARMONIC)
    # the value that set q = a_j / n_j counts nothing; any other value a_i = n_i q is predicted to within
    # its own tolerance plus n_i / n_j times a_j's, so its density ratio is q / (2 tol_i (1 + n_i / n_j))
    n_ok = n[ok]
    widened = 2.0 * tol_l[None, :] * (1.0 + n_ok / n_candidates[ok][:, None])
    factors = np.delete(np.log(np.maximum(1.0, q[ok][:, None] / widened)), j, axis=1)
    log_ratio = factors.sum(axis=1)
    return True, _log_mean_exp(log_ratio + log_prior, 1)


def _robust(log_bf: float) -> float:
    """log(ETA + (1 - ETA) bf): a share ETA of answers may break the model and read as float32."""
    return float(np.logaddexp(math.log(ETA), math.log1p(-ETA) + log_bf))


def fit_answer(logprobs: np.ndarray, logit_range: tuple[float, float] = LOGIT_RANGE) -> AnswerFit:
    """The grid tests on one answer's validated top-k logprobs (float32 values, largest first)."""
    lp = np.asarray(logprobs, dtype=np.float32).astype(np.float64)
    d_all = lp[1:] - lp[0]
    ulp = _ulp32(lp)
    tol_all = 0.5 * ulp[1:] + 0.5 * ulp[0]
    # ties and repeated differences test nothing new
    d, first = np.unique(d_all, return_index=True)
    tol = tol_all[first]
    keep = d != 0.0
    d, tol = d[keep], tol[keep] * (1.0 + 2.0**-40)  # + float64 slack, far below any float32 rounding
    if d.size == 0:
        nothing = dict.fromkeys(PRECISION_CLASSES, 0.0)
        return AnswerFit(dict.fromkeys(FORMATS, True), True, nothing, False, dict(nothing))
    fits: dict[str, bool] = {}
    log_bf: dict[str, float] = {"fp32": 0.0}
    best: dict[str, float] = {}
    for fmt in FORMATS:
        fits[fmt], raw, best[fmt] = _format_log_bf(d, tol, fmt, logit_range)
        log_bf[fmt] = _robust(raw)
    lattice_fit, raw = _lattice_log_bf(d, tol, logit_range[1])
    log_bf["none-of-these"] = _robust(raw)
    grid = {c: log_bf[c] for c in PRECISION_CLASSES}
    decisive = fp8_decisive(best)
    return AnswerFit(fits, lattice_fit, grid if decisive else _pool_fp8(grid), True, grid, decisive)


def fp8_decisive(best: Mapping[str, float]) -> bool:
    """Does the answer itself tell fp8-e4m3 from fp8-e5m2: one grid fits and the other does not, or one
    grid's coarsest explanation (best single top logit) is coarser than every explanation of the other
    by FP8_DECISIVE_MARGIN or more (module doc, "fp8").  Neither fitting decides nothing between the two."""
    e4m3, e5m2 = COMPOSITE_VERDICTS["fp8"]
    if best[e4m3] == best[e5m2]:  # also both -inf: neither fits
        return False
    if math.isinf(best[e4m3]) or math.isinf(best[e5m2]):
        return True
    return abs(best[e4m3] - best[e5m2]) >= FP8_DECISIVE_MARGIN


def _pool_fp8(log_bf: dict[str, float]) -> dict[str, float]:
    """An undecided answer: the two fp8 factors differ only by the prior over m, so both get their mean."""
    e4m3, e5m2 = COMPOSITE_VERDICTS["fp8"]
    pooled = float(np.logaddexp(log_bf[e4m3], log_bf[e5m2])) - math.log(2.0)
    return {**log_bf, e4m3: pooled, e5m2: pooled}


def verdict_probability(verdict: str, posterior: Mapping[str, float]) -> float:
    """The posterior probability of a verdict: its class's, a composite's group sum, the best for unknown."""
    if verdict in COMPOSITE_VERDICTS:
        return float(sum(posterior.get(c, 0.0) for c in COMPOSITE_VERDICTS[verdict]))
    return float(posterior.get(verdict, max(posterior.values(), default=0.0)))


def validate_answer(values: Any, k: int) -> tuple[np.ndarray | None, str]:
    """(float32 row of the first k values, "") or (None, why it cannot be read)."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        return None, "values are not numbers"
    if arr.ndim != 1:
        return None, f"expected one row of logprobs, got shape {arr.shape}"
    if arr.size == 0:
        return None, "no logprobs"
    if arr.size < k:
        return None, f"{arr.size} logprobs, fewer than the {k} the tier asks"
    arr = arr[:k]
    if not np.isfinite(arr).all():
        return None, "non-finite logprob (NaN or infinity)"
    if (arr > 0).any():
        return None, "positive logprob"
    if (np.diff(arr) > 0).any():
        return None, "logprobs not sorted largest first"
    if not (arr.astype(np.float32).astype(np.float64) == arr).all():
        return None, "values are not float32 numbers (rounded for display, or computed in another format)"
    return arr.astype(np.float32), ""


def read_precision(
    answers: Sequence[Sequence[float]] | np.ndarray,
    tier: str = "topk20",
    *,
    prior: Mapping[str, float] | None = None,
    threshold: float = 0.95,
    logit_range: tuple[float, float] = LOGIT_RANGE,
) -> PrecisionReading:
    """Posterior over the logits' format from several answers' top-k logprobs (see the module doc)."""
    if tier in ("top1", "text"):
        return _unknown(
            f"logit precision cannot be read at the {tier} tier: it needs at least two logprobs per answer "
            "(their differences carry the grid)"
        )
    if tier not in READABLE_TIERS:
        return _unknown(f"logit precision is read from top-k logprobs (topk20, topk5), not the {tier!r} tier")
    k = READABLE_TIERS[tier]
    try:
        lo, hi = (float(v) for v in logit_range)
    except (TypeError, ValueError):
        return _unknown("logit_range must be two numbers (lo, hi)")
    if not (math.isfinite(lo) and math.isfinite(hi) and 0.0 < lo < hi <= 2.0**15):
        return _unknown("logit_range must satisfy 0 < lo < hi <= 32768")
    try:
        rows = list(answers)
    except TypeError:
        return _unknown("answers are not a sequence of logprob rows")
    if not rows:
        return _unknown("no answers")
    answer_fits: list[AnswerFit] = []
    for index, row in enumerate(rows):
        values, why = validate_answer(row, k)
        if values is None:
            return _unknown(f"answer {index}: {why}")
        answer_fits.append(fit_answer(values, (lo, hi)))
    return reading_from_fits(answer_fits, prior=prior, threshold=threshold)


def reading_from_fits(
    answer_fits: Sequence[AnswerFit], *, prior: Mapping[str, float] | None = None, threshold: float = 0.95
) -> PrecisionReading:
    """Combine answers' tests (fit_answer) into a posterior: log Bayes factors add over answers."""
    if not isinstance(threshold, (int, float)) or not 0.0 < float(threshold) <= 1.0:
        return _unknown("threshold must be a number in (0, 1]")
    try:
        weights = (
            {c: 1.0 for c in PRECISION_CLASSES}
            if prior is None
            else {c: float(prior.get(c, 0.0)) for c in PRECISION_CLASSES}
        )
    except (TypeError, ValueError, AttributeError):
        return _unknown("prior must map classes to numbers")
    if not all(math.isfinite(w) and w >= 0 for w in weights.values()) or sum(weights.values()) <= 0:
        return _unknown("prior must give non-negative weights, not all zero")
    evidence = {c: 0.0 for c in PRECISION_CLASSES}
    used = 0
    for fit in answer_fits:
        if not fit.informative:
            continue
        used += 1
        for cls, ll in fit.log_bf.items():
            evidence[cls] += ll
    log_post = {c: (math.log(w) + evidence[c]) if w > 0 else -math.inf for c, w in weights.items()}
    top = max(log_post.values())
    unnorm = {c: math.exp(v - top) for c, v in log_post.items()}
    total = sum(unnorm.values())
    posterior = {c: v / total for c, v in unnorm.items()}
    best = max(posterior, key=lambda c: posterior[c])
    fits = [{**fit.fits, "lattice": fit.lattice_fit} for fit in answer_fits]
    if used == 0:
        verdict, reason = "unknown", "no answer had two distinct logprobs: nothing to test"
    elif posterior[best] >= threshold:
        verdict, reason = best, f"posterior {posterior[best]:.3f} >= {threshold} from {used} answer(s)"
    elif (group := verdict_probability("fp8", posterior)) >= threshold:
        verdict = "fp8"
        reason = (
            f"fp8-e4m3 or fp8-e5m2: together {group:.3f} >= {threshold} from {used} answer(s); the answers do "
            f"not tell the two apart (e4m3 {posterior['fp8-e4m3']:.3f}, e5m2 {posterior['fp8-e5m2']:.3f})"
        )
    else:
        verdict, reason = "unknown", f"no class reaches {threshold} (best {best} at {posterior[best]:.3f})"
    return PrecisionReading(verdict, posterior, used, reason, evidence, fits)
