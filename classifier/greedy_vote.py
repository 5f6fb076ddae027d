"""`GreedyVote`: which equivalence class answered, from greedy tokens alone (the `text` tier).

Each class's stored reference gives, for every probe it knows (kinds `pool` and `border`), the
greedy token e and the runner-up r.  A platform of class c answers probe j with

    P(e_cj) = 1 - eps_c,   P(r_cj) = eps_c (1 - rho),   any other token: eps_c rho / (V - 2)

where eps_c, the class's error rate, is measured from independent repeated runs (disagreements
over repeats, never below `epsilon_floor`), and rho (`off_runner_up`) is the share of deviations
that land elsewhere than on the runner-up.  Queries are independent given the class, so
log-likelihoods add; the class posterior is their softmax under a uniform prior, and a head's
posterior sums the classes that share its label (a class merging several labels keeps its
'a|b' label, as `hspi.equivalence` names it).

`unknown`: the alternative hypothesis is "some platform of this model that is not in the
reference": its answer to probe j is the mixture of the classes' answer distributions, plus
`unknown_mix` spread over the whole vocabulary.  The match score is the per-query mean
log-likelihood ratio of the best class against that alternative; below `threshold_`
(calibrated on held-out answers of known platforms) the verdict is unknown.

`information_gain` ranks unused probes by the mutual information between the class (under the
current posterior) and the token the probe would return: a sequential audit asks the best next.

Fitted attributes end in `_`; the estimator saves to and loads from JSON only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator

from hspi.errors import ConfigError, ModelError
from hspi.platform import HEADS

VOTE_FORMAT = "hspi-greedy-vote/1"
# A run of one platform is all the repetition we have; 1 in 100 is the least we assume a
# re-run (another machine of the same class, another day) disagrees on a border prompt.
EPSILON_FLOOR = 0.01
OFF_RUNNER_UP = 0.1  # a deviating answer is the runner-up 9 times in 10 (a flipped near-tie)
UNKNOWN_MIX = 0.01  # the unknown alternative keeps this share for tokens no class predicts
DEFAULT_THRESHOLD = -1.0  # per-query log-likelihood ratio before calibration: ~one runner-up answer in 4
DEFAULT_ACCEPT_QUANTILE = 0.01  # calibration: accept this share of held-out known audits as unknown

Answers = Mapping[str, tuple[Any, Any]]  # kind -> (probe ids, observed greedy ids)


@dataclass(frozen=True)
class TextVerdict:
    """A vote's reading of n greedy answers."""

    ranked: list[tuple[str, float]]  # (class, posterior), best first
    heads: dict[str, tuple[str, float]]  # head -> (best label, its posterior)
    unknown: bool
    score: float  # per-query log-likelihood ratio of the best class against "unknown"
    n_queries: int
    head_posteriors: dict[str, dict[str, float]] = field(default_factory=dict)


