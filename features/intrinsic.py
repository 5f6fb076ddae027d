"""Intrinsic features: what one answer says about its platform with no reference for that probe.

- significant mantissa bits of the values (bf16 outputs use <= 8, fp16 <= 11);
- dtype-grid evidence of the differences to the top value: a log-probability is a logit minus one
  shared log-sum-exp, so differences of log-probabilities are differences of logits and sit on
  the output dtype's grid (up to float32 rounding);
- rates of the low mantissa bits of the float32 words;
- deviation, in float32 ULPs, from a float64 recomputation of the same probe (the auditor knows
  the reference model's weights), when one is given.
"""

from __future__ import annotations

import numpy as np

from hspi.features.bits import low_bit_rates, significant_bits, ulp_of
from hspi.features.tiers import TierView

GRID_EXPONENTS = tuple(range(2, 17))  # grid spacings 2^-2 .. 2^-16
SIG_BIT_EDGES = (8, 11, 16, 20, 23)
LOW_BITS = 16

INTRINSIC_FEATURES: tuple[str, ...] = (
    ("sig_bits_mean",)
    + tuple(f"sig_bits_le{e}" for e in SIG_BIT_EDGES)
    + tuple(f"diff_on_grid_2^-{j}" for j in GRID_EXPONENTS)
    + tuple(f"low_bit_{b}" for b in range(LOW_BITS))
    + (
        "f64_ulp_log_median",
        "f64_ulp_log_mean",
        "f64_ulp_log_p90",
        "f64_ulp_log_max",
        "f64_signed_mean",
        "f64_within_half_ulp",
        "f64_available",
    )
)


def _grid_shares(diffs: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Per row, share of `diffs` within float32 noise of a multiple of 2^-j, for each j."""
    out = np.empty((diffs.shape[0], len(GRID_EXPONENTS)))
    tolerance = 4.0 * scale  # a few ULPs of the log-probabilities the differences came from
    for col, j in enumerate(GRID_EXPONENTS):
        step = 2.0**-j
        residual = np.abs(diffs - np.round(diffs / step) * step)
        out[:, col] = (residual <= tolerance).mean(axis=1) if diffs.shape[1] else 0.0
    return out


def intrinsic_features(view: TierView, float64_values: np.ndarray | None = None) -> np.ndarray:
    """Features (n, len(INTRINSIC_FEATURES)).  `float64_values` (n, k): the float64 recomputation of
    the same quantities (logits, or log-probabilities at the same ids), or None if unknown."""
    values = view.values.astype(np.float32)
    n, k = values.shape
    sig = significant_bits(values)
    sig_cols = [sig.mean(axis=1)] + [(sig <= e).mean(axis=1) for e in SIG_BIT_EDGES]
    if view.tier == "logits":
        diffs = values.astype(np.float64)
        scale = np.zeros_like(diffs)  # raw values: exact grid test
    else:
        diffs = values[:, 1:].astype(np.float64) - values[:, :1].astype(np.float64)
        scale = np.maximum(ulp_of(values[:, 1:]), ulp_of(values[:, :1]))
    grid = _grid_shares(diffs, scale)
    bit_rates = low_bit_rates(values, LOW_BITS)
    if float64_values is None:
        f64 = np.zeros((n, 7))
    else:
        deviation = (values.astype(np.float64) - float64_values) / np.maximum(
            ulp_of(float64_values.astype(np.float32)), 1e-45
        )
        log_dev = np.log2(1.0 + np.abs(deviation))
        f64 = np.column_stack(
            [
                np.median(log_dev, axis=1),
                log_dev.mean(axis=1),
                np.percentile(log_dev, 90, axis=1),
                log_dev.max(axis=1),
                np.tanh(deviation.mean(axis=1) / 8.0),
                (np.abs(deviation) <= 0.5).mean(axis=1),
                np.ones(n),
            ]
        )
    return np.column_stack(sig_cols + [grid, bit_rates, f64])
