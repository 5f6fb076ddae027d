"""`ReferenceMatcher`: one LightGBM head per label kind, over reference-relative features.

Each head is a binary model P(target and candidate share this head's label | features of the
target's answer against the candidate's stored answer).  A head therefore scores *candidates*, not
a fixed list of classes: per-probe log-odds are summed over queries, a label's score is its best
candidate's, and the `full` head's best candidate probability says how well anything matches
(`unknown` below a threshold calibrated on held-out answers).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hspi.classifier.evidence import group_sum, log_odds, softmax
from hspi.classifier.lgbm import BinaryBooster
from hspi.errors import ModelError
from hspi.platform import HEADS

# Accept this share of known platforms' held-out audits when calibrating "unknown".
DEFAULT_ACCEPT_QUANTILE = 0.01
# Scores are means of probabilities; the same probabilities averaged over another number of probes
# differ in the last bits.  An audit that scores what a calibration audit scored, up to this, is known.
SCORE_TOLERANCE = 1e-9


class ReferenceMatcher:
    def __init__(
        self,
        *,
        heads: Sequence[str] = HEADS,
        n_estimators: int = 120,
        num_leaves: int = 15,
        learning_rate: float = 0.1,
        random_state: int = 0,
    ) -> None:
        self.heads = heads
        self.n_estimators = n_estimators
        self.num_leaves = num_leaves
        self.learning_rate = learning_rate
        self.random_state = random_state

    def fit(self, X: np.ndarray, same: dict[str, np.ndarray]) -> ReferenceMatcher:
        """X (N, F): pair features; same[head] (N,): whether target and candidate share that label."""
        unknown = [h for h in self.heads if h not in HEADS]
        if unknown:
            raise ModelError(f"unknown heads {unknown}; allowed: {', '.join(HEADS)}")
        self.heads_ = {}
        for head in self.heads:
            labels = np.asarray(same[head])
            if labels.all():  # every pair agrees (e.g. one engine only): nothing to learn, always "same"
                self.heads_[head] = None
                continue
            self.heads_[head] = BinaryBooster(
                n_estimators=self.n_estimators,
                num_leaves=self.num_leaves,
                learning_rate=self.learning_rate,
                random_state=self.random_state,
            ).fit(X, labels)
        self.threshold_ = 0.5
        return self

    def pair_probabilities(self, X: np.ndarray) -> dict[str, np.ndarray]:
        """X (n, C, F) for n probes against C candidates -> per head (n, C) probabilities."""
        if not hasattr(self, "heads_"):
            raise ModelError("this ReferenceMatcher is not fitted yet")
        n, c, f = X.shape
        flat = X.reshape(n * c, f)
        return {
            h: (np.ones(n * c) if m is None else m.predict_proba(flat)[:, 1]).reshape(n, c)
            for h, m in self.heads_.items()
        }

    def posteriors(
        self,
        probs: dict[str, np.ndarray],
        candidate_labels: Sequence[dict[str, str]],
        groups: np.ndarray,
        *,
        from_full: bool = True,
    ) -> dict[str, tuple[list[str], np.ndarray]]:
        """Per head: (label values, (G, L) posterior) for each group of probes answered by one target.

        With `from_full` (a known platform) a head's posterior is the `full` posterior summed over the
        candidates carrying each label: the closest stored answer decides.  Without it (nothing
        matches) each head's own model scores the labels: a platform never collected can still
        show, say, its dtype.
        """
        full_evidence = group_sum(log_odds(probs["full"]), groups)  # (G, C)
        full_post = softmax(full_evidence, axis=1)
        out = {}
        for head, p in probs.items():
            values = sorted({labels[head] for labels in candidate_labels})
            member = np.array([[labels[head] == v for labels in candidate_labels] for v in values])  # (L, C)
            if from_full or head == "full":
                out[head] = (values, full_post @ member.T.astype(np.float64))
                continue
            evidence = group_sum(log_odds(p), groups)
            scores = np.where(member[None, :, :], evidence[:, None, :], -np.inf).max(axis=2)  # (G, L)
            out[head] = (values, softmax(scores, axis=1))
        return out

    @staticmethod
    def match_scores(full_probs: np.ndarray, groups: np.ndarray) -> np.ndarray:
        """(G,) how well the best candidate matches: its mean `full` probability over the group's probes."""
        counts = np.bincount(groups).astype(np.float64)
        return (group_sum(full_probs, groups) / counts[:, None]).max(axis=1)

    def calibrate(self, known_scores: np.ndarray, quantile: float = DEFAULT_ACCEPT_QUANTILE) -> ReferenceMatcher:
        """Set the `unknown` threshold from held-out audits of known platforms."""
        self.threshold_ = float(np.quantile(known_scores, quantile)) - SCORE_TOLERANCE if len(known_scores) else 0.5
        return self
