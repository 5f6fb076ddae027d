"""The HSPI paper's LD baseline: StandardScaler + linear SVM over the raw output words.

Two encodings, as in the paper's code: each float32 as its 32 IEEE-754 bits (its vision code), and
each float32 split into sign / exponent / mantissa integers (its LLM code).
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import SGDClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from hspi.classifier.evidence import group_sum, softmax
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


class HSPILDBaseline:
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

    def fit(self, values: np.ndarray, y: np.ndarray) -> HSPILDBaseline:
        if self.encoding not in ENCODINGS:
            raise ConfigError(f"unknown encoding {self.encoding!r}; allowed: {', '.join(ENCODINGS)}")
        y = np.asarray(y).astype(str)
        self.classes_ = np.unique(y)
        if len(self.classes_) < 2:
            self.pipeline_ = None
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
        self.pipeline_.fit(encode(values, self.encoding), y)
        return self

    def decision(self, values: np.ndarray) -> np.ndarray:
        if self.pipeline_ is None:
            return np.ones((len(values), 1))
        scores = self.pipeline_.decision_function(encode(values, self.encoding))
        if scores.ndim == 1:  # binary: one margin for the second class
            scores = np.column_stack([-scores, scores])
        return scores

    def posteriors(self, values: np.ndarray, groups: np.ndarray) -> tuple[list[str], np.ndarray]:
        """Margins summed over each group's probes (the paper votes per query; summing is kinder)."""
        return list(self.classes_), softmax(group_sum(self.decision(values), groups), axis=1)
