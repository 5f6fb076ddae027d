"""Evidence over several queries: per-probe scores summed as log-odds / log-probabilities."""

from __future__ import annotations

import numpy as np

# Clip probabilities away from 0 and 1: one overconfident probe must not veto the rest.
PROB_FLOOR = 1e-4


def log_odds(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, PROB_FLOOR, 1.0 - PROB_FLOOR)
    return np.log(p) - np.log1p(-p)


def log_prob(p: np.ndarray) -> np.ndarray:
    return np.log(np.clip(p, PROB_FLOOR, 1.0))


def softmax(scores: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = scores - scores.max(axis=axis, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=axis, keepdims=True)


def group_sum(per_probe: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Sum rows of `per_probe` (n, ...) that share a group id (0..G-1) -> (G, ...)."""
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    out = np.zeros((n_groups,) + per_probe.shape[1:])
    np.add.at(out, groups, per_probe)
    return out
