"""`IntrinsicClassifier`: one multiclass LightGBM per head over intrinsic features (no reference).

Intrinsic features carry the format (dtype) strongly and the engine, kernel or hardware weakly or not
at all. A booster grown to a fixed size on such a head learns the training probes' noise and, summed
over several queries, is confidently wrong. So each head chooses how many trees to keep on held-out
groups of its training rows (other probes, or another reference model when testing transfer) by
validation log-loss, and keeps none (the class prior) when no tree helps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from hspi.errors import ModelError
from hspi.classifier.evidence import group_sum, log_prob, softmax
from hspi.classifier.lgbm import MulticlassBooster

ROUND_GRID = (5, 10, 20, 40, 80, 120)  # tree counts tried on the validation groups (0 = the prior)
VALIDATION_SHARE = 1 / 3  # of the groups, when there are enough for a random split
VALIDATION_SEED = 5


class ClassPrior:
    """A head that always answers the training labels' weighted frequencies: the no-evidence answer."""

    def __init__(self, classes: Sequence[str] = (), probabilities: Sequence[float] = ()) -> None:
        self.classes_ = np.asarray(classes, dtype=str)
        self.probabilities_ = np.asarray(probabilities, dtype=np.float64)

    @classmethod
    def fit(cls, y: np.ndarray, sample_weight: np.ndarray | None = None) -> ClassPrior:
        classes, encoded = np.unique(np.asarray(y).astype(str), return_inverse=True)
        weight = np.ones(len(encoded)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        totals = np.bincount(encoded, weights=weight, minlength=len(classes))
        return cls(classes, totals / totals.sum())

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return np.tile(self.probabilities_, (len(X), 1))


def _validation_folds(groups: np.ndarray) -> list[np.ndarray]:
    """Boolean masks of validation rows: leave one group out when there are few, else one random share."""
    unique = np.unique(groups)
    if len(unique) < 2:
        raise ModelError("choosing tree counts needs at least two row groups")
    if len(unique) <= 3:
        return [groups == g for g in unique]
    held = np.random.default_rng(VALIDATION_SEED).permutation(unique)[: max(1, round(len(unique) * VALIDATION_SHARE))]
    return [np.isin(groups, held)]


def _log_loss(classes: np.ndarray, proba: np.ndarray, y: np.ndarray, weight: np.ndarray) -> float:
    """Weighted mean log-loss; a label the fold never trained on scores the probability floor."""
    index = {c: i for i, c in enumerate(classes)}
    col = np.array([index.get(label, -1) for label in y])
    p = np.where(col >= 0, proba[np.arange(len(y)), np.maximum(col, 0)], 0.0)
    return float(-(weight * log_prob(p)).sum() / weight.sum())


class IntrinsicClassifier:
    def __init__(self, *, heads: Sequence[str] = ("hardware", "dtype", "engine", "kernel", "full"),
                 n_estimators: int = 120, num_leaves: int = 15, learning_rate: float = 0.1, random_state: int = 0) -> None:
        self.heads = heads
        self.n_estimators = n_estimators
        self.num_leaves = num_leaves
        self.learning_rate = learning_rate
        self.random_state = random_state

    def _booster(self, n_estimators: int) -> MulticlassBooster:
        return MulticlassBooster(n_estimators=n_estimators, num_leaves=self.num_leaves,
                                 learning_rate=self.learning_rate, random_state=self.random_state)

    def _choose_rounds(self, X: np.ndarray, labels: np.ndarray, weight: np.ndarray, groups: np.ndarray) -> int:
        grid = [k for k in ROUND_GRID if k < self.n_estimators] + [self.n_estimators]
        losses = np.zeros(1 + len(grid))  # [prior, grid...], summed over folds
        for held in _validation_folds(groups):
            fit, val = ~held, held
            prior = ClassPrior.fit(labels[fit], weight[fit])
            losses[0] += _log_loss(prior.classes_, prior.predict_proba(X[val]), labels[val], weight[val])
            if len(np.unique(labels[fit])) < 2:
                losses[1:] += np.inf  # nothing to boost on this fold: only the prior is defined
                continue
            booster = self._booster(self.n_estimators).fit(X[fit], labels[fit], weight[fit])
            for i, k in enumerate(grid, start=1):
                losses[i] += _log_loss(booster.classes_, booster.predict_proba(X[val], num_iteration=k), labels[val], weight[val])
        best = int(np.argmin(losses))  # the first minimum: ties keep fewer trees
        return 0 if best == 0 else grid[best - 1]

    def fit(self, X: np.ndarray, y: dict[str, np.ndarray], *, groups: np.ndarray | None = None,
            sample_weight: np.ndarray | None = None) -> IntrinsicClassifier:
        """Fit every head. With `groups` (which probe, or which reference model, each row came from),
        each head keeps the tree count that predicts held-out groups best, possibly none."""
        X = np.asarray(X, dtype=np.float64)
        weight = np.ones(len(X)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        self.heads_: dict[str, str | ClassPrior | MulticlassBooster] = {}
        self.rounds_: dict[str, int] = {}
        self.priors_: dict[str, np.ndarray] = {}  # head -> training label shares, in the head's class order
        for head in self.heads:
            labels = np.asarray(y[head]).astype(str)
            if len(np.unique(labels)) < 2:
                self.heads_[head] = str(labels[0])  # one value only: the answer is known without a model
                continue
            rounds = self.n_estimators if groups is None else self._choose_rounds(X, labels, weight, np.asarray(groups))
            self.rounds_[head] = rounds
            prior = ClassPrior.fit(labels, weight)
            self.priors_[head] = prior.probabilities_
            self.heads_[head] = prior if rounds == 0 else self._booster(rounds).fit(X, labels, weight)
        return self

    def posteriors(self, X: np.ndarray, groups: np.ndarray, *,
                   prior: Mapping[str, Mapping[str, float]] | None = None) -> dict[str, tuple[list[str], np.ndarray]]:
        """Per head, the posterior over its labels for each group of probes (one audit's answers).

        Each probe's posterior is summed in log space. That counts the prior once per probe, on purpose:
        one platform's probes are far from independent, and treating them as independent likelihoods
        (the prior once per audit) made multi-query answers confidently wrong in the evaluation.
        `prior` (head -> label -> probability) moves each probe's posterior from the training prior to
        the target's (label shift), e.g. to the label shares of the platforms a model is actually
        served on; labels it leaves out are ruled out.
        """
        if not hasattr(self, "heads_"):
            raise ModelError("this IntrinsicClassifier is not fitted yet")
        out = {}
        n_groups = int(groups.max()) + 1
        for head, model in self.heads_.items():
            if isinstance(model, str):
                out[head] = ([model], np.ones((n_groups, 1)))
                continue
            classes = list(model.classes_)
            train_prior = log_prob(self.priors_[head])
            target = train_prior if prior is None or head not in prior else \
                np.log(np.array([prior[head].get(c, 0.0) for c in classes]) + 1e-300)
            evidence = group_sum(log_prob(model.predict_proba(X)) - train_prior + target, groups)
            out[head] = (classes, softmax(evidence, axis=1))
        return out

    def predict(self, X: np.ndarray, head: str) -> np.ndarray:
        values, post = self.posteriors(X, np.arange(len(X)))[head]
        return np.asarray(values)[post.argmax(axis=1)]
