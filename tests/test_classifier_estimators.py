"""The classifiers are scikit-learn estimators: `clone` works on each, `check_estimator` passes where its
(X, y) contract applies, calibration is a wrapper, and artifacts (the shipped `models/` too) load back."""

from __future__ import annotations

import json
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.utils.estimator_checks import parametrize_with_checks

from hspi.classifier.artifacts import load, load_matcher, save
from hspi.classifier.baseline import HSPILDBaseline
from hspi.classifier.greedy_vote import GreedyVote
from hspi.classifier.intrinsic import ClassPrior, IntrinsicClassifier
from hspi.classifier.lgbm import BinaryBooster, MulticlassBooster, NotFittedModelError
from hspi.classifier.reference import (
    SCORE_TOLERANCE,
    UNCALIBRATED_THRESHOLD,
    CalibratedMatcher,
    ReferenceMatcher,
)
from hspi.errors import ModelError
from hspi.platform import HEADS

MODELS = Path(__file__).resolve().parents[1] / "models"

# every estimator class, with non-default parameters so `clone` has something to copy
ESTIMATORS = [
    BinaryBooster(n_estimators=7, num_leaves=5, n_jobs=1),
    MulticlassBooster(n_estimators=7, learning_rate=0.2, n_jobs=1),
    ClassPrior(),
    IntrinsicClassifier(heads=("dtype",), n_estimators=9, audit_sizes=(1, 4), n_jobs=1),
    ReferenceMatcher(heads=("dtype", "full"), n_estimators=9, n_jobs=1),
    CalibratedMatcher(ReferenceMatcher(heads=("full",), n_estimators=5), quantile=0.05),
    HSPILDBaseline(encoding="ieee-bits", max_iter=5),
    GreedyVote(epsilon_floor=0.02),
]


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda e: type(e).__name__)
def test_clone_copies_every_parameter(estimator):
    copy = clone(estimator)
    assert type(copy) is type(estimator) and copy is not estimator
    params, copied = estimator.get_params(deep=False), copy.get_params(deep=False)
    assert params.keys() == copied.keys()
    for name, value in params.items():
        if hasattr(value, "get_params"):  # a nested estimator is cloned too: same parameters, a new object
            assert copied[name] is not value and copied[name].get_params() == value.get_params()
        else:
            assert copied[name] == value


# check_estimator's (X, y) contract applies to the single-table classifiers, and to the multi-head
# ones fitted on a 1-D y (one head).  Not checked, and why:
# - GreedyVote: fits per-probe-kind token tables, not (X, y); its inputs are no feature matrix.
# - CalibratedMatcher: fits a threshold on match scores around a prefit matcher; no (X, y) classifier.
CHECKED = [
    BinaryBooster(n_estimators=10, n_jobs=1),
    MulticlassBooster(n_estimators=10, n_jobs=1),
    ClassPrior(),
    IntrinsicClassifier(heads=("label",), n_estimators=10, n_jobs=1),
    ReferenceMatcher(heads=("full",), n_estimators=10, n_jobs=1),
    HSPILDBaseline(),
]

# checks expected to fail, per class, with the reason
EXPECTED_FAILURES = {
    "BinaryBooster": {},
    "MulticlassBooster": {
        "check_sample_weight_equivalence_on_dense_data": "LightGBM's bins and min_child_samples count rows: "
        "a row of weight 2 is not two rows",
    },
    "IntrinsicClassifier": {
        "check_sample_weight_equivalence_on_dense_data": "LightGBM's bins and min_child_samples count rows: "
        "a row of weight 2 is not two rows",
        "check_classifier_multioutput": "the number of outputs is the number of `heads`, fixed before fit",
        "check_classifiers_one_label": "a head with one label answers it as a string (its saved JSON form)",
    },
    "ReferenceMatcher": {
        "check_classifiers_regression_target": "y says same/different: refused unless 0/1 (TrainingDataError)",
        "check_classifiers_classes": "y is same/different (bool), not arbitrary labels",
        "check_estimators_dtypes": "y is same/different (0/1 or bool): the check's labels 1/2 are refused",
        "check_classifier_data_not_an_array": "as above: labels 1/2 are refused",
        "check_fit2d_1feature": "as above: labels 1/2 are refused",
        "check_classifier_multioutput": "the number of outputs is the number of `heads`, fixed before fit",
    },
    "HSPILDBaseline": {},
    "ClassPrior": {},
}


def _expected_failures(estimator):
    return EXPECTED_FAILURES[type(estimator).__name__]


@parametrize_with_checks(CHECKED, expected_failed_checks=_expected_failures)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


# --- calibration is a wrapper ------------------------------------------------------------------------


def _pairs(seed: int = 0, n: int = 400):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    y = np.column_stack([X[:, 0] > 0, X[:, 1] > 0.3])  # two heads: dtype, full
    return X, y


