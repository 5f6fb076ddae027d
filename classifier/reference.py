"""`ReferenceMatcher`: one LightGBM head per label kind, over reference-relative features.

Each head is a binary model P(target and candidate share this head's label | features of the
target's answer against the candidate's stored answer).  A head therefore scores *candidates*, not
a fixed list of classes: per-probe log-odds are summed over queries, a label's score is its best
candidate's, and the `full` head's best candidate probability says how well anything matches
(`unknown` below a threshold calibrated on held-out answers: `CalibratedMatcher`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import validate_data

from hspi.classifier.evidence import group_sum, log_odds, softmax
from hspi.classifier.lgbm import (
    DEFAULT_N_JOBS,
    BinaryBooster,
    NotFittedModelError,
    TrainingDataError,
    check_features,
)
from hspi.errors import ModelError
from hspi.platform import HEADS

# Accept this share of known platforms' held-out audits when calibrating "unknown".
DEFAULT_ACCEPT_QUANTILE = 0.01
# Scores are means of probabilities; the same probabilities averaged over another number of probes
# differ in the last bits.  An audit that scores what a calibration audit scored, up to this, is known.
SCORE_TOLERANCE = 1e-9


# The threshold of a matcher nobody calibrated: a best candidate more likely the same than not.
UNCALIBRATED_THRESHOLD = 0.5


class ReferenceMatcher(ClassifierMixin, BaseEstimator):
    """Binary heads over pair features X (N, F).  `y` is 2-D (N, len(heads)): whether target and
    candidate share each head's label, columns in `heads` order; a 1-D `y` is the one column of a
    single head (then `predict` answers 1-D too).  `threshold_` is the uncalibrated 0.5; a calibrated
    `unknown` threshold comes from wrapping the fitted matcher in `CalibratedMatcher`."""

    def __init__(
        self,
        *,
        heads: Sequence[str] = HEADS,
        n_estimators: int = 120,
        num_leaves: int = 15,
        learning_rate: float = 0.1,
        random_state: int = 0,
        n_jobs: int = DEFAULT_N_JOBS,
    ) -> None:
        self.heads = heads
        self.n_estimators = n_estimators
        self.num_leaves = num_leaves
        self.learning_rate = learning_rate
        self.random_state = random_state
        self.n_jobs = n_jobs

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        tags.target_tags.multi_output = True
        tags.classifier_tags.multi_class = False
        return tags

    def fit(self, X: Any, y: Any) -> ReferenceMatcher:
        """X (N, F): pair features; y (N, len(heads)): whether target and candidate share each head's label."""
        unknown = [h for h in self.heads if h not in HEADS]
        if unknown:
            raise ModelError(f"unknown heads {unknown}; allowed: {', '.join(HEADS)}")
        X, Y = validate_data(self, X, y, multi_output=True, dtype=np.float64, ensure_all_finite=False)
        self.single_output_ = Y.ndim == 1
        Y = Y.reshape(len(Y), -1)
        if Y.shape != (len(X), len(self.heads)):
            raise TrainingDataError(
                f"y has shape {np.shape(y)}; expected ({len(X)}, {len(self.heads)}): one column per head"
            )
        if Y.dtype != bool and not np.isin(Y, (0, 1)).all():
            raise TrainingDataError(
                "Only binary classification is supported: y says, per head, whether target and candidate "
                "share the label (0/1 or bool)"
            )
        self.heads_: dict[str, BinaryBooster | None] = {}
        for column, head in enumerate(self.heads):
            labels = Y[:, column].astype(bool)
            if labels.all():  # every pair agrees (e.g. one engine only): nothing to learn, always "same"
                self.heads_[head] = None
                continue
            self.heads_[head] = BinaryBooster(
                n_estimators=self.n_estimators,
                num_leaves=self.num_leaves,
                learning_rate=self.learning_rate,
                random_state=self.random_state,
                n_jobs=self.n_jobs,
            ).fit(X, labels)
        self.classes_ = np.array([False, True]) if self.single_output_ else [np.array([False, True])] * len(self.heads)
        self.threshold_ = UNCALIBRATED_THRESHOLD
        return self

    def pair_probabilities(self, X: np.ndarray) -> dict[str, np.ndarray]:
        """X (n, C, F) for n probes against C candidates -> per head (n, C) probabilities."""
        if not hasattr(self, "heads_"):
            raise NotFittedModelError("this ReferenceMatcher is not fitted yet")
        n, c, f = X.shape
        flat = X.reshape(n * c, f)
        return {
            h: (np.ones(n * c) if m is None else m.predict_proba(flat)[:, 1]).reshape(n, c)
            for h, m in self.heads_.items()
        }

    def predict_proba(self, X: Any) -> list[np.ndarray] | np.ndarray:
        """Per head (in `heads` order), (N, 2) probabilities of [different, same] for pair features X (N, F)."""
        if not hasattr(self, "heads_"):
            raise NotFittedModelError("this ReferenceMatcher is not fitted yet")
        X = check_features(self, X, reset=False)
        p = self.pair_probabilities(X.reshape(len(X), 1, -1))
        out = [np.column_stack([1.0 - p[h][:, 0], p[h][:, 0]]) for h in self.heads]
        return out[0] if self.single_output_ else out  # type: ignore[return-value]  # sklearn: a list per output

    def predict(self, X: Any) -> np.ndarray:
        """(N, len(heads)) whether each pair shares each head's label; (N,) when fitted on a 1-D y."""
        proba: Any = self.predict_proba(X)  # one (N, 2) array, or one per head
        if self.single_output_:
            return proba[:, 1] > 0.5
        return np.column_stack([p[:, 1] > 0.5 for p in proba])

    def posteriors(
        self,
        probs: dict[str, np.ndarray],
        candidate_labels: Sequence[dict[str, str]],
        groups: np.ndarray,
        *,
        from_full: bool = True,
        offset: np.ndarray | None = None,
    ) -> dict[str, tuple[list[str], np.ndarray]]:
        """Per head: (label values, (G, L) posterior) for each group of probes answered by one target.
        `offset` (G, C): log weights added to the `full` evidence (answers under batching, `classifier.batched`).

        With `from_full` (a known platform) a head's posterior is the `full` posterior summed over the
        candidates carrying each label: the closest stored answer decides.  Without it (nothing
        matches) each head's own model scores the labels: a platform never collected can still
        show, say, its dtype.
        """
        full_evidence = group_sum(log_odds(probs["full"]), groups)  # (G, C)
        if offset is not None:
            full_evidence = full_evidence + offset
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


