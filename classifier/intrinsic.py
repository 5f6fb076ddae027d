"""`IntrinsicClassifier`: one multiclass LightGBM per head over intrinsic features (no reference).

Intrinsic features carry the format (dtype) strongly and the engine, kernel or hardware weakly or not
at all. A booster grown to a fixed size on such a head learns the training probes' noise and, summed
over several queries, is confidently wrong. So each head chooses, for each audit size, how many trees
to keep on held-out groups of its training rows (other probes, or another reference model when
testing transfer), and keeps none (the class prior) when no tree helps audits of that size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import validate_data

from hspi.classifier.evidence import group_sum, log_prob, softmax
from hspi.classifier.lgbm import (
    DEFAULT_N_JOBS,
    MulticlassBooster,
    NotFittedModelError,
    TrainingDataError,
    check_features,
    check_weights,
)
from hspi.errors import ModelError

ROUND_GRID = (5, 10, 20, 40, 80, 120)  # tree counts tried on the validation groups (0 = the prior)
VALIDATION_SHARE = 1 / 3  # of the groups, when there are enough for a random split
VALIDATION_SEED = 5
# trees replace the prior only when their audits beat its audits by more than this many standard
# errors of the paired difference: a gain within noise on validation was a loss as often on test
Z_OVER_PRIOR = 1.0


class ClassPrior(ClassifierMixin, BaseEstimator):
    """A head that always answers the training labels' weighted frequencies: the no-evidence answer.

    No hyper-parameters; `fit` reads X only for its row count."""

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        tags.classifier_tags.poor_score = True  # it ignores the features on purpose
        return tags

    def fit(self, X: Any, y: Any, sample_weight: np.ndarray | None = None) -> ClassPrior:
        X, y = validate_data(self, X, y, dtype=np.float64, ensure_all_finite=False)
        check_classification_targets(y)
        classes, encoded = np.unique(y, return_inverse=True)
        weight = check_weights(sample_weight, X)
        weight = np.ones(len(encoded)) if weight is None else weight
        totals = np.bincount(encoded, weights=weight, minlength=len(classes))
        self.classes_ = classes
        self.probabilities_ = totals / totals.sum()
        return self

    @classmethod
    def from_probabilities(cls, classes: Sequence[str], probabilities: Sequence[float]) -> ClassPrior:
        """A fitted prior from its classes and their probabilities (a saved head, or a booster's prior)."""
        prior = cls()
        prior.classes_ = np.asarray(classes, dtype=str)
        prior.probabilities_ = np.asarray(probabilities, dtype=np.float64)
        return prior

    def predict_proba(self, X: Any) -> np.ndarray:
        if not hasattr(self, "probabilities_"):
            raise NotFittedModelError("this ClassPrior is not fitted yet")
        if hasattr(self, "n_features_in_"):
            X = check_features(self, X, reset=False)
        return np.tile(self.probabilities_, (len(X), 1))

    def predict(self, X: Any) -> np.ndarray:
        proba = self.predict_proba(X)  # checks it is fitted first
        return self.classes_[proba.argmax(axis=1)]


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


def beats_prior(gain: np.ndarray, z: float = Z_OVER_PRIOR) -> bool:
    """Whether per-audit gains over the prior (weighted [trees right] - [prior right]) have a mean
    above `z` standard errors: a gain within noise on validation audits is no reason to leave the prior."""
    gain = np.asarray(gain, dtype=np.float64)
    if len(gain) < 2:
        return False
    return bool(gain.mean() > z * gain.std(ddof=1) / np.sqrt(len(gain)))


def _audits(targets: np.ndarray, rows: np.ndarray, size: int) -> np.ndarray:
    """Group id per row of `rows` (-1: left over): consecutive runs of `size` rows of one target."""
    out = -np.ones(len(rows), dtype=np.int64)
    n = 0
    for t in np.unique(targets[rows]):
        mine = np.flatnonzero(targets[rows] == t)
        k = len(mine) // size
        out[mine[: k * size]] = n + np.repeat(np.arange(k), size)
        n += k
    return out


class IntrinsicClassifier(ClassifierMixin, BaseEstimator):
    """One multiclass head per label kind.  `y` is 2-D (n_samples, len(heads)): each row's label per
    head, columns in `heads` order; a 1-D `y` is the one column of a single head, and then `predict`
    answers 1-D too (scikit-learn's multi-output convention).  `audit_sizes` are the audit sizes
    (numbers of probes of one target) the tree counts are chosen for; they must include 1."""

    def __init__(
        self,
        *,
        heads: Sequence[str] = ("hardware", "dtype", "engine", "kernel", "full"),
        n_estimators: int = 120,
        num_leaves: int = 15,
        learning_rate: float = 0.1,
        random_state: int = 0,
        audit_sizes: Sequence[int] = (1,),
        n_jobs: int = DEFAULT_N_JOBS,
    ) -> None:
        self.heads = heads
        self.n_estimators = n_estimators
        self.num_leaves = num_leaves
        self.learning_rate = learning_rate
        self.random_state = random_state
        self.audit_sizes = audit_sizes
        self.n_jobs = n_jobs

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        tags.target_tags.multi_output = True
        return tags

    def _booster(self, n_estimators: int) -> MulticlassBooster:
        return MulticlassBooster(
            n_estimators=n_estimators,
            num_leaves=self.num_leaves,
            learning_rate=self.learning_rate,
            random_state=self.random_state,
            n_jobs=self.n_jobs,
        )

    def _choose_rounds(
        self,
        X: np.ndarray,
        labels: np.ndarray,
        weight: np.ndarray,
        groups: np.ndarray,
        targets: np.ndarray,
        audit_sizes: Sequence[int],
    ) -> dict[int, int]:
        """Per audit size: the tree count (0 = the prior) whose audits of that many held-out rows of one
        target are answered best over the validation folds: highest weighted accuracy (what an audit
        reports), then lowest log-loss, then fewest trees; and the prior unless that count's audits
        beat the prior's by more than one standard error of their paired difference.  (Requiring
        trees to help in the worst fold instead was tried: it kept more trees on heads that do not
        transfer, not fewer; picking the fewest trees within one standard error of the best dropped
        real signal, e.g. mlp heldout engine 0.81 -> 0.72.)"""
        grid = [k for k in ROUND_GRID if k < self.n_estimators] + [self.n_estimators]
        options = [0] + grid
        hits = {q: np.zeros(len(options)) for q in audit_sizes}
        paired: dict[int, list[np.ndarray]] = {
            q: [] for q in audit_sizes
        }  # per audit: w * ([trees right] - [prior right])
        losses = {q: np.zeros(len(options)) for q in audit_sizes}
        folds = {q: 0 for q in audit_sizes}
        for held in _validation_folds(groups):
            fit, val = np.flatnonzero(~held), np.flatnonzero(held)
            prior = ClassPrior().fit(X[fit], labels[fit], weight[fit])
            booster = (
                self._booster(self.n_estimators).fit(X[fit], labels[fit], weight[fit])
                if len(np.unique(labels[fit])) >= 2
                else None
            )  # else only the prior is defined on this fold
            classes = prior.classes_
            # audits of the validation fold are scored against its own label shares, as a test is
            shares = ClassPrior().fit(X[val], labels[val], weight[val])
            target = log_prob(
                np.array([dict(zip(shares.classes_, shares.probabilities_)).get(c, 0.0) for c in classes])
            )
            per_probe: list[np.ndarray | None] = []
            for k in options:
                if k == 0:
                    p = prior.predict_proba(X[val])
                elif booster is None:
                    per_probe.append(None)
                    continue
                else:
                    p = booster.predict_proba(X[val], num_iteration=k)
                per_probe.append(log_prob(p) - log_prob(prior.probabilities_) + target)
            for q in audit_sizes:
                audit = _audits(targets, val, q)
                keep = audit >= 0
                if not keep.any():
                    continue
                folds[q] += 1
                first = np.unique(audit[keep], return_index=True)[1]  # one row per audit: its label and weight
                truth, w = labels[val][keep][first], weight[val][keep][first]
                right = []
                for i, logp in enumerate(per_probe):
                    if logp is None:
                        hits[q][i], losses[q][i] = -np.inf, np.inf
                        right.append(np.zeros(len(truth)))
                        continue
                    post = softmax(group_sum(logp[keep], audit[keep]), axis=1)
                    right.append(w * (classes[post.argmax(axis=1)] == truth) / w.mean())
                    hits[q][i] += float(right[-1].mean())
                    losses[q][i] += _log_loss(classes, post, truth, w)
                paired[q].append(np.stack(right[1:]) - right[0])
        chosen: dict[int, int] = {}
        for q in audit_sizes:
            if not folds[q]:  # no fold held an audit this large: keep the next smaller size's choice
                chosen[q] = chosen[max(chosen)] if chosen else 0
                continue
            order = sorted(
                range(len(options)),
                key=lambda i: (-round(float(hits[q][i]), 9), round(float(losses[q][i]), 9), options[i]),
            )
            best = order[0]
            if best and not beats_prior(np.concatenate(paired[q], axis=1)[best - 1]):
                best = 0
            chosen[q] = options[best]
        return chosen

    def fit(
        self,
        X: Any,
        y: Any,
        *,
        groups: np.ndarray | None = None,
        sample_weight: np.ndarray | None = None,
        targets: np.ndarray | None = None,
    ) -> IntrinsicClassifier:
        """Fit every head on X (N, F) and y (N, len(heads)) labels. With `groups` (which probe, or which
        reference model, each row came from), each head keeps, per audit size, the tree count that
        answers audits of held-out groups best, possibly none. `targets` (which platform each row's
        answer came from) lets validation audits combine several rows of one target; without it each
        row is its own target."""
        X, Y = validate_data(self, X, y, multi_output=True, dtype=np.float64, ensure_all_finite=False)
        self.single_output_ = Y.ndim == 1
        Y = Y.reshape(len(Y), -1)
        check_classification_targets(Y)
        if Y.shape != (len(X), len(self.heads)):
            raise TrainingDataError(
                f"y has shape {np.shape(y)}; expected ({len(X)}, {len(self.heads)}): one column per head"
            )
        weight = np.ones(len(X)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        if targets is not None and len(targets) != len(X):
            raise ModelError(f"{len(targets)} targets for {len(X)} rows")
        targets = np.arange(len(X)) if targets is None else np.asarray(targets)
        sizes = tuple(sorted({int(q) for q in self.audit_sizes}))
        if not sizes or sizes[0] != 1:
            raise ModelError(f"audit sizes must include 1, got {list(self.audit_sizes)}")
        self.heads_: dict[str, str | ClassPrior | MulticlassBooster] = {}
        self.rounds_: dict[str, dict[int, int]] = {}  # head -> audit size -> trees used (0 = the prior)
        self.priors_: dict[str, np.ndarray] = {}  # head -> training label shares, in the head's class order
        for column, head in enumerate(self.heads):
            labels = Y[:, column]
            if len(np.unique(labels)) < 2:
                self.heads_[head] = str(labels[0])  # one value only: the answer is known without a model
                continue
            rounds = (
                {q: self.n_estimators for q in sizes}
                if groups is None
                else self._choose_rounds(X, labels, weight, np.asarray(groups), targets, sizes)
            )
            self.rounds_[head] = rounds
            prior = ClassPrior().fit(X, labels, weight)
            self.priors_[head] = prior.probabilities_
            grown = max(rounds.values())
            self.heads_[head] = prior if grown == 0 else self._booster(grown).fit(X, labels, weight)
        per_head = [np.asarray(self.head_classes(h)) for h in self.heads_]
        self.classes_ = per_head[0] if self.single_output_ else per_head
        return self

    def head_classes(self, head: str) -> list[str]:
        model = self.heads_[head]
        return [model] if isinstance(model, str) else list(model.classes_)

    def rounds_for(self, head: str, audit_size: int) -> int:
        """Trees an audit of `audit_size` answers uses: those chosen for the largest size not above it."""
        rounds = self.rounds_[head]
        return rounds[max(q for q in rounds if q <= max(audit_size, 1))]

    def posteriors(
        self, X: np.ndarray, groups: np.ndarray, *, prior: Mapping[str, Mapping[str, float]] | None = None
    ) -> dict[str, tuple[list[str], np.ndarray]]:
        """Per head, the posterior over its labels for each group of probes (one audit's answers).

        Each probe's posterior is summed in log space. That counts the prior once per probe, on purpose:
        one platform's probes are far from independent, and treating them as independent likelihoods
        (the prior once per audit) made multi-query answers confidently wrong in the evaluation.
        `prior` (head -> label -> probability) moves each probe's posterior from the training prior to
        the target's (label shift), e.g. to the label shares of the platforms a model is actually
        served on; labels it leaves out are ruled out.
        """
        if not hasattr(self, "heads_"):
            raise NotFittedModelError("this IntrinsicClassifier is not fitted yet")
        out = {}
        n_groups = int(groups.max()) + 1
        sizes = np.bincount(groups, minlength=n_groups)
        for head, model in self.heads_.items():
            if isinstance(model, str):
                out[head] = ([model], np.ones((n_groups, 1)))
                continue
            classes = list(model.classes_)
            train_prior = log_prob(self.priors_[head])
            target = (
                train_prior
                if prior is None or head not in prior
                else np.log(np.array([prior[head].get(c, 0.0) for c in classes]) + 1e-300)
            )
            # each audit uses the trees chosen for its size
            trees = np.array([self.rounds_for(head, n) for n in sizes])[groups]
            logp = np.zeros((len(X), len(classes)))
            for k in np.unique(trees):
                rows = trees == k
                if k == 0:
                    p = ClassPrior.from_probabilities(classes, list(self.priors_[head])).predict_proba(X[rows])
                else:
                    p = model.predict_proba(X[rows], num_iteration=int(k))  # type: ignore[union-attr,call-arg]
                logp[rows] = log_prob(p)
            evidence = group_sum(logp - train_prior + target, groups)
            out[head] = (classes, softmax(evidence, axis=1))
        return out

    def predict_proba(self, X: Any) -> list[np.ndarray] | np.ndarray:
        """Per head (in `heads` order), (n, labels) posteriors with each row its own audit of one probe;
        one array when fitted on a 1-D y."""
        X = np.asarray(X, dtype=np.float64)
        posts = self.posteriors(X, np.arange(len(X)))
        out = [posts[h][1] for h in self.heads]
        return out[0] if getattr(self, "single_output_", False) else out

    def predict(self, X: Any) -> np.ndarray:
        """(n, len(heads)) labels, each row its own audit of one probe; (n,) when fitted on a 1-D y."""
        X = np.asarray(X, dtype=np.float64)
        posts = self.posteriors(X, np.arange(len(X)))
        out = np.column_stack([np.asarray(posts[h][0])[posts[h][1].argmax(axis=1)] for h in self.heads])
        return out[:, 0] if getattr(self, "single_output_", False) else out