class GreedyVote(BaseEstimator):
    def __init__(
        self,
        *,
        epsilon_floor: float = EPSILON_FLOOR,
        off_runner_up: float = OFF_RUNNER_UP,
        unknown_mix: float = UNKNOWN_MIX,
    ) -> None:
        self.epsilon_floor = epsilon_floor
        self.off_runner_up = off_runner_up
        self.unknown_mix = unknown_mix

    # --- fitting ------------------------------------------------------------------------------------

    def fit(
        self,
        expected: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
        repeated: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
        *,
        classes: Sequence[str],
        labels: Sequence[Mapping[str, str]],
        vocab_size: int,
    ) -> GreedyVote:
        """Learn each class's expected tokens and error rate.

        expected[kind] = (probe_ids (n,), greedy (C, n), runner_up (C, n)): the reference answers.
        repeated[kind] = (class_index (r,), probe_ids (r,), greedy (r,)): answers of independent
        repeated runs (any number per class) to measure eps; probes must be known to `expected`.

        Why mappings by probe kind, not an (X, y) pair: the vote learns no function of features.
        What it fits is, per probe kind (pool, border: separate probe-id spaces of different sizes),
        every class's expected and runner-up token table plus the repeats that measure each class's
        error rate; a repeat has no row in the reference table, and the two kinds' tables cannot
        share one matrix.  Hyper-parameters are still `__init__` arguments only, so `clone` works.
        """
        for name, value, low, high in (
            ("epsilon_floor", self.epsilon_floor, 0.0, 0.5),
            ("off_runner_up", self.off_runner_up, 0.0, 1.0),
            ("unknown_mix", self.unknown_mix, 0.0, 1.0),
        ):
            if not low < value < high:
                raise ConfigError(f"{name} must lie strictly between {low} and {high}, got {value}")
        n_classes = len(classes)
        if n_classes < 1 or len(labels) != n_classes or len(set(classes)) != n_classes:
            raise ConfigError(
                f"need distinct class names with one label set each, got {n_classes} names, {len(labels)} label sets"
            )
        if vocab_size < 3:
            raise ConfigError(f"vocab_size must be >= 3, got {vocab_size}")
        missing = [h for h in HEADS if any(h not in lab for lab in labels)]
        if missing:
            raise ConfigError(f"class labels lack heads {missing}; need {', '.join(HEADS)}")
        if not expected:
            raise ConfigError("no reference answers to fit on")
        self.classes_ = [str(c) for c in classes]
        self.labels_ = [{h: str(lab[h]) for h in HEADS} for lab in labels]
        self.vocab_size_ = int(vocab_size)
        self.probe_ids_, self.greedy_, self.second_ = {}, {}, {}
        for kind, (ids, greedy, second) in expected.items():
            ids, greedy, second = np.asarray(ids, np.int64), np.asarray(greedy, np.int64), np.asarray(second, np.int64)
            if greedy.shape != (n_classes, len(ids)) or second.shape != greedy.shape:
                raise ConfigError(
                    f"{kind}: expected ({n_classes}, {len(ids)}) greedy and runner-up tokens, "
                    f"got {greedy.shape} and {second.shape}"
                )
            if len(np.unique(ids)) != len(ids):
                raise ConfigError(f"{kind}: duplicate probe ids")
            if ((greedy < 0) | (greedy >= vocab_size) | (second < 0) | (second >= vocab_size)).any():
                raise ConfigError(f"{kind}: token ids outside the vocabulary 0..{vocab_size - 1}")
            order = np.argsort(ids)
            self.probe_ids_[kind] = ids[order]
            self.greedy_[kind] = greedy[:, order]
            self.second_[kind] = second[:, order]
        self.disagreements_ = np.zeros(n_classes, dtype=np.int64)
        self.repeats_ = np.zeros(n_classes, dtype=np.int64)
        for kind, (cls, ids, observed) in repeated.items():
            cls, observed = np.asarray(cls, np.int64), np.asarray(observed, np.int64)
            if len(cls) == 0:
                continue
            if cls.min() < 0 or cls.max() >= n_classes:
                raise ConfigError(f"{kind}: repeated answers name a class index outside 0..{n_classes - 1}")
            cols = self._columns(kind, ids)
            wrong = observed != self.greedy_[kind][cls, cols]
            np.add.at(self.disagreements_, cls, wrong.astype(np.int64))
            np.add.at(self.repeats_, cls, 1)
        self.epsilon_ = np.maximum(self.epsilon_floor, self.disagreements_ / np.maximum(self.repeats_, 1))
        self.threshold_ = DEFAULT_THRESHOLD
        self.metadata_: dict[str, Any] = {}  # what `save` was given (dataset, probe sets...), back after `load`
        self._prepare()
        return self

    def _prepare(self) -> None:
        """Per kind, the answer distribution of every class over every distinct candidate token (derived)."""
        self.outcomes_ = {kind: self._outcome_table(kind) for kind in self.probe_ids_}

    def _check_fitted(self) -> None:
        if not hasattr(self, "epsilon_"):
            raise ModelError("this GreedyVote is not fitted yet")

    def _columns(self, kind: str, probe_ids: Any) -> np.ndarray:
        if kind not in self.probe_ids_:
            raise ConfigError(f"unknown probe kind {kind!r}; this vote knows: {', '.join(self.probe_ids_)}")
        ids = np.asarray(probe_ids, dtype=np.int64).reshape(-1)
        known = self.probe_ids_[kind]
        cols = np.searchsorted(known, ids)
        bad = (cols >= len(known)) | (known[np.minimum(cols, len(known) - 1)] != ids)
        if bad.any():
            raise ConfigError(f"{kind} probe ids without a reference answer: {ids[bad][:5].tolist()}")
        return cols

    # --- scoring ------------------------------------------------------------------------------------

    def _token_probs(
        self, observed: np.ndarray, e: np.ndarray, r: np.ndarray, eps: np.ndarray | None = None
    ) -> np.ndarray:
        """P(observed | class) elementwise; eps broadcasts against the class axis (last by default)."""
        eps = self.epsilon_ if eps is None else eps
        other = eps * self.off_runner_up / (self.vocab_size_ - 2)
        return np.where(observed == e, 1.0 - eps, np.where(observed == r, eps * (1.0 - self.off_runner_up), other))

    def log_likelihood(self, kind: str, probe_ids: Any, observed: Any) -> np.ndarray:
        """(n, C): log P(observed token | class) per query.  An observed id outside the vocabulary
        (e.g. -1 for text that is no single token) counts as 'any other token'."""
        self._check_fitted()
        cols = self._columns(kind, probe_ids)
        obs = np.asarray(observed, dtype=np.int64).reshape(-1)
        if obs.shape != cols.shape:
            raise ConfigError(f"{len(cols)} probe ids but {len(obs)} observed tokens")
        e, r = self.greedy_[kind][:, cols].T, self.second_[kind][:, cols].T  # (n, C)
        return np.log(self._token_probs(obs[:, None], e, r))

    def unknown_log_likelihood(self, kind: str, probe_ids: Any, observed: Any) -> np.ndarray:
        """(n,): log P(observed token | a platform outside the reference)."""
        mix = np.exp(self.log_likelihood(kind, probe_ids, observed)).mean(axis=1)
        return np.log((1.0 - self.unknown_mix) * mix + self.unknown_mix / self.vocab_size_)

    def _totals(self, answers: Answers) -> tuple[np.ndarray, float, int]:
        total, unknown, n = np.zeros(len(self.classes_)), 0.0, 0
        for kind, (ids, observed) in answers.items():
            ll = self.log_likelihood(kind, ids, observed)
            total += ll.sum(axis=0)
            unknown += float(self.unknown_log_likelihood(kind, ids, observed).sum())
            n += ll.shape[0]
        return total, unknown, n

    @staticmethod
    def posterior_from(log_likelihood: np.ndarray) -> np.ndarray:
        """Softmax over the last axis: the class posterior under a uniform prior."""
        ll = np.asarray(log_likelihood, dtype=np.float64)
        shifted = np.exp(ll - ll.max(axis=-1, keepdims=True))
        return shifted / shifted.sum(axis=-1, keepdims=True)

    def class_posterior(self, answers: Answers) -> np.ndarray:
        """(C,) posterior after the answers {kind: (probe ids, observed greedy ids)}."""
        self._check_fitted()
        return self.posterior_from(self._totals(answers)[0])

    def head_posteriors(self, posterior: np.ndarray) -> dict[str, tuple[list[str], np.ndarray]]:
        """Per head: (label values, posterior (..., L)) summed over the classes carrying each label."""
        self._check_fitted()
        post = np.asarray(posterior, dtype=np.float64)
        out = {}
        for head in HEADS:
            values = sorted({lab[head] for lab in self.labels_})
            member = np.array([[lab[head] == v for lab in self.labels_] for v in values], dtype=np.float64)  # (L, C)
            out[head] = (values, post @ member.T)
        return out

    def match_score(self, answers: Answers) -> float:
        """Per-query log-likelihood ratio of the best class against a platform outside the reference."""
        self._check_fitted()
        total, unknown, n = self._totals(answers)
        return float((total.max() - unknown) / n) if n else 0.0

    def predict(self, answers: Answers) -> TextVerdict:
        self._check_fitted()
        total, unknown, n = self._totals(answers)
        post = self.posterior_from(total)
        score = float((total.max() - unknown) / n) if n else 0.0
        heads, per_head = {}, {}
        for head, (values, p) in self.head_posteriors(post).items():
            best = int(np.argmax(p))
            heads[head] = (values[best], float(p[best]))
            per_head[head] = {v: float(x) for v, x in zip(values, p)}
        order = np.argsort(-post, kind="stable")
        return TextVerdict(
            ranked=[(self.classes_[i], float(post[i])) for i in order],
            heads=heads,
            unknown=bool(n) and score < self.threshold_,
            score=score,
            n_queries=n,
            head_posteriors=per_head,
        )

    def calibrate(self, known_scores: Any, quantile: float = DEFAULT_ACCEPT_QUANTILE) -> GreedyVote:
        """Set the `unknown` threshold from match scores of held-out answers of known platforms."""
        self._check_fitted()
        scores = np.asarray(known_scores, dtype=np.float64)
        if len(scores):
            self.threshold_ = min(0.0, float(np.quantile(scores, quantile)))
        return self

    # --- which probe next ---------------------------------------------------------------------------

    def _outcome_table(self, kind: str) -> dict[str, np.ndarray]:
        e, r = self.greedy_[kind], self.second_[kind]  # (C, n)
        tokens = np.concatenate([e, r])  # (K = 2C, n) candidate outcomes, with repeats
        first = np.ones(tokens.shape, dtype=bool)
        for k in range(1, len(tokens)):
            first[k] = ~(tokens[:k] == tokens[k]).any(axis=0)
        probs = (
            self._token_probs(tokens[None, :, :], e[:, None, :], r[:, None, :], self.epsilon_[:, None, None])
            * first[None]
        )  # (C, K, n)
        other = np.clip(1.0 - probs.sum(axis=1), 0.0, 1.0)  # (C, n): every token no class names, lumped
        cond = -(_xlogx(probs).sum(axis=1) + _xlogx(other))  # (C, n): entropy of the answer given the class
        return {"probs": probs, "other": other, "entropy": cond}

    def information_gain(self, posterior: Any, kind: str) -> np.ndarray:
        """(n_kind,) expected information (nats) about the class from each probe of `kind`, in the
        order of `probe_ids_[kind]`: H(answer) - E_class H(answer | class)."""
        self._check_fitted()
        if kind not in self.outcomes_:
            raise ConfigError(f"unknown probe kind {kind!r}; this vote knows: {', '.join(self.outcomes_)}")
        pi = np.asarray(posterior, dtype=np.float64).reshape(-1)
        if pi.shape != (len(self.classes_),):
            raise ConfigError(f"posterior over {pi.shape[0]} classes; this vote has {len(self.classes_)}")
        table = self.outcomes_[kind]
        mixed = np.einsum("c,ckn->kn", pi, table["probs"])
        mixed_other = pi @ table["other"]
        entropy = -(_xlogx(mixed).sum(axis=0) + _xlogx(mixed_other))
        return np.maximum(entropy - pi @ table["entropy"], 0.0)

    def to_dict(self, metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
        from hspi.provenance import library_versions

        self._check_fitted()
        return {
            "format": VOTE_FORMAT,
            "params": {
                "epsilon_floor": self.epsilon_floor,
                "off_runner_up": self.off_runner_up,
                "unknown_mix": self.unknown_mix,
            },
            "classes": self.classes_,
            "labels": self.labels_,
            "vocab_size": self.vocab_size_,
            "epsilon": self.epsilon_.tolist(),
            "disagreements": self.disagreements_.tolist(),
            "repeats": self.repeats_.tolist(),
            "threshold": self.threshold_,
            "kinds": {
                kind: {
                    "probe_ids": self.probe_ids_[kind].tolist(),
                    "greedy": self.greedy_[kind].tolist(),
                    "second": self.second_[kind].tolist(),
                }
                for kind in self.probe_ids_
            },
            "versions": library_versions(),
            "metadata": dict(metadata or {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GreedyVote:
        if data.get("format") != VOTE_FORMAT:
            raise ModelError(f"unsupported greedy-vote format {data.get('format')!r} (expected {VOTE_FORMAT})")
        try:
            vote = cls(**data["params"])
            vote.classes_ = [str(c) for c in data["classes"]]
            vote.labels_ = [{h: str(lab[h]) for h in HEADS} for lab in data["labels"]]
            vote.vocab_size_ = int(data["vocab_size"])
            vote.epsilon_ = np.asarray(data["epsilon"], dtype=np.float64)
            vote.disagreements_ = np.asarray(data["disagreements"], dtype=np.int64)
            vote.repeats_ = np.asarray(data["repeats"], dtype=np.int64)
            vote.threshold_ = float(data["threshold"])
            vote.probe_ids_ = {k: np.asarray(v["probe_ids"], dtype=np.int64) for k, v in data["kinds"].items()}
            vote.greedy_ = {k: np.asarray(v["greedy"], dtype=np.int64) for k, v in data["kinds"].items()}
            vote.second_ = {k: np.asarray(v["second"], dtype=np.int64) for k, v in data["kinds"].items()}
            vote.metadata_ = dict(data.get("metadata") or {})
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"corrupt greedy-vote data: {type(exc).__name__}: {exc}") from None
        c = len(vote.classes_)
        if vote.epsilon_.shape != (c,) or any(
            g.shape != (c, len(vote.probe_ids_[k])) or vote.second_[k].shape != g.shape for k, g in vote.greedy_.items()
        ):
            raise ModelError("corrupt greedy-vote data: array shapes do not match the classes")
        vote._prepare()
        return vote

    def save(self, path: Path, metadata: Mapping[str, Any] | None = None) -> Path:
        """Write the vote as JSON (through `hspi.classifier.artifacts`, the one save/load path)."""
        from hspi.classifier.artifacts import save_vote

        return save_vote(Path(path), self, metadata)

    @classmethod
    def load(cls, path: Path) -> GreedyVote:
        from hspi.classifier.artifacts import load_vote

        return load_vote(Path(path))


VOTE_FILE = "greedy-vote.json"


def text_vote_path(classifier_dir: Path, model: str) -> Path:
    """Where `hspi border report` saves a model's vote: <classifier>/<model>/text/greedy-vote.json."""
    return Path(classifier_dir) / model / "text" / VOTE_FILE


def load_text_vote(classifier_dir: Path, model: str) -> GreedyVote:
    return GreedyVote.load(text_vote_path(classifier_dir, model))


def _xlogx(p: np.ndarray) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    return np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)


def rank_probes(
    vote: GreedyVote,
    posterior: Any,
    *,
    used: Mapping[str, Iterable[int]] | None = None,
    kinds: Sequence[str] | None = None,
    limit: int | None = None,
) -> list[tuple[str, int, float]]:
    """Unused probes ranked by expected information gain under `posterior`: [(kind, probe id, nats)],
    best first (ties: kinds in the order given, then the lower id)."""
    rows: list[tuple[float, int, int, str]] = []
    for k_index, kind in enumerate(kinds or list(vote.probe_ids_)):
        gains = vote.information_gain(posterior, kind)
        ids = vote.probe_ids_[kind]
        skip = np.isin(ids, np.fromiter((used or {}).get(kind, ()), dtype=np.int64))
        rows += [(-float(g), k_index, int(i), kind) for g, i in zip(gains[~skip], ids[~skip])]
    rows.sort()
    return [(kind, i, -g) for g, _, i, kind in rows[:limit]]
