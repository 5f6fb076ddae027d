"""Unit tests for hspi.classifier: the HSPI-LD baseline encodings, LightGBM wrappers, evidence sums."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hspi.classifier.baseline import ENCODINGS, HSPILDBaseline, encode
from hspi.classifier.evidence import PROB_FLOOR, group_sum, log_odds, log_prob, softmax
from hspi.classifier.lgbm import BinaryBooster, MulticlassBooster
from hspi.errors import ConfigError, ModelError

float32_matrices = hnp.arrays(
    np.float32,
    st.tuples(st.integers(1, 5), st.integers(1, 6)),
    elements=st.floats(width=32, allow_nan=True, allow_infinity=True),
)


# --- baseline encodings ------------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(float32_matrices)
def test_ieee_bits_encoding_packs_back_to_the_floats(values):
    n, k = values.shape
    bits = encode(values, "ieee-bits")
    assert bits.shape == (n, 32 * k)
    assert bits.dtype == np.float32
    assert set(np.unique(bits).tolist()) <= {0.0, 1.0}
    packed = np.packbits(bits.astype(np.uint8).reshape(n, k, 32), axis=-1)  # MSB first, 4 bytes per value
    rebuilt = packed.reshape(n, k * 4).view(">u4").astype(np.uint32).view(np.float32)
    np.testing.assert_array_equal(rebuilt.view(np.uint32), values.view(np.uint32))


@settings(max_examples=80, deadline=None)
@given(float32_matrices)
def test_sign_exponent_mantissa_encoding_rebuilds_the_floats(values):
    n, k = values.shape
    fields = encode(values, "sign-exponent-mantissa")
    assert fields.shape == (n, 3 * k)
    sign, exponent, mantissa = (fields[:, i * k : (i + 1) * k].astype(np.uint32) for i in range(3))
    assert (sign <= 1).all() and (exponent <= 255).all() and (mantissa < 2**23).all()
    rebuilt = (sign << np.uint32(31)) | (exponent << np.uint32(23)) | mantissa
    np.testing.assert_array_equal(rebuilt, values.view(np.uint32))


def test_encodings_of_known_values():
    values = np.array([[1.0, -2.0]], dtype=np.float32)
    bits = encode(values, "ieee-bits")
    assert bits[0, :32].tolist() == [0, 0, 1, 1, 1, 1, 1, 1, 1] + [0] * 23  # 0x3F800000
    assert bits[0, 32:].tolist() == [1, 1] + [0] * 30  # 0xC0000000
    assert encode(values, "sign-exponent-mantissa").tolist() == [[0, 1, 127, 128, 0, 0]]


def test_unknown_encoding():
    with pytest.raises(ConfigError, match="octal"):
        encode(np.zeros((1, 2), np.float32), "octal")
    with pytest.raises(ConfigError):
        HSPILDBaseline(encoding="octal").fit(np.zeros((2, 2), np.float32), np.array(["a", "b"]))


def separable(n_per_class: int = 30, width: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = (1.0 + 0.1 * rng.standard_normal((n_per_class, width))).astype(np.float32)
    b = (-1.0 + 0.1 * rng.standard_normal((n_per_class, width))).astype(np.float32)
    return np.concatenate([a, b]), np.array(["pos"] * n_per_class + ["neg"] * n_per_class)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_baseline_separates_trivial_classes(encoding):
    X, y = separable()
    model = HSPILDBaseline(encoding=encoding).fit(X, y)
    assert list(model.classes_) == ["neg", "pos"]
    X_test, y_test = separable(seed=1)
    scores = model.decision(X_test)
    assert scores.shape == (len(X_test), 2)
    predicted = model.classes_[scores.argmax(axis=1)]
    assert (predicted == y_test).mean() >= 0.95  # a bounded-epoch SGD SVM; the classes are far apart
    groups = np.repeat(np.arange(6), 10)  # each group holds probes of one class
    classes, posteriors = model.posteriors(X_test, groups)
    assert classes == ["neg", "pos"]
    assert posteriors.shape == (6, 2)
    np.testing.assert_allclose(posteriors.sum(axis=1), 1.0)
    truth = np.array([classes.index(y_test[g * 10]) for g in range(6)])
    assert (posteriors[np.arange(6), truth] > 0.9).all()


def test_baseline_with_one_class_is_uninformative():
    X, _ = separable()
    model = HSPILDBaseline().fit(X, np.array(["only"] * len(X)))
    assert list(model.classes_) == ["only"]
    np.testing.assert_array_equal(model.decision(X[:3]), np.ones((3, 1)))
    classes, posteriors = model.posteriors(X[:4], np.array([0, 0, 1, 1]))
    assert classes == ["only"]
    np.testing.assert_array_equal(posteriors, np.ones((2, 1)))


# --- LightGBM wrappers -------------------------------------------------------------------------


def blobs(n: int = 240, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 4))
    y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5).astype(int)  # 0, 1, 2
    return X, y


def test_binary_booster_fit_predict_and_text_round_trip():
    X, y = blobs()
    labels = (y > 0).astype(int)
    model = BinaryBooster(n_estimators=30).fit(X, labels)
    proba = model.predict_proba(X)
    assert proba.shape == (len(X), 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert ((proba[:, 1] > 0.5) == labels).mean() > 0.95
    X_new, _ = blobs(n=50, seed=1)
    restored = BinaryBooster.from_text(model.to_text())
    np.testing.assert_array_equal(restored.predict_proba(X_new), model.predict_proba(X_new))
    assert restored.to_text() == model.to_text()


def test_binary_booster_needs_both_labels():
    X, _ = blobs(n=30)
    with pytest.raises(ModelError):
        BinaryBooster(n_estimators=5).fit(X, np.ones(len(X)))


def test_multiclass_booster_fit_predict_and_text_round_trip():
    X, y = blobs()
    names = np.array(["sse42", "avx2", "amx"])[y]
    model = MulticlassBooster(n_estimators=30).fit(X, names)
    assert list(model.classes_) == ["amx", "avx2", "sse42"]
    proba = model.predict_proba(X)
    assert proba.shape == (len(X), 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert (model.predict(X) == names).mean() > 0.95
    X_new, _ = blobs(n=40, seed=2)
    restored = MulticlassBooster.from_text(model.to_text(), list(model.classes_))
    np.testing.assert_array_equal(restored.predict_proba(X_new), model.predict_proba(X_new))
    np.testing.assert_array_equal(restored.predict(X_new), model.predict(X_new))


def test_multiclass_booster_needs_two_classes():
    X, _ = blobs(n=30)
    with pytest.raises(ModelError, match="two classes"):
        MulticlassBooster(n_estimators=5).fit(X, np.array(["a"] * len(X)))


def test_fits_are_deterministic():
    X, y = blobs()
    first = MulticlassBooster(n_estimators=10).fit(X, y).predict_proba(X)
    second = MulticlassBooster(n_estimators=10).fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("cls", [BinaryBooster, MulticlassBooster])
def test_unfitted_boosters_refuse_to_predict(cls):
    model = cls()
    with pytest.raises(ModelError, match="not fitted"):
        model.predict_proba(np.zeros((2, 4)))
    with pytest.raises(ModelError, match="not fitted"):
        model.to_text()


# --- evidence ----------------------------------------------------------------------------------


def test_group_sum():
    per_probe = np.array([[1.0, 10.0], [2.0, 20.0], [4.0, 40.0], [8.0, 80.0]])
    out = group_sum(per_probe, np.array([0, 2, 0, 2]))
    np.testing.assert_array_equal(out, [[5.0, 50.0], [0.0, 0.0], [10.0, 100.0]])
    np.testing.assert_array_equal(group_sum(np.array([1.0, 2.0, 3.0]), np.array([1, 1, 0])), [3.0, 3.0])
    assert group_sum(np.zeros((0, 3)), np.zeros(0, dtype=int)).shape == (0, 3)


def test_softmax():
    scores = np.array([[0.0, np.log(3.0)], [1000.0, 0.0], [-5.0, -5.0]])
    p = softmax(scores, axis=1)
    np.testing.assert_allclose(p, [[0.25, 0.75], [1.0, 0.0], [0.5, 0.5]], atol=1e-12)
    assert np.isfinite(p).all()
    np.testing.assert_allclose(softmax(scores + 123.0, axis=1), p)
    np.testing.assert_allclose(softmax(np.array([[1.0, 2.0], [1.0, 2.0]]), axis=0), 0.5)


def test_log_odds_clips_extreme_probabilities():
    edge = np.log(PROB_FLOOR) - np.log1p(-PROB_FLOOR)
    out = log_odds(np.array([0.0, 1e-9, PROB_FLOOR, 0.5, 1.0 - 1e-9, 1.0]))
    np.testing.assert_allclose(out, [edge, edge, edge, 0.0, -edge, -edge])
    assert np.isfinite(out).all()
    assert log_odds(np.array([0.75]))[0] == pytest.approx(np.log(3.0))


def test_log_prob_clips_at_the_floor():
    np.testing.assert_allclose(log_prob(np.array([0.0, 1.0, 0.5])), [np.log(PROB_FLOOR), 0.0, np.log(0.5)])


# --- intrinsic heads: tree counts chosen on held-out groups, the prior when nothing generalises ---


def _heads(y: dict[str, np.ndarray], heads: tuple[str, ...]) -> np.ndarray:
    """The 2-D y an IntrinsicClassifier fits: one column per head, in `heads` order."""
    return np.column_stack([y[h] for h in heads])


def _intrinsic_data(seed: int = 0, n_groups: int = 30, per_group: int = 12):
    """Head "signal" is a noisy function of feature 0; head "noise" is independent of every feature."""
    rng = np.random.default_rng(seed)
    n = n_groups * per_group
    X = rng.normal(size=(n, 4))
    signal = np.where(X[:, 0] + 0.3 * rng.normal(size=n) > 0, "hi", "lo")
    noise = rng.choice(["a", "a", "a", "b"], size=n)  # 3:1, unrelated to X
    return X, {"signal": signal, "noise": noise}, np.repeat(np.arange(n_groups), per_group)


def test_intrinsic_heads_keep_trees_only_where_they_generalise():
    from hspi.classifier.intrinsic import ClassPrior, IntrinsicClassifier

    X, y, groups = _intrinsic_data()
    clf = IntrinsicClassifier(heads=("signal", "noise")).fit(X, _heads(y, ("signal", "noise")), groups=groups)
    assert clf.rounds_["signal"][1] > 0 and isinstance(clf.heads_["signal"], MulticlassBooster)
    assert clf.rounds_["noise"] == {1: 0} and isinstance(clf.heads_["noise"], ClassPrior)
    Xt, yt, _ = _intrinsic_data(seed=1)
    predicted = clf.predict(Xt)  # (n, heads)
    assert (predicted[:, 0] == yt["signal"]).mean() > 0.85
    assert set(predicted[:, 1]) == {"a"}  # the prior's majority, whatever the features say


def test_intrinsic_without_groups_grows_the_fixed_size():
    from hspi.classifier.intrinsic import IntrinsicClassifier

    X, y, _ = _intrinsic_data()
    clf = IntrinsicClassifier(heads=("noise",), n_estimators=7).fit(X, y["noise"])
    assert clf.rounds_["noise"] == {1: 7}
    assert clf.heads_["noise"].booster_.current_iteration() == 7


def test_intrinsic_sample_weight_sets_the_prior():
    from hspi.classifier.intrinsic import IntrinsicClassifier

    X, y, groups = _intrinsic_data()
    weight = np.where(y["noise"] == "b", 10.0, 1.0)  # b now outweighs a 10:3
    clf = IntrinsicClassifier(heads=("noise",)).fit(X, y["noise"], groups=groups, sample_weight=weight)
    assert clf.rounds_["noise"] == {1: 0}
    assert set(clf.predict(X[:20])) == {"b"}  # fitted on a 1-D y: answers 1-D


def test_intrinsic_target_prior_shifts_and_rules_out_labels():
    from hspi.classifier.intrinsic import IntrinsicClassifier

    X, y, groups = _intrinsic_data()
    clf = IntrinsicClassifier(heads=("noise", "signal")).fit(X, _heads(y, ("noise", "signal")), groups=groups)
    rows = np.arange(8)
    base = clf.posteriors(X[rows], rows)
    shifted = clf.posteriors(X[rows], rows, prior={"noise": {"a": 0.1, "b": 0.9}, "signal": {"hi": 1.0}})
    values, post = shifted["noise"]
    assert np.all(post[:, values.index("b")] > 0.5)  # a prior of 9:1 for b beats the training prior of 1:3
    np.testing.assert_allclose(base["noise"][1][:, values.index("a")], 0.75, atol=0.05)
    values, post = shifted["signal"]
    np.testing.assert_allclose(post[:, values.index("lo")], 0.0, atol=1e-12)  # not in the target's labels


def test_intrinsic_heads_choose_trees_per_audit_size():
    from hspi.classifier.intrinsic import IntrinsicClassifier

    rng = np.random.default_rng(7)
    # 40 targets x 24 probes; each target's label shows weakly in every probe (one feature shifted by 0.7 sd)
    targets = np.repeat(np.arange(40), 24)
    labels = np.where(targets % 2 == 0, "even", "odd")
    X = rng.normal(size=(len(targets), 3))
    X[:, 0] += np.where(labels == "even", 0.35, -0.35)
    groups = np.tile(np.arange(24), 40)  # which probe: validation holds other probes
    clf = IntrinsicClassifier(heads=("weak",), audit_sizes=(1, 4, 16)).fit(X, labels, groups=groups, targets=targets)
    assert set(clf.rounds_["weak"]) == {1, 4, 16}
    assert clf.rounds_for("weak", 16) > 0  # sixteen weak probes of one target add up
    assert clf.rounds_for("weak", 9) == clf.rounds_["weak"][4] and clf.rounds_for("weak", 40) == clf.rounds_["weak"][16]
    Xt = rng.normal(size=(16 * 40, 3))
    truth = np.repeat(np.where(np.arange(40) % 2 == 0, "even", "odd"), 16)
    Xt[:, 0] += np.where(truth == "even", 0.35, -0.35)
    values, post = clf.posteriors(Xt, np.repeat(np.arange(40), 16))["weak"]
    assert (np.asarray(values)[post.argmax(axis=1)] == truth[::16]).mean() >= 0.8
    with pytest.raises(ModelError, match="audit sizes"):
        IntrinsicClassifier(heads=("weak",), audit_sizes=(4,)).fit(X, labels, groups=groups)


def test_intrinsic_validation_needs_two_groups():
    from hspi.classifier.intrinsic import IntrinsicClassifier

    X, y, _ = _intrinsic_data()
    with pytest.raises(ModelError, match="two row groups"):
        IntrinsicClassifier(heads=("signal",)).fit(X, y["signal"], groups=np.zeros(len(X)))


def test_intrinsic_artifacts_round_trip_boosters_and_priors(tmp_path):
    from hspi.classifier.artifacts import load_intrinsic, save_intrinsic
    from hspi.classifier.intrinsic import IntrinsicClassifier

    X, y, groups = _intrinsic_data()
    y["constant"] = np.array(["only"] * len(X))
    heads = ("signal", "noise", "constant")
    clf = IntrinsicClassifier(heads=heads).fit(X, _heads(y, heads), groups=groups)
    save_intrinsic(tmp_path, clf, {"model": "test"})
    assert not list(tmp_path.glob("*.pkl")) and (tmp_path / "intrinsic-signal.txt").exists()
    assert not (tmp_path / "intrinsic-noise.txt").exists()  # a prior head is plain JSON
    loaded, meta = load_intrinsic(tmp_path)
    assert meta["model"] == "test" and meta["heads"]["noise"]["trees"] == {"1": 0}
    assert loaded.rounds_ == clf.rounds_
    rows = np.arange(len(X))
    for head in ("signal", "noise", "constant"):
        a, b = clf.posteriors(X, rows)[head], loaded.posteriors(X, rows)[head]
        assert a[0] == b[0]
        np.testing.assert_allclose(a[1], b[1])


# --- transfer-model training rows -----------------------------------------------------------------


@pytest.mark.slow
def test_transfer_trains_on_each_configs_own_labels():
    """The transfer test scores a config's own label, so training rows carry their config's own label
    too, never the merged label ("a|b") of a class that one training model could not part."""
    from hspi.classifier.evaluation import TRANSFER_HEADS, Evaluation, load_model_data
    from hspi.dataset import Dataset
    from hspi.shipped import CPU_DATASET

    dataset = Dataset(CPU_DATASET)
    data = {m: load_model_data(dataset, m) for m in ("mlp", "cnn")}
    merged = [cid for cid in data["cnn"].replay if any("|" in v for v in data["cnn"].config_labels[cid].values())]
    assert merged  # the shipped cnn merges configs whose labels differ: the case under test
    rows = Evaluation(dataset, open_set=False).transfer_training_set(data, "lm-small", "top1")
    assert set(rows.source) == {"mlp", "cnn"}
    for head in TRANSFER_HEADS:
        for config in np.unique(rows.config):
            cid = config.split("/", 1)[1]
            assert set(rows.labels[head][rows.config == config]) == {dataset.manifest.configs[cid].labels[head]}


def test_trees_replace_the_prior_only_beyond_one_standard_error():
    from hspi.classifier.intrinsic import beats_prior

    # 1,000 validation audits: trees right on 2 the prior missed and wrong on 1 it got: +0.001, SE 0.0017
    few = np.r_[np.ones(2), -np.ones(1), np.zeros(997)]
    assert not beats_prior(few)
    many = np.r_[np.ones(60), -np.ones(10), np.zeros(930)]  # +0.05, SE 0.008
    assert beats_prior(many)
    assert not beats_prior(np.zeros(50))  # ties
    assert not beats_prior(np.ones(1))  # one audit says nothing about noise
    assert not beats_prior(-many)
