"""Access tiers derived from full logits exactly as a float32 server would.

| tier   | what a target returns per probe                    |
| logits | the whole output vector (float32 or native)        |
| topk20 | the 20 highest log-probabilities and their ids     |
| topk5  | the 5 highest                                      |
| top1   | the greedy token's log-probability only            |

Log-probabilities are computed in float32 (max-shifted log-softmax), ties broken by the lower id:
the "numpy" convention, which hspi's own server and llama-cpp-python's use.  A platform whose server
computes them another way names its convention (`Platform.logprob_convention`), and its views follow
that server's arithmetic bit for bit (`features.logprob_conventions`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hspi.errors import ConfigError
from hspi.features.logprob_conventions import llama_server_logprobs
from hspi.terms import TIER_WIDTH, Tier

# the tiers a reference-match classifier reads (the text tier has its own vote), with their widths
TIERS: dict[str, int | None] = {t.value: TIER_WIDTH[t] for t in Tier if t is not Tier.TEXT}


CONVENTIONS = ("numpy", "llama-server")


def check_tier(tier: str) -> str:
    if tier not in TIERS:
        raise ConfigError(f"unknown tier {tier!r}; allowed: {', '.join(TIERS)}")
    return tier


@dataclass(frozen=True)
class TierView:
    """What one tier shows for n probes: `values` (n, k) float32 and the output `ids` (n, k)."""

    tier: str
    ids: np.ndarray
    values: np.ndarray


def log_softmax_f32(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float32)
    shifted = x - x.max(axis=1, keepdims=True)
    lse = np.log(np.exp(shifted).sum(axis=1, keepdims=True, dtype=np.float32))
    return (shifted - lse).astype(np.float32)


def log_softmax_f64(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    shifted = x - x.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def top_ids(values: np.ndarray, k: int) -> np.ndarray:
    """Ids of the k largest values per row, largest first, ties to the lower id."""
    values = np.asarray(values)
    n, width = values.shape
    if not 0 < k < width or np.isnan(values).any():
        return np.argsort(-values, axis=1, kind="stable")[:, :k].astype(np.int32)
    # the same answer as a stable sort of whole rows, several times faster on wide rows: keep what
    # beats each row's k-th largest value, fill up with its ties in id order, then sort those k
    kth = -np.partition(-values, k - 1, axis=1)[:, k - 1 : k]
    above = values > kth
    ties = values == kth
    keep = above | (ties & (np.cumsum(ties, axis=1) <= k - above.sum(axis=1, keepdims=True)))
    ids = np.nonzero(keep)[1].reshape(n, k)  # row-major: each row's k ids in increasing order
    order = np.argsort(-np.take_along_axis(values, ids, axis=1), axis=1, kind="stable")
    return np.take_along_axis(ids, order, axis=1).astype(np.int32)


def tier_view(logits: np.ndarray, tier: str, convention: str = "numpy") -> TierView:
    """What a server of this logprob `convention` shows at `tier` for these logits."""
    return shown_and_full(logits, tier, convention)[0]


def reference_values(logits: np.ndarray, tier: str, convention: str = "numpy") -> np.ndarray:
    """The full vector a reference compares in: raw logits, or float32 log-probabilities as a server of
    this `convention` computes them when asked for the tier's k."""
    return shown_and_full(logits, tier, convention)[1]


def shown_and_full(logits: np.ndarray, tier: str, convention: str = "numpy") -> tuple[TierView, np.ndarray]:
    """`tier_view` and `reference_values` of the same logits from one pass (llama-server's arithmetic runs
    row by row in Python: a reference book needs both, and computes them once)."""
    check_tier(tier)
    logits = np.asarray(logits, dtype=np.float32)
    n, width = logits.shape
    if tier == "logits":
        return TierView(tier, np.broadcast_to(np.arange(width, dtype=np.int32), (n, width)), logits), logits
    k = min(int(TIERS[tier] or width), width)
    if _check_convention(convention) == "llama-server":  # its order and sum depend on how many it was asked
        ids, logprobs = llama_server_logprobs(logits, k)
    else:
        logprobs = log_softmax_f32(logits)
        ids = top_ids(logprobs, k)
    return TierView(tier, ids, np.take_along_axis(logprobs, ids, axis=1)), logprobs


def _check_convention(convention: str) -> str:
    if convention not in CONVENTIONS:
        raise ConfigError(f"unknown logprob convention {convention!r}; known: {', '.join(CONVENTIONS)}")
    return convention
