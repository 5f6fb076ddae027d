"""`IntrinsicClassifier`: one multiclass LightGBM per head over intrinsic features (no reference)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hspi.errors import ModelError
from hspi.classifier.evidence import group_sum, log_prob, softmax
from hspi.classifier.lgbm import MulticlassBooster


class IntrinsicClassifier:
    def __init__(self, *, heads: Sequence[str] = ("hardware", "dtype", "engine", "kernel", "full"),
                 n_estimators: int = 120, num_leaves: int = 15, learning_rate: float = 0.1, random_state: int = 0) -> None:
        self.heads = heads
        self.n_estimators = n_estimators
        self.num_leaves = num_leaves
        self.learning_rate = learning_rate
        self.random_state = random_state

    def fit(self, X: np.ndarray, y: dict[str, np.ndarray]) -> IntrinsicClassifier:
        self.heads_ = {}
        for head in self.heads:
            labels = np.asarray(y[head]).astype(str)
            if len(np.unique(labels)) < 2:
                self.heads_[head] = str(labels[0])  # one value only: the answer is known without a model
                continue
            self.heads_[head] = MulticlassBooster(n_estimators=self.n_estimators, num_leaves=self.num_leaves,
                                                  learning_rate=self.learning_rate,
                                                  random_state=self.random_state).fit(X, labels)
        return self

    def posteriors(self, X: np.ndarray, groups: np.ndarray) -> dict[str, tuple[list[str], np.ndarray]]:
        if not hasattr(self, "heads_"):
            raise ModelError("this IntrinsicClassifier is not fitted yet")
        out = {}
        n_groups = int(groups.max()) + 1
        for head, model in self.heads_.items():
            if isinstance(model, str):
                out[head] = ([model], np.ones((n_groups, 1)))
                continue
            evidence = group_sum(log_prob(model.predict_proba(X)), groups)
            out[head] = (list(model.classes_), softmax(evidence, axis=1))
        return out

    def predict(self, X: np.ndarray, head: str) -> np.ndarray:
        values, post = self.posteriors(X, np.arange(len(X)))[head]
        return np.asarray(values)[post.argmax(axis=1)]
