"""scikit-learn estimators over LightGBM boosters, saved as LightGBM text (never pickle).

Every hyper-parameter is an `__init__` argument stored unchanged (so `sklearn.base.clone` works),
`n_jobs` included: LightGBM's thread count.  Fitted state ends in `_`.
"""

from __future__ import annotations

from typing import Any

import lightgbm as lgb
import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import NotFittedError
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _check_sample_weight, validate_data

from hspi.errors import ModelError

DEFAULT_N_JOBS = 2


class NotFittedModelError(ModelError, NotFittedError):
    """A classifier used before `fit` (or `load`): an hspi `ModelError` and sklearn's `NotFittedError`."""


class TrainingDataError(ModelError, ValueError):
    """Training data a head cannot learn from (one class only...): a `ModelError` and a `ValueError`."""


def check_features(estimator: BaseEstimator, X: Any, *, reset: bool) -> np.ndarray:
    """X as a float64 matrix; NaN and inf pass (LightGBM treats NaN as missing), as before."""
    return validate_data(estimator, X, reset=reset, dtype=np.float64, ensure_all_finite=False)


def check_weights(sample_weight: Any, X: np.ndarray) -> np.ndarray | None:
    """Row weights as float64 (n,), non-negative and not all zero; None stays None (LightGBM's unweighted path)."""
    if sample_weight is None:
        return None
    weight = _check_sample_weight(sample_weight, X, ensure_non_negative=True)
    if not (weight > 0).any():
        raise TrainingDataError("Sample weights must contain at least one non-zero number")
    return weight


class _BoosterEstimator(ClassifierMixin, BaseEstimator):
    def __init__(
        self,
        *,
        n_estimators: int = 150,
        num_leaves: int = 15,
        learning_rate: float = 0.1,
        min_child_samples: int = 10,
        random_state: int = 0,
        n_jobs: int = DEFAULT_N_JOBS,
    ) -> None:
        self.n_estimators = n_estimators
        self.num_leaves = num_leaves
        self.learning_rate = learning_rate
        self.min_child_samples = min_child_samples
        self.random_state = random_state
        self.n_jobs = n_jobs

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags

    def _params(self) -> dict[str, Any]:
        return {
            "num_leaves": self.num_leaves,
            "learning_rate": self.learning_rate,
            "min_child_samples": self.min_child_samples,
            "seed": self.random_state,
            "deterministic": True,
            "num_threads": self.n_jobs,
            "verbosity": -1,
            "force_col_wise": True,
        }

    def _check_fitted(self) -> lgb.Booster:
        booster = getattr(self, "booster_", None)
        if booster is None:
            raise NotFittedModelError(f"this {type(self).__name__} is not fitted yet: call fit() or load a saved one")
        return booster

    def _adopt(self, text: str) -> None:
        self.booster_ = lgb.Booster(model_str=text)
        self.n_features_in_ = int(self.booster_.num_feature())

    def to_text(self) -> str:
        return self._check_fitted().model_to_string()

    def predict(self, X: Any) -> np.ndarray:
        proba = self.predict_proba(X)  # checks it is fitted first
        return self.classes_[proba.argmax(axis=1)]


class BinaryBooster(_BoosterEstimator):
    """P(positive | x) with LightGBM's binary objective; `classes_` are y's two values, sorted
    (the second is the positive one)."""

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        return tags

    def fit(self, X: Any, y: Any) -> BinaryBooster:
        X, y = validate_data(self, X, y, dtype=np.float64, ensure_all_finite=False)
        check_classification_targets(y)
        classes, encoded = np.unique(y, return_inverse=True)
        if len(classes) != 2:
            raise TrainingDataError(
                f"Only binary classification is supported: a head needs two classes, got {len(classes)} class(es) "
                f"{classes[:5]}"
            )
        self.classes_ = classes
        data = lgb.Dataset(X, label=encoded.astype(np.float64))
        self.booster_ = lgb.train({**self._params(), "objective": "binary"}, data, num_boost_round=self.n_estimators)
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        booster = self._check_fitted()
        p = np.asarray(booster.predict(check_features(self, X, reset=False)), dtype=np.float64)
        return np.column_stack([1.0 - p, p])

    @classmethod
    def from_text(cls, text: str, classes: Any = (0, 1)) -> BinaryBooster:
        """A fitted booster from LightGBM model text (`classes`: negative, positive)."""
        estimator = cls()
        estimator._adopt(text)
        estimator.classes_ = np.asarray(classes)
        return estimator


class MulticlassBooster(_BoosterEstimator):
    """Class probabilities with LightGBM's multiclass objective; `classes_` are y's values, sorted."""

    def fit(self, X: Any, y: Any, sample_weight: np.ndarray | None = None) -> MulticlassBooster:
        X, y = validate_data(self, X, y, dtype=np.float64, ensure_all_finite=False)
        check_classification_targets(y)
        classes, encoded = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise TrainingDataError(f"need at least two classes to train, got {len(classes)} class(es) {list(classes)}")
        self.classes_ = classes
        data = lgb.Dataset(X, label=encoded, weight=check_weights(sample_weight, X))
        params = {**self._params(), "objective": "multiclass", "num_class": len(classes)}
        self.booster_ = lgb.train(params, data, num_boost_round=self.n_estimators)
        return self

    def predict_proba(self, X: Any, *, num_iteration: int | None = None) -> np.ndarray:
        """Class probabilities; `num_iteration` uses only the first trees (for choosing how many to keep)."""
        booster = self._check_fitted()
        X = check_features(self, X, reset=False)
        p = booster.predict(X, num_iteration=num_iteration)
        return np.asarray(p).reshape(len(X), -1)

    @classmethod
    def from_text(cls, text: str, classes: list[str]) -> MulticlassBooster:
        estimator = cls()
        estimator._adopt(text)
        estimator.classes_ = np.asarray(classes)
        return estimator