class CalibratedMatcher(BaseEstimator):
    """A fitted `ReferenceMatcher` plus the `unknown` threshold calibrated on held-out audits of known
    platforms: `CalibratedMatcher(matcher).fit(scores)`, `scores` the match scores of those audits.

    The wrapped matcher is used as it is (prefit), never refitted or changed; `clone` copies the
    parameters, so a clone wraps an unfitted copy (wrap the matcher in `sklearn.frozen.FrozenEstimator`
    to keep it through a clone).  Scoring (`pair_probabilities`, `posteriors`, `match_scores`,
    `predict`, `predict_proba`) is the matcher's."""

    def __init__(self, matcher: ReferenceMatcher | None = None, *, quantile: float = DEFAULT_ACCEPT_QUANTILE) -> None:
        self.matcher = matcher
        self.quantile = quantile

    def fit(self, X: Any, y: Any = None) -> CalibratedMatcher:
        """X (n,): match scores of held-out audits of known platforms; the threshold accepts all but
        `quantile` of them (0.5, uncalibrated, when there are none)."""
        if self.matcher is None:
            raise ModelError("CalibratedMatcher needs a fitted ReferenceMatcher")
        scores = np.asarray(X, dtype=np.float64).reshape(-1)
        self.threshold_ = (
            float(np.quantile(scores, self.quantile)) - SCORE_TOLERANCE if len(scores) else UNCALIBRATED_THRESHOLD
        )
        return self

    @classmethod
    def from_threshold(cls, matcher: ReferenceMatcher, threshold: float, **params: Any) -> CalibratedMatcher:
        """A calibrated matcher from a threshold saved earlier."""
        calibrated = cls(matcher, **params)
        calibrated.threshold_ = float(threshold)
        return calibrated

    @property
    def heads_(self) -> dict[str, BinaryBooster | None]:
        return self._fitted_matcher().heads_

    def _fitted_matcher(self) -> ReferenceMatcher:
        if self.matcher is None or not hasattr(self.matcher, "heads_"):
            raise NotFittedModelError("the matcher of this CalibratedMatcher is not fitted")
        return self.matcher

    def pair_probabilities(self, X: np.ndarray) -> dict[str, np.ndarray]:
        return self._fitted_matcher().pair_probabilities(X)

    def posteriors(
        self,
        probs: dict[str, np.ndarray],
        candidate_labels: Sequence[dict[str, str]],
        groups: np.ndarray,
        *,
        from_full: bool = True,
        offset: np.ndarray | None = None,
    ) -> dict[str, tuple[list[str], np.ndarray]]:
        return self._fitted_matcher().posteriors(probs, candidate_labels, groups, from_full=from_full, offset=offset)

    match_scores = staticmethod(ReferenceMatcher.match_scores)

    def predict_proba(self, X: Any) -> list[np.ndarray] | np.ndarray:
        return self._fitted_matcher().predict_proba(X)

    def predict(self, X: Any) -> np.ndarray:
        return self._fitted_matcher().predict(X)
