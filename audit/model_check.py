"""Right model first: can the endpoint's answers come from the model the audit names at all?

Two readings of each answer, before any platform is scored:

    vocabulary   the alternatives' texts are tokens of the model's vocabulary.  A server with another
                 tokenizer shows texts this one does not have (or ids out of range): FOREIGN_TOKEN.
    weights      the alternatives are the tokens the model itself ranks first.  Every platform of the
                 same weights (any dtype, quantisation, kernel) keeps most of the top-k of the collected
                 references for that probe; other weights share next to none of it (k of a whole
                 vocabulary, by chance).

An answer whose alternatives are mostly foreign is decisive at once; low overlap must repeat
(`WEIGHT_ANSWERS` answers in a row), because a platform can reorder a flat distribution.  Pure
functions over ids: the engine feeds them and ends the audit with `wrong-model`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hspi.features.tiers import log_softmax_f32, top_ids
from hspi.responses import FOREIGN_TOKEN

FOREIGN_SHARE = 0.5  # at least this share of an answer's alternatives foreign: another tokenizer
MIN_OVERLAP = 0.3  # the best reference class shares less than this share of the top-k: not these weights
WEIGHT_ANSWERS = 2  # answers in a row below MIN_OVERLAP before the weights are ruled out


@dataclass(frozen=True)
class ModelReading:
    foreign: int  # alternatives whose text is no token of the vocabulary
    shown: int  # alternatives shown
    overlap: float | None  # best share of the top-k shared with a collected class (None: not measurable)

    @property
    def foreign_vocabulary(self) -> bool:
        return self.shown > 0 and self.foreign / self.shown >= FOREIGN_SHARE

    @property
    def other_weights(self) -> bool:
        return self.overlap is not None and self.overlap < MIN_OVERLAP


def read_answer(ids: np.ndarray, reference_logits: list[np.ndarray]) -> ModelReading:
    """One answer's ids (best first; negative where unmapped) against each class's stored outputs for its probe."""
    ids = np.asarray(ids)
    shown = int((ids != -1).sum())
    foreign = int((ids == FOREIGN_TOKEN).sum())
    known = {int(i) for i in ids if i >= 0}
    k = len(ids)
    if k < 2 or not reference_logits:  # one token (top1, text) says too little about the weights
        return ModelReading(foreign, shown, None)
    best = 0.0
    for logits in reference_logits:
        ref_top = top_ids(log_softmax_f32(np.asarray(logits, dtype=np.float32)[None]), k)[0]
        best = max(best, len(known & {int(i) for i in ref_top}) / k)
    return ModelReading(foreign, shown, best)


def wrong_model_reason(readings: list[ModelReading]) -> str | None:
    """Why the endpoint does not serve this model, from the readings so far; None while it may."""
    if not readings:
        return None
    last = readings[-1]
    if last.foreign_vocabulary:
        return (
            f"wrong model: {last.foreign} of {last.shown} alternatives of an answer are not tokens of this model's "
            "vocabulary (the endpoint uses another tokenizer)"
        )
    recent = readings[-WEIGHT_ANSWERS:]
    if len(recent) == WEIGHT_ANSWERS and all(r.other_weights for r in recent):
        shares = ", ".join(f"{r.overlap:.2f}" for r in recent)
        return (
            f"wrong model: the endpoint's top tokens share {shares} of the top-k with every collected platform of this "
            f"model, below {MIN_OVERLAP} (any platform of the same weights keeps most of it): other weights"
        )
    return None
