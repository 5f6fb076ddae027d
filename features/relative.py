"""Reference-relative features: a target's answer against one candidate's stored answer.

For the same probe, how close is what the target returned to what candidate platform c returned
when it was collected?  Bit-identical shares, ULP distances on the same output ids, and agreement
of the top-k ranking.  One row per probe; the classifier scores every candidate with these.
"""

from __future__ import annotations

import numpy as np

from hspi.features.bits import ulp_distance
from hspi.features.tiers import TierView, top_ids

RELATIVE_FEATURES: tuple[str, ...] = (
    "exact_share",
    "top1_same",
    "id_agree",
    "set_overlap",
    "ulp_log_median",
    "ulp_log_mean",
    "ulp_log_max",
    "within_1ulp",
    "within_16ulp",
    "abs_diff_log10",
    "signed_diff_mean",
)


def relative_features(target: TierView, reference_full: np.ndarray) -> np.ndarray:
    """Features (n, len(RELATIVE_FEATURES)) of `target` against a candidate's full reference vector.

    `reference_full` (n, V) is the candidate's stored output in the tier's units (logits, or
    float32 log-probabilities), so any id the target shows can be looked up in it.
    """
    n, k = target.values.shape
    ref_at_ids = np.take_along_axis(reference_full, target.ids.astype(np.int64), axis=1).astype(np.float32)
    ref_ids = top_ids(reference_full, k) if target.tier != "logits" else target.ids
    exact = target.values.view(np.uint32) == ref_at_ids.view(np.uint32)
    ulps = ulp_distance(target.values, ref_at_ids).astype(np.float64)
    log_ulps = np.log2(1.0 + ulps)
    diff = target.values.astype(np.float64) - ref_at_ids.astype(np.float64)
    if target.tier == "logits":
        t1 = top_ids(target.values, 1)[:, 0] == top_ids(reference_full, 1)[:, 0]
        id_agree = np.ones(n)
        overlap = np.ones(n)
    else:
        t1 = target.ids[:, 0] == ref_ids[:, 0]
        id_agree = (target.ids == ref_ids).mean(axis=1)
        overlap = (target.ids[:, :, None] == ref_ids[:, None, :]).any(axis=2).mean(axis=1)
    return np.column_stack(
        [
            exact.mean(axis=1),
            t1.astype(np.float64),
            id_agree,
            overlap,
            np.median(log_ulps, axis=1),
            log_ulps.mean(axis=1),
            log_ulps.max(axis=1),
            (ulps <= 1).mean(axis=1),
            (ulps <= 16).mean(axis=1),
            np.log10(np.abs(diff).mean(axis=1) + 1e-30),
            diff.mean(axis=1),
        ]
    )