def test_calibration_wraps_and_leaves_the_matcher_alone():
    X, y = _pairs()
    matcher = ReferenceMatcher(heads=("dtype", "full"), n_estimators=10).fit(X, y)
    before = matcher.get_params(), dict(vars(matcher))
    scores = np.linspace(0.2, 0.9, 101)
    calibrated = CalibratedMatcher(matcher, quantile=0.1).fit(scores)
    assert calibrated.threshold_ == pytest.approx(np.quantile(scores, 0.1) - SCORE_TOLERANCE)
    assert matcher.threshold_ == UNCALIBRATED_THRESHOLD
    assert matcher.get_params() == before[0] and vars(matcher).keys() == before[1].keys()
    probes = X[:6].reshape(3, 2, 3)
    for head, p in calibrated.pair_probabilities(probes).items():
        np.testing.assert_array_equal(p, matcher.pair_probabilities(probes)[head])
    np.testing.assert_array_equal(calibrated.predict(X), matcher.predict(X))
    assert matcher.predict(X).shape == (len(X), 2)
    assert CalibratedMatcher(matcher).fit([]).threshold_ == UNCALIBRATED_THRESHOLD
    with pytest.raises(NotFittedModelError):
        CalibratedMatcher(ReferenceMatcher()).fit(scores).pair_probabilities(probes)


def test_matcher_refuses_a_dict_or_a_wrong_shape():
    X, y = _pairs()
    with pytest.raises(ModelError, match="one column per head"):
        ReferenceMatcher(heads=("dtype", "full")).fit(X, y[:, :1])
    with pytest.raises(ModelError, match="unknown heads"):
        ReferenceMatcher(heads=("colour",)).fit(X, y[:, 0])


# --- artifacts ---------------------------------------------------------------------------------------


def test_matcher_artifacts_round_trip(tmp_path):
    X, y = _pairs()
    y = np.column_stack([y, np.ones(len(X), dtype=bool)])  # a head whose pairs all agree: no model
    matcher = ReferenceMatcher(heads=("dtype", "full", "engine"), n_estimators=10, n_jobs=1).fit(X, y)
    calibrated = CalibratedMatcher(matcher, quantile=0.05).fit(np.linspace(0, 1, 50))
    save(tmp_path / "calibrated", calibrated, {"model": "toy"})
    save(tmp_path / "bare", matcher, {})
    assert not list(tmp_path.rglob("*.pkl")) and not (tmp_path / "calibrated" / "reference-engine.txt").exists()
    loaded, meta = load(tmp_path / "calibrated")
    assert isinstance(loaded, CalibratedMatcher) and meta["model"] == "toy"
    assert loaded.threshold_ == calibrated.threshold_ and loaded.quantile == 0.05
    assert loaded.matcher.get_params() == {**matcher.get_params(), "heads": ("dtype", "full", "engine")}
    probes = X[:8].reshape(4, 2, 3)
    for head, p in calibrated.pair_probabilities(probes).items():
        np.testing.assert_array_equal(loaded.pair_probabilities(probes)[head], p)
    bare, _ = load(tmp_path / "bare" / "reference.json")
    assert isinstance(bare, ReferenceMatcher) and bare.threshold_ == UNCALIBRATED_THRESHOLD


def test_vote_saves_through_artifacts(tmp_path):
    vote = GreedyVote().fit(
        {"pool": (np.arange(4), np.array([[1, 2, 3, 4], [1, 2, 3, 5]]), np.array([[0, 0, 0, 0], [0, 0, 0, 0]]))},
        {"pool": (np.array([0, 1]), np.array([0, 3]), np.array([1, 5]))},
        classes=["a", "b"],
        labels=[{h: "a" for h in HEADS}, {h: "b" for h in HEADS}],
        vocab_size=8,
    )
    path = save(tmp_path, vote, {"dataset": "toy"})
    loaded, meta = load(tmp_path)
    assert path.name == "greedy-vote.json" and meta == {"dataset": "toy"}
    assert loaded.get_params() == vote.get_params() and loaded.classes_ == vote.classes_


SHIPPED = sorted(MODELS.glob("*/*/*/reference.json"))


@pytest.mark.parametrize("meta_path", SHIPPED, ids=lambda p: "/".join(p.parts[-4:-1]))
def test_shipped_matchers_load_with_the_same_numbers(meta_path):
    """The shipped `hspi-classifier/1` layout loads as a calibrated matcher: its threshold is the
    stored one and every head scores as LightGBM scores the stored model text."""
    stored = json.loads(meta_path.read_text(encoding="utf-8"))
    assert stored["format"] == "hspi-classifier/1"  # models/ is not rewritten
    matcher, meta = load_matcher(meta_path.parent)
    assert isinstance(matcher, CalibratedMatcher) and matcher.threshold_ == stored["threshold"]
    assert tuple(matcher.heads_) == tuple(stored["heads"]) == matcher.matcher.heads
    assert {k: matcher.matcher.get_params()[k] for k in stored["params"]} == stored["params"]
    n_features = next(m for m in matcher.heads_.values() if m is not None).n_features_in_
    probes = np.random.default_rng(0).normal(size=(5, 3, n_features))
    probs = matcher.pair_probabilities(probes)
    for head, name in stored["heads"].items():
        expected = (
            np.ones(15)
            if name is None
            else lgb.Booster(model_file=str(meta_path.parent / name)).predict(probes.reshape(15, -1))
        )
        np.testing.assert_array_equal(probs[head], expected.reshape(5, 3))
