"""`Responses`: raw outputs exactly as a target returned them, with their probe ids.

Values are kept in their native dtype (bf16 as its 16-bit words); `as_float32` widens exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NATIVE_DTYPES = ("float32", "float16", "bfloat16")


def bfloat16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """Exact widening: a bf16 word is the top half of the float32 with the same value."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def float32_to_bfloat16_bits(values: np.ndarray) -> np.ndarray:
    """Only for values already on the bf16 grid (what a bf16 model outputs): keeps the top half."""
    return (np.ascontiguousarray(values, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)


@dataclass(frozen=True)
class Responses:
    """Outputs of one target for a list of probes of one model (rows follow `probe_ids`)."""

    model: str
    probe_set: str  # versioned probe-set name, e.g. "lm-small-v1/probes-v1/pool"
    probe_ids: np.ndarray  # int32, shape (n,)
    native: np.ndarray  # float32 / float16 / uint16 words of bfloat16, shape (n, n_outputs)
    native_dtype: str

    def __post_init__(self) -> None:
        if self.native_dtype not in NATIVE_DTYPES:
            raise ValueError(f"unknown native dtype {self.native_dtype!r}; allowed: {', '.join(NATIVE_DTYPES)}")
        if self.native.ndim != 2 or self.native.shape[0] != self.probe_ids.shape[0]:
            raise ValueError(f"outputs of shape {self.native.shape} do not match {self.probe_ids.shape[0]} probe ids")

    def as_float32(self) -> np.ndarray:
        if self.native_dtype == "bfloat16":
            return bfloat16_bits_to_float32(self.native)
        return self.native.astype(np.float32)

    def select(self, ids: np.ndarray) -> Responses:
        """The rows for `ids`, in that order (every id must be present)."""
        index = {int(p): i for i, p in enumerate(self.probe_ids)}
        rows = np.array([index[int(p)] for p in ids], dtype=np.int64)
        return Responses(self.model, self.probe_set, self.probe_ids[rows], self.native[rows], self.native_dtype)


MISSING_TOKEN = -1  # no alternative in this slot
FOREIGN_TOKEN = -2  # a text that is no token of the model's vocabulary
AMBIGUOUS_TOKEN = -3  # a text several tokens show (e.g. bytes of a character): marked, never guessed


@dataclass(frozen=True)
class TierAnswers:
    """What a black-box target showed for n probes at one access tier.

    `ids` (n, k) are output/token ids best first and `values` (n, k) their float32 log-probabilities
    exactly as sent; the `text` tier has k = 1 and NaN values (the greedy token only).  A row with
    fewer entries than k (a server that merged duplicate token texts, or stopped early) is not
    `complete`: its missing slots hold id -1 and NaN, and features skip it.  A text the model's
    vocabulary does not have holds FOREIGN_TOKEN, one several of its tokens show AMBIGUOUS_TOKEN.
    """

    model: str
    probe_set: str
    probe_ids: np.ndarray  # int32 (n,)
    tier: str
    ids: np.ndarray  # int32 (n, k), -1 where missing
    values: np.ndarray  # float32 (n, k), NaN where missing or not shown

    def __post_init__(self) -> None:
        n = self.probe_ids.shape[0]
        if self.ids.shape != self.values.shape or self.ids.ndim != 2 or self.ids.shape[0] != n:
            raise ValueError(f"ids {self.ids.shape} / values {self.values.shape} do not match {n} probes")

    @property
    def complete(self) -> np.ndarray:
        if self.tier == "text":
            return self.ids[:, 0] >= 0
        return (self.ids >= 0).all(axis=1) & np.isfinite(self.values).all(axis=1)

    def greedy(self) -> np.ndarray:
        """The first-ranked id per probe (-1 where none was shown)."""
        return self.ids[:, 0]
