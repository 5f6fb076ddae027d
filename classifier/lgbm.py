"""Small scikit-learn-style wrappers over LightGBM boosters, saved as LightGBM text (never pickle)."""

from __future__ import annotations

from typing import Any

import lightgbm as lgb
import numpy as np

from hspi.errors import ModelError


class _BoosterEstimator:
    def __init__(
        self,
        *,
        n_estimators: int = 150,
        num_leaves: int = 15,
        learning_rate: float = 0.1,
        min_child_samples: int = 10,
        random_state: int = 0,
    ) -> None:
        self.n_estimators = n_estimators
        self.num_leaves = num_leaves
        self.learning_rate = learning_rate
        self.min_child_samples = min_child_samples
        self.random_state = random_state

    def _params(self) -> dict[str, Any]:
        return {
            "num_leaves": self.num_leaves,
            "learning_rate": self.learning_rate,
            "min_child_samples": self.min_child_samples,
            "seed": self.random_state,
            "deterministic": True,
            "num_threads": 2,
            "verbosity": -1,
            "force_col_wise": True,
        }

    def _check_fitted(self) -> lgb.Booster:
        booster = getattr(self, "booster_", None)
        if booster is None:
            raise ModelError(f"this {type(self).__name__} is not fitted yet: call fit() or load a saved one")
        return booster

    def to_text(self) -> str:
        return self._check_fitted().model_to_string()


class BinaryBooster(_BoosterEstimator):
    """P(positive | x) with LightGBM's binary objective."""

    def fit(self, X: np.ndarray, y: np.ndarray) -> BinaryBooster:
        y = np.asarray(y, dtype=np.float64)
        if len(np.unique(y)) < 2:
            raise ModelError("a binary head needs positive and negative examples")
        data = lgb.Dataset(np.asarray(X, dtype=np.float64), label=y)
        self.booster_ = lgb.train({**self._params(), "objective": "binary"}, data, num_boost_round=self.n_estimators)
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        p = self._check_fitted().predict(np.asarray(X, dtype=np.float64))
        return np.column_stack([1.0 - p, p])

    @classmethod
    def from_text(cls, text: str) -> BinaryBooster:
        estimator = cls()
        estimator.booster_ = lgb.Booster(model_str=text)
        return estimator


class MulticlassBooster(_BoosterEstimator):
    """Class probabilities with LightGBM's multiclass objective; `classes_` are label strings."""

    def fit(self, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None) -> MulticlassBooster:
        classes, encoded = np.unique(np.asarray(y).astype(str), return_inverse=True)
        if len(classes) < 2:
            raise ModelError(f"need at least two classes to train, got {list(classes)}")
        self.classes_ = classes
        data = lgb.Dataset(np.asarray(X, dtype=np.float64), label=encoded, weight=sample_weight)
        params = {**self._params(), "objective": "multiclass", "num_class": len(classes)}
        self.booster_ = lgb.train(params, data, num_boost_round=self.n_estimators)
        return self

    def predict_proba(self, X: np.ndarray, *, num_iteration: int | None = None) -> np.ndarray:
        """Class probabilities; `num_iteration` uses only the first trees (for choosing how many to keep)."""
        p = self._check_fitted().predict(np.asarray(X, dtype=np.float64), num_iteration=num_iteration)
        return np.asarray(p).reshape(len(X), -1)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(axis=1)]

    @classmethod
    def from_text(cls, text: str, classes: list[str]) -> MulticlassBooster:
        estimator = cls()
        estimator.booster_ = lgb.Booster(model_str=text)
        estimator.classes_ = np.asarray(classes)
        return estimator
