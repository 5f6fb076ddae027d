"""The `text` tier: what an API that returns only the greedy token shows, and border-prompt margins.

Pure functions of output vectors.  The greedy token is the argmax of the outputs a platform
returned (widened exactly to float64), ties to the lower id, as `torch.argmax` and the tier views
in `features/tiers.py` break them.  The top-2 *margin* is ``top1 - top2`` computed exactly in
float64 (the difference of two float32 values is exact there).

A margin means little on its own: a bf16 platform rounds its outputs to a grid whose spacing grows
with the value, so a border prompt is ranked by its *relative margin*: the margin in units of the
bf16 grid spacing at the top value (``2**(floor(log2|top1|) - 7)``).  fp16 and fp32 grids are that
spacing times a constant, so the ranking is the same for every float format.
"""

from __future__ import annotations

import numpy as np

BF16_MANTISSA_BITS = 7  # explicit mantissa bits of bfloat16: its grid spacing is 2^(e - 7)


def greedy_top2(outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n, V) outputs -> greedy id (n,), second id (n,), float64 margin top1 - top2 (n,), ties to the lower id."""
    values = np.asarray(outputs, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] < 2:
        raise ValueError(f"need (n, V >= 2) outputs, got shape {values.shape}")
    order = np.argsort(-values, axis=1, kind="stable")[:, :2]
    top = np.take_along_axis(values, order, axis=1)
    return order[:, 0].astype(np.int32), order[:, 1].astype(np.int32), top[:, 0] - top[:, 1]


def bf16_spacing(values: np.ndarray) -> np.ndarray:
    """Spacing of the bfloat16 grid at each value (float64); at 0 the spacing of [1, 2) scaled to 2^-8."""
    _, exponent = np.frexp(np.abs(np.asarray(values, dtype=np.float64)))  # |x| = m * 2^e, m in [0.5, 1)
    return np.ldexp(1.0, exponent - 1 - BF16_MANTISSA_BITS)


def relative_margin(outputs: np.ndarray) -> np.ndarray:
    """(n, V) outputs -> top-2 margin in bf16 grid steps at the top value (n,)."""
    values = np.asarray(outputs, dtype=np.float64)
    _, _, margin = greedy_top2(values)
    return margin / bf16_spacing(values.max(axis=1))


def select_smallest(ids: np.ndarray, scores: np.ndarray, n: int) -> np.ndarray:
    """Positions of the n smallest scores over distinct ids (ties to the lower id), smallest first."""
    ids, scores = np.asarray(ids, dtype=np.int64), np.asarray(scores, dtype=np.float64)
    if ids.shape != scores.shape or ids.ndim != 1:
        raise ValueError(f"ids {ids.shape} and scores {scores.shape} must be matching vectors")
    if np.isnan(scores).any():
        raise ValueError("NaN margin: the outputs it came from are not finite")
    order = np.lexsort((ids, scores))
    _, first = np.unique(ids[order], return_index=True)  # one row per id: its smallest score
    keep = order[np.sort(first)]
    return keep[:n]


class TextAnswers:
    """What the text tier shows for n probes of one probe set: greedy id, runner-up id, top-2 margin.

    Rows follow `probe_ids`.  The runner-up and the margin are what the stored reference knows;
    a text-only target returns the greedy ids alone.
    """

    __slots__ = ("probe_set", "probe_ids", "greedy", "second", "margin")

    def __init__(
        self, probe_set: str, probe_ids: np.ndarray, greedy: np.ndarray, second: np.ndarray, margin: np.ndarray
    ) -> None:
        self.probe_set = probe_set
        self.probe_ids = np.asarray(probe_ids, dtype=np.int32)
        self.greedy = np.asarray(greedy, dtype=np.int32)
        self.second = np.asarray(second, dtype=np.int32)
        self.margin = np.asarray(margin, dtype=np.float64)
        n = len(self.probe_ids)
        if self.probe_ids.ndim != 1 or any(a.shape != (n,) for a in (self.greedy, self.second, self.margin)):
            raise ValueError(
                f"text answers need matching vectors, got {self.probe_ids.shape}, {self.greedy.shape}, "
                f"{self.second.shape}, {self.margin.shape}"
            )

    @classmethod
    def from_outputs(cls, probe_set: str, probe_ids: np.ndarray, outputs: np.ndarray) -> TextAnswers:
        greedy, second, margin = greedy_top2(outputs)
        return cls(probe_set, probe_ids, greedy, second, margin)

    def __len__(self) -> int:
        return len(self.probe_ids)

    def select(self, ids: np.ndarray) -> TextAnswers:
        """The rows for `ids`, in that order (every id must be present)."""
        index = {int(p): i for i, p in enumerate(self.probe_ids)}
        missing = [int(p) for p in ids if int(p) not in index]
        if missing:
            raise KeyError(f"probe ids not answered: {missing[:5]}")
        rows = np.array([index[int(p)] for p in ids], dtype=np.int64)
        return TextAnswers(
            self.probe_set, self.probe_ids[rows], self.greedy[rows], self.second[rows], self.margin[rows]
        )

    def sorted(self) -> TextAnswers:
        return self.select(np.sort(self.probe_ids))
