"""`hspi evaluate`: every split x tier x head x method x queries, measured on probes never trained on.

Splits (per reference model):
- reference-match: targets are the *replay* runs (an independent process, other batch
  compositions); their pool probes are split into train / calibrate / test.  LightGBM learns on
  reference-relative features of the train probes; everything is scored on the test probes.
- heldout-probes: fresh probes (never stored as references): intrinsic features only; trained on
  the reference pool's outputs.
- transfer-model: intrinsic features, trained on the two other models, tested on this one's
  fresh probes.

Intrinsic heads choose their tree count per audit size on held-out training groups (other probes;
for transfer, one training model predicted from the other) and may keep none (the prior). Heldout rows weigh each
class by its member configs, as the test does; transfer moves the prior to the label shares of the
test model's own grid (which platforms it runs on is known, their outputs are not). The baseline
is the paper's method as published: no weights, no prior shift.

Open-set rows leave each class out of training in turn and score audits of 1, 4 and 16 probes:
random test probes (`lightgbm`) and probes chosen as `hspi audit` chooses them
(`lightgbm-sequential`: split the known candidates, then verify the leader).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from sklearn.metrics import roc_auc_score

from hspi.classifier import training_data
from hspi.classifier.baseline import ENCODINGS, HSPILDBaseline
from hspi.classifier.intrinsic import IntrinsicClassifier
from hspi.classifier.reference import CalibratedMatcher, ReferenceMatcher
from hspi.classifier.sequential import ReferenceBook, ReferenceEvidence, most_splitting_probe
from hspi.classifier.training_data import (
    SPLIT_SEED,
    ModelData,
    pair_features,
    split_replay,
)
from hspi.dataset import Dataset
from hspi.equivalence import distinct_answers, joint_classes
from hspi.features.intrinsic import intrinsic_features
from hspi.features.relative import relative_features
from hspi.features.tiers import TIERS, log_softmax_f64, reference_values, tier_view
from hspi.platform import HEADS

QUERIES = (1, 4, 16)
SEQUENTIAL_AUDITS = 2  # sequential audits per configuration (different first probes)
INTRINSIC_TRAIN_PROBES = 300  # pool probes per class used to train intrinsic heads
BASELINE_TRAIN_ROWS = 2000  # the linear SVM over 16k bit columns is the slow part: cap its rows
OPEN_SET_TREES = 60
TRANSFER_HEADS = (
    "hardware",
    "dtype",
    "engine",
    "kernel",
)  # labels every model shares; `full` names one model's classes


def load_model_data(dataset: Dataset, model: str) -> ModelData:
    """What the evaluation needs of one model: `training_data.load_model_data` with the float64 oracle's
    outputs (the intrinsic features' deviations), as before."""
    return training_data.load_model_data(dataset, model, oracle=True)


def one_probe_split(data: ModelData) -> int:
    """The most classes any single pool probe tells apart (bitwise, logits): a ceiling on what one
    query can identify, whatever the classifier."""
    words = np.stack([data.reference[c].view(np.uint32) for c in range(len(data.classes))])  # (C, pool, V)
    return int(distinct_answers(words).max())


def label_shares(labels: list[str]) -> dict[str, float]:
    values, counts = np.unique(np.asarray(labels, dtype=str), return_counts=True)
    return {str(v): float(c) / len(labels) for v, c in zip(values, counts)}


def query_groups(n: int, q: int) -> np.ndarray:
    """Group id per probe: consecutive runs of q probes (a remainder that does not fill a group is dropped)."""
    usable = (n // q) * q
    return np.concatenate([np.repeat(np.arange(n // q), q), -np.ones(n - usable, dtype=np.int64)]).astype(np.int64)


class TransferTrainingSet(NamedTuple):
    """Intrinsic training rows of the models other than the one tested (`transfer-model`)."""

    features: list[np.ndarray]  # per (model, config): (probes, F) intrinsic features
    values: list[np.ndarray]  # per (model, config): (probes, k) tier values, for the baseline
    labels: dict[str, np.ndarray]  # head -> label per row
    source: np.ndarray  # reference model per row: the tree-count folds
    config: np.ndarray  # "model/config" per row: one target per config in validation audits


@dataclass
class SequentialPool:
    """The probes a sequential audit may choose from, with every config's features against every class."""

    probe_ids: np.ndarray
    features: dict[str, np.ndarray]  # config -> (len(probe_ids), C, F)


def sequential_pool(
    data: ModelData,
    tier: str,
    rows: np.ndarray,
    feats: dict[str, np.ndarray],
    ref_full: dict[int, np.ndarray],
    *,
    targeted: bool,
) -> SequentialPool:
    """Replay `rows` (features already computed), plus, with `targeted`, the re-run probes that split
    near twins (`replay-splitting`, `replay-searched`) and are not replay probes at all (so never
    trained or calibrated on)."""
    extra = ~np.isin(data.targeted_ids, data.replay_ids) if targeted else np.zeros(len(data.targeted_ids), bool)
    probe_ids = np.r_[data.replay_ids[rows], data.targeted_ids[extra]].astype(np.int64)
    features = {}
    for cid in data.replay:
        parts = [feats[cid][rows]]
        if extra.any():
            view = tier_view(data.targeted[cid][extra], tier, data.convention(cid))
            parts.append(
                np.stack(
                    [
                        relative_features(view, ref_full[c][data.rows(data.targeted_ids[extra])])
                        for c in range(len(data.classes))
                    ],
                    axis=1,
                )
            )
        features[cid] = np.concatenate(parts)
    return SequentialPool(probe_ids, features)


def sequential_audit(
    evidence: ReferenceEvidence,
    probabilities: dict[str, np.ndarray],
    rng: np.random.Generator,
    steps: tuple[int, ...] = QUERIES,
) -> Iterator[int]:
    """Run one audit over answers already scored (`probabilities[head]` (n, C), rows in the book's
    order), yielding after each step in `steps` with the evidence of that many queries.  Once
    nothing splits or verifies the candidates, the evidence stands."""
    book = evidence.book
    probe: int | None = most_splitting_probe(book, None, rng)
    for step in range(1, max(steps) + 1):
        if probe is not None:
            row = evidence.row_of(probe)
            evidence.add(probe, {h: p[row, :] for h, p in probabilities.items()})
            probe = evidence.next_probe(rng)
        if step in steps:
            yield step


class Evaluation:
    def __init__(
        self,
        dataset: Dataset,
        *,
        models: list[str] | None = None,
        tiers: list[str] | None = None,
        open_set: bool = True,
        log: Callable[[str], None] = lambda _: None,
    ) -> None:
        self.dataset = dataset
        self.models = models or dataset.models
        self.tiers = tiers or list(TIERS)
        self.open_set = open_set
        self.log = log
        self.results: list[dict[str, Any]] = []
        self.open_set_rows: list[dict[str, Any]] = []
        self.confusions: dict[str, dict[str, Any]] = {}
        self.throughput: dict[str, float] = {}

    def _row(
        self, model: str, split: str, tier: str, head: str, method: str, q: int, correct: np.ndarray, **extra: Any
    ) -> None:
        self.results.append(
            {
                "model": model,
                "split": split,
                "tier": tier,
                "head": head,
                "method": method,
                "queries": q,
                "accuracy": round(float(np.mean(correct)) if len(correct) else 0.0, 4),
                "n_test": int(len(correct)),
                **extra,
            }
        )

    def run(self) -> dict[str, Any]:
        started = time.perf_counter()
        stages: dict[str, float] = {}  # split -> seconds: where the evaluation's time goes

        def stage(name: str, what: str, work: Callable[[], Any]) -> Any:
            self.log(f"[{time.perf_counter() - started:4.0f} s] {what}")
            t0 = time.perf_counter()
            out = work()
            stages[name] = stages.get(name, 0.0) + time.perf_counter() - t0
            return out

        data = {}
        for model in self.models:
            data[model] = stage("loading", f"loading {model}", lambda: load_model_data(self.dataset, model))
        for model in self.models:
            for tier in self.tiers:
                stage(
                    "reference-match",
                    f"{model} {tier}: reference-match",
                    lambda: self._reference_match(data[model], tier),
                )
                stage("heldout-probes", f"{model} {tier}: heldout-probes", lambda: self._heldout(data[model], tier))
                if len(self.models) >= 3:
                    stage(
                        "transfer-model", f"{model} {tier}: transfer-model", lambda: self._transfer(data, model, tier)
                    )
        classes = joint_classes(self.dataset)
        return {
            "dataset": self.dataset.manifest.name,
            "n_classes": len(classes),
            "classes": {c.name: list(c.members) for c in classes},
            "models": {
                m: {
                    "n_classes": len(d.classes),
                    "classes": {c.name: list(c.members) for c in d.classes},
                    "n_configs": len(d.replay),
                    "classes_split_by_one_probe": one_probe_split(d),
                    "targeted_replay_probes": int(len(d.targeted_ids)),
                    "searched_pool_probes": int(len(d.pool_ids) - d.pool_size),
                }
                for m, d in data.items()
            },
            "results": self.results,
            "open_set": self.open_set_rows,
            "throughput": self.throughput,
            "_confusions": self.confusions,
            "seconds": round(time.perf_counter() - started, 1),
            "stage_seconds": {k: round(v, 1) for k, v in stages.items()},
        }

    # -- reference-match -------------------------------------------------------------------
    def _reference_match(self, data: ModelData, tier: str) -> None:
        train, calib, test = split_replay(len(data.replay_ids))
        candidates = list(range(len(data.classes)))
        cand_labels = [c.labels for c in data.classes]
        ref_full = {c: reference_values(data.reference[c], tier, data.classes[c].convention) for c in candidates}
        configs = list(data.replay)
        t0 = time.perf_counter()
        feats = {
            cid: pair_features(data, tier, cid, np.arange(len(data.replay_ids)), candidates, ref_full)
            for cid in configs
        }
        n_pairs = sum(f.shape[0] * f.shape[1] for f in feats.values())
        if tier == "logits" and data.model == "lm-small":
            self.throughput["features_per_s"] = round(float(n_pairs) / (time.perf_counter() - t0), 1)
        same = []
        X = []
        for cid in configs:
            X.append(feats[cid][train].reshape(-1, feats[cid].shape[2]))
            truth = data.config_labels[cid]
            agree = [[truth[h] == cl[h] for h in HEADS] for cl in cand_labels]  # (candidates, heads)
            same.append(np.tile(np.asarray(agree, dtype=bool), (len(train), 1)))
        fitted = ReferenceMatcher(heads=HEADS).fit(np.concatenate(X), np.concatenate(same))
        calib_scores = np.concatenate(
            [
                ReferenceMatcher.match_scores(
                    fitted.pair_probabilities(feats[cid][calib])["full"], np.arange(len(calib))
                )
                for cid in configs
            ]
        )
        matcher = CalibratedMatcher(fitted).fit(calib_scores)
        # exact-match lookup and the baseline share the same test groups
        baselines = self._fit_baselines(
            np.concatenate(
                [tier_view(data.replay[c][train], tier, data.convention(c)).values for c in configs]
                + [
                    tier_view(
                        data.reference[data.class_of[c]][data.rows(data.replay_ids[train])], tier, data.convention(c)
                    ).values
                    for c in configs
                ]
            ),
            [data.config_labels[c] for c in configs for _ in train] * 2,
        )
        for q in QUERIES:
            groups = query_groups(len(test), q)
            keep = groups >= 0
            if not keep.any():  # fewer probes than queries: no audit of this size fits
                continue
            correct: dict[tuple[str, str], list[Any]] = {}
            confusion_pairs: dict[str, list[tuple[str, str]]] = {h: [] for h in HEADS}
            for cid in configs:
                truth = data.config_labels[cid]
                t1 = time.perf_counter()
                probs = matcher.pair_probabilities(feats[cid][test][keep])
                post = matcher.posteriors(probs, cand_labels, groups[keep])
                if q == 1 and tier == "logits" and data.model == "lm-small":
                    self.throughput.setdefault("_pred_n", 0.0)
                    self.throughput["_pred_n"] += keep.sum()
                    self.throughput.setdefault("_pred_s", 0.0)
                    self.throughput["_pred_s"] += time.perf_counter() - t1
                for h in HEADS:
                    values, p = post[h]
                    predicted = np.asarray(values)[p.argmax(axis=1)]
                    correct.setdefault((h, "lightgbm"), []).append(predicted == truth[h])
                    if q == 1:
                        confusion_pairs[h] += [(truth[h], str(v)) for v in predicted]
                exact = self._exact_match(data, tier, cid, test[keep], groups[keep], ref_full)
                for h in HEADS:
                    predicted = np.array([data.classes[e].labels[h] if e >= 0 else "no-match" for e in exact])
                    correct.setdefault((h, "exact-match"), []).append(predicted == truth[h])
                shown = tier_view(data.replay[cid][test[keep]], tier, data.convention(cid)).values
                for h in HEADS:
                    best = self._baseline_predictions(baselines[h], shown, groups[keep])
                    correct.setdefault((h, "hspi-ld-svm"), []).append({e: best[e] == truth[h] for e in best})
            for (h, method), parts in correct.items():
                if method == "hspi-ld-svm":
                    continue
                self._row(data.model, "reference-match", tier, h, method, q, np.concatenate(parts))
            self._baseline_rows(data.model, "reference-match", tier, q, correct)
            if q == 1 and tier == "logits":
                for h in HEADS:
                    self.confusions[f"{data.model}/reference-match/{h}"] = {"pairs": confusion_pairs[h]}
        pool = sequential_pool(data, tier, test, feats, ref_full, targeted=True)
        self._sequential(data, tier, matcher, pool, cand_labels)
        if tier == "logits" and data.model == "lm-small" and "_pred_s" in self.throughput:
            self.throughput["predictions_per_s"] = round(
                float(self.throughput.pop("_pred_n") / self.throughput.pop("_pred_s")), 1
            )
        if self.open_set:
            matchers = self._open_set(data, tier, feats, train, calib, test)
            pools = {"lightgbm-sequential": pool}
            if len(data.targeted_ids):
                # the targeted probes were chosen with every class's answers, the left-out one's too:
                # the same audits without them measure what random pool probes alone achieve
                pools["lightgbm-sequential-untargeted"] = sequential_pool(
                    data, tier, test, feats, ref_full, targeted=False
                )
            self._open_set_sequential(
                data, tier, matchers, pools, sequential_pool(data, tier, calib, feats, ref_full, targeted=False)
            )

    def _sequential(
        self,
        data: ModelData,
        tier: str,
        matcher: CalibratedMatcher,
        pool: SequentialPool,
        cand_labels: list[dict[str, str]],
    ) -> None:
        """Method `lightgbm-sequential`: audits that choose each next probe to split the likely candidates.

        The same matcher as `lightgbm`; the order differs, and so does the choice: each probe is
        the available probe on which the candidates' stored answers disagree most under the current
        posterior, the first under a uniform prior (what `hspi audit` does live over the whole
        pool); once nothing splits them, the probes that verify the leader.  Available: the replay
        test probes, plus the targeted re-runs (`replay-splitting`: stored pool probes that split
        near-twin classes; `replay-searched`: the searched pool probes; each answered in another
        independent process) that the matcher neither trained nor calibrated on.
        """
        book = ReferenceBook(
            [data.reference[c][data.rows(pool.probe_ids)] for c in range(len(data.classes))],
            cand_labels,
            tier,
            pool.probe_ids,
            conventions=[c.convention for c in data.classes],
        )
        correct: dict[tuple[str, int], list[bool]] = {}
        for k, cid in enumerate(data.replay):
            probs = matcher.pair_probabilities(pool.features[cid])
            truth = data.config_labels[cid]
            for seed in range(SEQUENTIAL_AUDITS):
                evidence = ReferenceEvidence(matcher, book)
                for q in sequential_audit(evidence, probs, np.random.default_rng([SPLIT_SEED, k, seed])):
                    decision = {h: v[int(np.argmax(p))] for h, (v, p) in evidence.head_posteriors().items()}
                    for h in HEADS:
                        correct.setdefault((h, q), []).append(decision.get(h) == truth[h])
        for (h, q), hits in correct.items():
            self._row(
                data.model,
                "reference-match",
                tier,
                h,
                "lightgbm-sequential",
                q,
                np.asarray(hits),
                probes_available=int(len(pool.probe_ids)),
            )

    def _exact_match(
        self,
        data: ModelData,
        tier: str,
        cid: str,
        rows: np.ndarray,
        groups: np.ndarray,
        ref_full: dict[int, np.ndarray],
    ) -> np.ndarray:
        """Per group: the class whose stored answer is bit-identical on most probes (-1: none)."""
        view = tier_view(data.replay[cid][rows], tier, data.convention(cid))
        probe_ids = data.replay_ids[rows]
        hits = np.zeros((len(rows), len(data.classes)), dtype=bool)
        for c in range(len(data.classes)):
            ref_view = tier_view(data.reference[c][data.rows(probe_ids)], tier, data.classes[c].convention)
            hits[:, c] = (view.ids == ref_view.ids).all(axis=1) & (
                view.values.view(np.uint32) == ref_view.values.view(np.uint32)
            ).all(axis=1)
        votes = np.zeros((int(groups.max()) + 1, len(data.classes)))
        np.add.at(votes, groups, hits)
        return np.where(votes.max(axis=1) > 0, votes.argmax(axis=1), -1)

    def _fit_baselines(self, values: np.ndarray, labels: list[dict[str, str]]) -> dict[str, dict[str, HSPILDBaseline]]:
        rng = np.random.default_rng(SPLIT_SEED)
        rows = rng.permutation(len(values))[:BASELINE_TRAIN_ROWS]
        out: dict[str, dict[str, HSPILDBaseline]] = {}
        for h in HEADS:
            y = np.array([labels[i][h] for i in rows])
            out[h] = {enc: HSPILDBaseline(encoding=enc).fit(values[rows], y) for enc in ENCODINGS}
        return out

    @staticmethod
    def _baseline_predictions(
        models: dict[str, HSPILDBaseline], values: np.ndarray, groups: np.ndarray
    ) -> dict[str, np.ndarray]:
        out = {}
        for enc, model in models.items():
            classes, post = model.posteriors(values, groups)
            out[enc] = np.asarray(classes)[post.argmax(axis=1)]
        return out

    def _baseline_rows(self, model: str, split: str, tier: str, q: int, correct: dict) -> None:
        """The baseline's row per head: the better of its two encodings, named in the row."""
        for h in HEADS:
            parts = correct.get((h, "hspi-ld-svm"))
            if not parts:
                continue
            scores = {}
            for enc in ENCODINGS:
                hits = np.concatenate([p[enc] for p in parts])
                scores[enc] = hits
            best = max(ENCODINGS, key=lambda e: scores[e].mean())
            self._row(
                model,
                split,
                tier,
                h,
                "hspi-ld-svm",
                q,
                scores[best],
                encoding=best,
                other_encoding_accuracy=round(float(scores[[e for e in ENCODINGS if e != best][0]].mean()), 4),
            )

    def _open_set_matcher(
        self, data: ModelData, held: int, feats: dict[str, np.ndarray], train: np.ndarray
    ) -> ReferenceMatcher:
        """A `full`-head matcher trained as if class `held` had never been collected."""
        keep_c = [c for c in range(len(data.classes)) if c != held]
        known = [cid for cid in data.replay if data.class_of[cid] != held]
        X = np.concatenate([feats[cid][train][:, keep_c].reshape(-1, feats[cid].shape[2]) for cid in known])
        y = np.concatenate([np.tile([data.class_of[cid] == c for c in keep_c], len(train)) for cid in known])
        return ReferenceMatcher(heads=("full",), n_estimators=OPEN_SET_TREES).fit(X, y)

    def _open_set_row(
        self,
        data: ModelData,
        tier: str,
        method: str,
        q: int,
        held: int,
        inside: np.ndarray,
        outside: np.ndarray,
        threshold: float,
    ) -> None:
        labels = np.r_[np.ones(len(inside)), np.zeros(len(outside))]
        auroc = float(roc_auc_score(labels, np.r_[inside, outside]))
        self.open_set_rows.append(
            {
                "model": data.model,
                "split": "reference-match",
                "tier": tier,
                "method": method,
                "queries": q,
                "held_out_class": data.classes[held].name,
                "auroc": round(auroc, 4),
                "unknown_rate": round(float((outside < threshold).mean()), 4),
                "known_rejected_rate": round(float((inside < threshold).mean()), 4),
                "threshold": round(threshold, 6),
            }
        )

    def _open_set(
        self,
        data: ModelData,
        tier: str,
        feats: dict[str, np.ndarray],
        train: np.ndarray,
        calib: np.ndarray,
        test: np.ndarray,
    ) -> dict[int, ReferenceMatcher]:
        """Method `lightgbm`: audits of random test probes, each class left out of training in turn.
        Returns the matcher trained without each class."""
        configs = list(data.replay)
        matchers = {}
        for held in range(len(data.classes)):
            keep_c = [c for c in range(len(data.classes)) if c != held]
            known = [cid for cid in configs if data.class_of[cid] != held]
            m = matchers[held] = self._open_set_matcher(data, held, feats, train)

            def scores(cid: str, rows: np.ndarray, q: int) -> np.ndarray:
                groups = query_groups(len(rows), q)
                keep = groups >= 0
                p = m.pair_probabilities(feats[cid][rows[keep]][:, keep_c])["full"]
                return ReferenceMatcher.match_scores(p, groups[keep])

            # one threshold per audit size, each calibrated on held-out audits of that size
            for q in QUERIES:
                if len(calib) < q or len(test) < q:
                    continue
                calibrated = CalibratedMatcher(m).fit(np.concatenate([scores(cid, calib, q) for cid in known]))
                inside = np.concatenate([scores(cid, test, q) for cid in known])
                outside = np.concatenate([scores(cid, test, q) for cid in configs if data.class_of[cid] == held])
                self._open_set_row(data, tier, "lightgbm", q, held, inside, outside, calibrated.threshold_)
        return matchers

    def _open_set_sequential(
        self,
        data: ModelData,
        tier: str,
        matchers: dict[int, ReferenceMatcher],
        pools: dict[str, SequentialPool],
        calib: SequentialPool,
    ) -> None:
        """Methods `lightgbm-sequential` (and `-untargeted`): the same left-out classes, audited as `hspi
        audit` does: probes that split the known candidates, then probes that verify the leader, from
        each method's pool of probes.  Thresholds per audit size come from sequential audits of known
        configs over the calibration probes."""
        for held, m in matchers.items():
            keep_c = [c for c in range(len(data.classes)) if c != held]
            labels = [data.classes[c].labels for c in keep_c]

            def audits(source: SequentialPool, configs: list[str]) -> dict[int, np.ndarray]:
                book = ReferenceBook(
                    [data.reference[c][data.rows(source.probe_ids)] for c in keep_c],
                    labels,
                    tier,
                    source.probe_ids,
                    conventions=[data.classes[c].convention for c in keep_c],
                )
                out: dict[int, list[float]] = {}
                for cid in configs:
                    k = list(data.replay).index(cid)
                    probs = m.pair_probabilities(source.features[cid][:, keep_c])
                    for seed in range(SEQUENTIAL_AUDITS):
                        evidence = ReferenceEvidence(m, book)
                        for q in sequential_audit(evidence, probs, np.random.default_rng([SPLIT_SEED, k, seed])):
                            out.setdefault(q, []).append(evidence.match_score())
                return {q: np.asarray(v) for q, v in out.items()}

            known = [cid for cid in data.replay if data.class_of[cid] != held]
            calibration = audits(calib, known)
            for method, pool in pools.items():
                inside = audits(pool, known)
                outside = audits(pool, [cid for cid in data.replay if data.class_of[cid] == held])
                for q in QUERIES:
                    threshold = CalibratedMatcher(m).fit(calibration[q]).threshold_
                    self._open_set_row(data, tier, method, q, held, inside[q], outside[q], threshold)

    # -- intrinsic splits ------------------------------------------------------------------
    @staticmethod
    def _intrinsic_rows(
        logits: np.ndarray, f64_logits: np.ndarray, tier: str, convention: str = "numpy"
    ) -> tuple[np.ndarray, np.ndarray]:
        view = tier_view(logits, tier, convention)
        if tier == "logits":
            f64 = f64_logits
        else:
            f64 = np.take_along_axis(log_softmax_f64(f64_logits), view.ids.astype(np.int64), axis=1)
        return intrinsic_features(view, f64), view.values

    def _heldout(self, data: ModelData, tier: str) -> None:
        # the stored pool's probes (rows = ids), so a search does not change what the heads train on
        probes = np.random.default_rng(SPLIT_SEED).permutation(data.pool_size)[:INTRINSIC_TRAIN_PROBES]
        X, V, probe_of, weight, target = [], [], [], [], []
        y: dict[str, list[Any]] = {h: [] for h in HEADS}
        for c, cls in enumerate(data.classes):
            f, v = self._intrinsic_rows(data.reference[c][probes], data.pool_f64[probes], tier, cls.convention)
            X.append(f)
            V.append(v)
            probe_of.append(probes)
            target.append(np.full(len(probes), c))
            # a class stands for all its member configs, as the test does
            weight.append(np.full(len(probes), float(len(cls.members))))
            for h in HEADS:
                y[h] += [cls.labels[h]] * len(probes)
        clf = IntrinsicClassifier(heads=HEADS, audit_sizes=QUERIES).fit(
            np.concatenate(X),
            np.column_stack([np.array(y[h]) for h in HEADS]),
            groups=np.concatenate(probe_of),
            sample_weight=np.concatenate(weight),
            targets=np.concatenate(target),
        )
        baselines = self._fit_baselines(np.concatenate(V), [{h: y[h][i] for h in HEADS} for i in range(len(y["full"]))])
        test_feats = {
            cid: self._intrinsic_rows(data.fresh[cid], data.fresh_f64, tier, data.convention(cid)) for cid in data.fresh
        }
        for q in QUERIES:
            groups = query_groups(len(data.fresh_ids), q)
            keep = groups >= 0
            if not keep.any():  # fewer probes than queries: no audit of this size fits
                continue
            correct: dict[tuple[str, str], list] = {}
            for cid, (f, v) in test_feats.items():
                truth = data.config_labels[cid]
                post = clf.posteriors(f[keep], groups[keep])
                for h in HEADS:
                    values, p = post[h]
                    correct.setdefault((h, "lightgbm"), []).append(np.asarray(values)[p.argmax(axis=1)] == truth[h])
                    best = self._baseline_predictions(baselines[h], v[keep], groups[keep])
                    correct.setdefault((h, "hspi-ld-svm"), []).append({e: best[e] == truth[h] for e in best})
            for h in HEADS:
                self._row(
                    data.model,
                    "heldout-probes",
                    tier,
                    h,
                    "lightgbm",
                    q,
                    np.concatenate(correct[(h, "lightgbm")]),
                    trees=clf.rounds_for(h, q) if h in clf.rounds_ else 0,
                )
            self._baseline_rows(data.model, "heldout-probes", tier, q, correct)

    def transfer_training_set(self, data: dict[str, ModelData], model: str, tier: str) -> TransferTrainingSet:
        """Intrinsic rows of every model but `model`, from each config's class reference.

        Labelled with each config's own labels, as the test on `model` is scored: a class's merged
        label ("a|b") holds what one model could not tell apart, which another model may part, and a
        head trained on it can never answer a config's own label."""
        heads = TRANSFER_HEADS
        X, V, source, config = [], [], [], []
        y: dict[str, list[Any]] = {h: [] for h in heads}
        for other, d in data.items():
            if other == model:
                continue
            probes = np.random.default_rng(SPLIT_SEED).permutation(d.pool_size)[: INTRINSIC_TRAIN_PROBES // 3]
            for cid in d.replay:
                f, v = self._intrinsic_rows(
                    d.reference[d.class_of[cid]][probes], d.pool_f64[probes], tier, d.convention(cid)
                )
                X.append(f)
                V.append(v)
                source += [other] * len(probes)
                config += [f"{other}/{cid}"] * len(probes)
                own = self.dataset.manifest.configs[cid].labels
                for h in heads:
                    y[h] += [own[h]] * len(probes)
        return TransferTrainingSet(X, V, {h: np.array(v) for h, v in y.items()}, np.array(source), np.array(config))

    def _transfer(self, data: dict[str, ModelData], model: str, tier: str) -> None:
        heads = TRANSFER_HEADS
        X, V, y, source, config = self.transfer_training_set(data, model, tier)
        # tree counts are chosen by predicting one training model from the other: transfer, as tested
        clf = IntrinsicClassifier(heads=heads, audit_sizes=QUERIES).fit(
            np.concatenate(X), np.column_stack([y[h] for h in heads]), groups=source, targets=config
        )
        widths = {v.shape[1] for v in V}
        target = data[model]
        baselines = None
        if len(widths) == 1 and tier_view(target.fresh[next(iter(target.fresh))][:1], tier).values.shape[1] in widths:
            rows = np.random.default_rng(SPLIT_SEED).permutation(len(source))[:BASELINE_TRAIN_ROWS]
            values = np.concatenate(V)
            baselines = {
                h: {e: HSPILDBaseline(encoding=e).fit(values[rows], y[h][rows]) for e in ENCODINGS} for h in heads
            }
        # the platforms this model is served on are known (its grid), their outputs are not: the label
        # shares of its grid replace the training models' as the prior
        target_prior = {
            h: label_shares([self.dataset.manifest.configs[cid].labels[h] for cid in target.fresh]) for h in heads
        }
        for q in QUERIES:
            groups = query_groups(len(target.fresh_ids), q)
            keep = groups >= 0
            if not keep.any():  # fewer probes than queries: no audit of this size fits
                continue
            correct: dict[tuple[str, str], list] = {}
            for cid, logits in target.fresh.items():
                f, v = self._intrinsic_rows(logits[keep], target.fresh_f64[keep], tier, target.convention(cid))
                post = clf.posteriors(f, groups[keep], prior=target_prior)
                # a class merges configs; in transfer the truth is this config's own label
                truth = self.dataset.manifest.configs[cid].labels
                for h in heads:
                    labels, p = post[h]
                    correct.setdefault((h, "lightgbm"), []).append(np.asarray(labels)[p.argmax(axis=1)] == truth[h])
                    if baselines is not None:
                        best = self._baseline_predictions(baselines[h], v, groups[keep])
                        correct.setdefault((h, "hspi-ld-svm"), []).append({e: best[e] == truth[h] for e in best})
            for h in heads:
                self._row(
                    model,
                    "transfer-model",
                    tier,
                    h,
                    "lightgbm",
                    q,
                    np.concatenate(correct[(h, "lightgbm")]),
                    trees=clf.rounds_for(h, q) if h in clf.rounds_ else 0,
                )
            self._baseline_rows(model, "transfer-model", tier, q, correct)
