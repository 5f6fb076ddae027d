"""`IntrinsicClassifier`: one multiclass LightGBM per head over intrinsic features (no reference).

Intrinsic features carry the format (dtype) strongly and the engine, kernel or hardware weakly or not
at all. A booster grown to a fixed size on such a head learns the training probes' noise and, summed
over several queries, is confidently wrong. So each head chooses, for each audit size, how many trees
to keep on held-out groups of its training rows (other probes, or another reference model when
testing transfer), and keeps none (the class prior) when no tree helps audits of that size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from hspi.classifier.evidence import group_sum, log_prob, softmax
from hspi.classifier.lgbm import MulticlassBooster
from hspi.errors import ModelError

ROUND_GRID = (5, 10, 20, 40, 80, 120)  # tree counts tried on the validation groups (0 = the prior)
VALIDATION_SHARE = 1 / 3  # of the groups, when there are enough for a random split
VALIDATION_SEED = 5
# trees replace the prior only when their audits beat its audits by more than this many standard
# errors of the paired difference: a gain within noise on validation was a loss as often on test
Z_OVER_PRIOR = 1.0


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


class IntrinsicClassifier:
    def __init__(
        self,
        *,
        heads: Sequence[str] = ("hardware", "dtype", "engine", "kernel", "full"),
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

    def _booster(self, n_estimators: int) -> MulticlassBooster:
        return MulticlassBooster(
            n_estimators=n_estimators,
            num_leaves=self.num_leaves,
            learning_rate=self.learning_rate,
            random_state=self.random_state,
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
            prior = ClassPrior.fit(labels[fit], weight[fit])
            booster = (
                self._booster(self.n_estimators).fit(X[fit], labels[fit], weight[fit])
                if len(np.unique(labels[fit])) >= 2
                else None
            )  # else only the prior is defined on this fold
            classes = prior.classes_
            # audits of the validation fold are scored against its own label shares, as a test is
            shares = ClassPrior.fit(labels[val], weight[val])
            target = log_prob(
                np.array([dict(zip(shares.classes_, shares.probabilities_)).get(c, 0.0) for c in classes])
            )
            per_probe = []
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
                range(len(options)), key=lambda i: (-round(hits[q][i], 9), round(losses[q][i], 9), options[i])
            )
            best = order[0]
            if best and not beats_prior(np.concatenate(paired[q], axis=1)[best - 1]):
                best = 0
            chosen[q] = options[best]
        return chosen

    def fit(
        self,
        X: np.ndarray,
        y: dict[str, np.ndarray],
        *,
        groups: np.ndarray | None = None,
        sample_weight: np.ndarray | None = None,
        targets: np.ndarray | None = None,
        audit_sizes: Sequence[int] = (1,),
    ) -> IntrinsicClassifier:
        """Fit every head. With `groups` (which probe, or which reference model, each row came from),
        each head keeps, per audit size, the tree count that answers audits of held-out groups best,
        possibly none. `targets` (which platform each row's answer came from) lets validation audits
        combine several rows of one target; without it each row is its own target."""
        X = np.asarray(X, dtype=np.float64)
        weight = np.ones(len(X)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        if targets is not None and len(targets) != len(X):
            raise ModelError(f"{len(targets)} targets for {len(X)} rows")
        targets = np.arange(len(X)) if targets is None else np.asarray(targets)
        sizes = tuple(sorted({int(q) for q in audit_sizes}))
        if not sizes or sizes[0] != 1:
            raise ModelError(f"audit sizes must include 1, got {list(audit_sizes)}")
        self.heads_: dict[str, str | ClassPrior | MulticlassBooster] = {}
        self.rounds_: dict[str, dict[int, int]] = {}  # head -> audit size -> trees used (0 = the prior)
        self.priors_: dict[str, np.ndarray] = {}  # head -> training label shares, in the head's class order
        for head in self.heads:
            labels = np.asarray(y[head]).astype(str)
            if len(np.unique(labels)) < 2:
                self.heads_[head] = str(labels[0])  # one value only: the answer is known without a model
                continue
            rounds = (
                {q: self.n_estimators for q in sizes}
                if groups is None
                else self._choose_rounds(X, labels, weight, np.asarray(groups), targets, sizes)
            )
            self.rounds_[head] = rounds
            prior = ClassPrior.fit(labels, weight)
            self.priors_[head] = prior.probabilities_
            grown = max(rounds.values())
            self.heads_[head] = prior if grown == 0 else self._booster(grown).fit(X, labels, weight)
        return self

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
            raise ModelError("this IntrinsicClassifier is not fitted yet")
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
                p = (
                    ClassPrior(classes, self.priors_[head]).predict_proba(X[rows])
                    if k == 0
                    else model.predict_proba(X[rows], num_iteration=int(k))
                )  # type: ignore[union-attr]
                logp[rows] = log_prob(p)
            evidence = group_sum(logp - train_prior + target, groups)
            out[head] = (classes, softmax(evidence, axis=1))
        return out

    def predict(self, X: np.ndarray, head: str) -> np.ndarray:
        values, post = self.posteriors(X, np.arange(len(X)))[head]
        return np.asarray(values)[post.argmax(axis=1)]
