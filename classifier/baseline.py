"""The HSPI paper's LD baseline: StandardScaler + linear SVM over the raw output words.

Two encodings, as in the paper's code: each float32 as its 32 IEEE-754 bits (its vision code), and
each float32 split into sign / exponent / mantissa integers (its LLM code).
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import SGDClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import validate_data

from hspi.classifier.evidence import group_sum, softmax
from hspi.classifier.lgbm import NotFittedModelError
from hspi.errors import ConfigError

ENCODINGS = ("ieee-bits", "sign-exponent-mantissa")


def encode(values: np.ndarray, encoding: str) -> np.ndarray:
    words = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    if encoding == "ieee-bits":
        shifts = np.arange(31, -1, -1, dtype=np.uint32)
        return ((words[..., None] >> shifts) & np.uint32(1)).reshape(len(values), -1).astype(np.float32)
    if encoding == "sign-exponent-mantissa":
        sign = (words >> np.uint32(31)).astype(np.float32)
        exponent = ((words >> np.uint32(23)) & np.uint32(0xFF)).astype(np.float32)
        mantissa = (words & np.uint32(0x7FFFFF)).astype(np.float32)
        return np.concatenate([sign, exponent, mantissa], axis=1)
    raise ConfigError(f"unknown encoding {encoding!r}; allowed: {', '.join(ENCODINGS)}")


class HSPILDBaseline(ClassifierMixin, BaseEstimator):
    """X: float32 output values (n, k), encoded as `encoding` says; y: one label per row."""

    def __init__(
        self,
        *,
        encoding: str = "sign-exponent-mantissa",
        alpha: float = 1e-4,
        max_iter: int = 15,
        random_state: int = 0,
    ) -> None:
        self.encoding = encoding
        self.alpha = alpha
        self.max_iter = max_iter
        self.random_state = random_state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True  # NaN and inf are bit patterns like any other
        return tags

    def fit(self, X: np.ndarray, y: np.ndarray) -> HSPILDBaseline:
        if self.encoding not in ENCODINGS:
            raise ConfigError(f"unknown encoding {self.encoding!r}; allowed: {', '.join(ENCODINGS)}")
        X, y = validate_data(self, X, y, dtype=np.float32, ensure_all_finite=False)
        self.classes_ = np.unique(y)
        if len(self.classes_) < 2:
            self.pipeline_ = None
            self.n_iter_ = 0
            return self
        # A linear SVM (hinge loss) fitted by SGD for a bounded number of epochs: liblinear's LinearSVC
        # does not converge on these encodings (the paper's LD "could not fit its own training data"
        # either) and took minutes per head here.
        self.pipeline_ = make_pipeline(
            StandardScaler(),
            SGDClassifier(
                loss="hinge", alpha=self.alpha, max_iter=self.max_iter, tol=None, random_state=self.random_state
            ),
        )
        self.pipeline_.fit(encode(X, self.encoding), y)
        self.n_iter_ = self.pipeline_[-1].n_iter_
        return self

    def decision(self, X: np.ndarray) -> np.ndarray:
        """(n, classes) margins, one column per class (a column of ones for a single class)."""
        if not hasattr(self, "pipeline_"):
            raise NotFittedModelError("this HSPILDBaseline is not fitted yet")
        X = validate_data(self, X, reset=False, dtype=np.float32, ensure_all_finite=False)
        if self.pipeline_ is None:
            return np.ones((len(X), 1))
        scores = self.pipeline_.decision_function(encode(X, self.encoding))
        if scores.ndim == 1:  # binary: one margin for the second class
            scores = np.column_stack([-scores, scores])
        return scores

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """scikit-learn's layout: (n,) margins of the second class when there are two classes."""
        scores = self.decision(X)
        return scores[:, 1] if scores.shape[1] == 2 else scores

    def predict(self, X: np.ndarray) -> np.ndarray:
        scores = self.decision(X)  # checks it is fitted first
        return self.classes_[scores.argmax(axis=1)]

    def posteriors(self, values: np.ndarray, groups: np.ndarray) -> tuple[list[str], np.ndarray]:
        """Margins summed over each group's probes (the paper votes per query; summing is kinder)."""
        return list(self.classes_), softmax(group_sum(self.decision(values), groups), axis=1)
