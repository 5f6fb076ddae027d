"""Classifier artifacts: the one save/load path.  LightGBM model text per head + one JSON file.  Never pickle.

`save(directory, estimator, metadata)` writes, by estimator:
- `ReferenceMatcher` / `CalibratedMatcher`: `reference-<head>.txt` + `reference.json`;
- `IntrinsicClassifier`: `intrinsic-<head>.txt` (boosted heads) + `intrinsic.json`;
- `GreedyVote`: `greedy-vote.json` (no trees).
`load(path)` reads any of them back (a directory, or the JSON file itself) as (estimator, metadata).

JSON layouts: `hspi-classifier/2` stores every estimator parameter (`get_params()`) and, for a
calibrated matcher, the calibration quantile.  `hspi-classifier/1` (the shipped `models/`) stored
four matcher parameters and the threshold only; it still loads, as the `CalibratedMatcher` it
was (training always calibrated), with the same numbers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from hspi.classifier.greedy_vote import VOTE_FILE, GreedyVote
from hspi.classifier.intrinsic import ClassPrior, IntrinsicClassifier
from hspi.classifier.lgbm import BinaryBooster, MulticlassBooster
from hspi.classifier.reference import (
    DEFAULT_ACCEPT_QUANTILE,
    UNCALIBRATED_THRESHOLD,
    CalibratedMatcher,
    ReferenceMatcher,
)
from hspi.errors import ModelError
from hspi.provenance import library_versions

ARTIFACT_FORMAT = "hspi-classifier/2"
LEGACY_FORMATS = ("hspi-classifier/1",)
MATCHER_FILE, INTRINSIC_FILE = "reference.json", "intrinsic.json"

Matcher = ReferenceMatcher | CalibratedMatcher


# --- one entry point ---------------------------------------------------------------------------------


def save(directory: Path, estimator: Any, metadata: Mapping[str, Any] | None = None) -> Path:
    """Write a fitted estimator into `directory`; returns its JSON file."""
    directory = Path(directory)
    if isinstance(estimator, ReferenceMatcher | CalibratedMatcher):
        return save_matcher(directory, estimator, dict(metadata or {}))
    if isinstance(estimator, IntrinsicClassifier):
        return save_intrinsic(directory, estimator, dict(metadata or {}))
    if isinstance(estimator, GreedyVote):
        return save_vote(directory / VOTE_FILE, estimator, metadata)
    raise ModelError(f"no artifact layout for {type(estimator).__name__}")


def load(path: Path) -> tuple[Any, dict[str, Any]]:
    """Read back what `save` wrote: `path` is the JSON file or a directory holding exactly one."""
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in (MATCHER_FILE, INTRINSIC_FILE, VOTE_FILE) if (path / name).exists()]
        if len(found) != 1:
            raise ModelError(f"{path}: expected one classifier file, found {[p.name for p in found] or 'none'}")
        path = found[0]
    if path.name == VOTE_FILE:
        vote = load_vote(path)
        return vote, dict(vote.metadata_)
    meta = _read_meta(path)
    if meta.get("kind") == "reference-matcher":
        return _matcher_from(path.parent, meta), meta
    if meta.get("kind") == "intrinsic":
        return _intrinsic_from(path.parent, meta), meta
    raise ModelError(f"{path}: unknown classifier kind {meta.get('kind')!r}")


# --- reference matchers ------------------------------------------------------------------------------


def save_matcher(directory: Path, matcher: Matcher, metadata: dict[str, Any]) -> Path:
    """A `CalibratedMatcher` saves its matcher and threshold; a bare `ReferenceMatcher` its 0.5."""
    calibrated = matcher if isinstance(matcher, CalibratedMatcher) else None
    inner = calibrated.matcher if calibrated is not None else matcher
    if (
        inner is None
        or not hasattr(inner, "heads_")
        or (calibrated is not None and not hasattr(calibrated, "threshold_"))
    ):
        raise ModelError("only a fitted (and, if wrapped, calibrated) matcher can be saved")
    directory.mkdir(parents=True, exist_ok=True)
    heads: dict[str, str | None] = {}
    for head, model in inner.heads_.items():
        if model is None:
            heads[head] = None
            continue
        (directory / f"reference-{head}.txt").write_text(model.to_text(), encoding="utf-8")
        heads[head] = f"reference-{head}.txt"
    params = inner.get_params()
    params["heads"] = list(params["heads"])
    meta = {
        "format": ARTIFACT_FORMAT,
        "kind": "reference-matcher",
        "heads": heads,
        "threshold": (calibrated or inner).threshold_,
        "params": params,
        "calibration": None if calibrated is None else {"quantile": calibrated.quantile},
        "versions": library_versions(),
        **metadata,
    }
    return _write_json(directory / MATCHER_FILE, meta, indent=1)


def load_matcher(directory: Path) -> tuple[Matcher, dict[str, Any]]:
    """(matcher, metadata) from `directory`/reference.json: a `CalibratedMatcher` unless it was saved
    uncalibrated.  Reads the current layout and the shipped `hspi-classifier/1` one."""
    meta = _read_meta(Path(directory) / MATCHER_FILE)
    return _matcher_from(Path(directory), meta), meta


def _matcher_from(directory: Path, meta: dict[str, Any]) -> Matcher:
    try:
        params = dict(meta["params"])
        params["heads"] = tuple(params.get("heads", meta["heads"]))  # layout 1: the heads' keys, in order
        matcher = ReferenceMatcher(**params)
        matcher.heads_ = {  # type: ignore[misc]  # a head with one label everywhere keeps no booster (None)
            head: None if name is None else BinaryBooster.from_text(_read(directory / name), classes=(False, True))
            for head, name in meta["heads"].items()
        }
        matcher.single_output_ = False
        matcher.classes_ = [np.array([False, True])] * len(matcher.heads_)
        n_features = {m.n_features_in_ for m in matcher.heads_.values() if m is not None}
        if len(n_features) == 1:
            matcher.n_features_in_ = n_features.pop()
        threshold = float(meta["threshold"])
        calibration = meta.get("calibration", {"quantile": DEFAULT_ACCEPT_QUANTILE})  # layout 1: always calibrated
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"corrupt classifier metadata in {directory}: {type(exc).__name__}: {exc}") from None
    matcher.threshold_ = threshold if calibration is None else UNCALIBRATED_THRESHOLD
    if calibration is None:
        return matcher
    return CalibratedMatcher.from_threshold(matcher, threshold, quantile=float(calibration["quantile"]))


# --- intrinsic classifiers ---------------------------------------------------------------------------


def save_intrinsic(directory: Path, clf: IntrinsicClassifier, metadata: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    heads: dict[str, Any] = {}
    for head, model in clf.heads_.items():
        if isinstance(model, str):
            heads[head] = {"constant": model}
            continue
        prior = [float(p) for p in clf.priors_[head]]
        if isinstance(model, ClassPrior):  # no tree generalised: the head is its training prior
            heads[head] = {
                "classes": [str(c) for c in model.classes_],
                "prior": prior,
                "trees": {str(q): 0 for q in clf.rounds_[head]},
            }
            continue
        (directory / f"intrinsic-{head}.txt").write_text(model.to_text(), encoding="utf-8")
        heads[head] = {
            "file": f"intrinsic-{head}.txt",
            "classes": [str(c) for c in model.classes_],
            "prior": prior,
            "trees": {str(q): k for q, k in clf.rounds_[head].items()},
        }  # per audit size
    params = clf.get_params()
    params["heads"], params["audit_sizes"] = list(params["heads"]), [int(q) for q in params["audit_sizes"]]
    meta = {
        "format": ARTIFACT_FORMAT,
        "kind": "intrinsic",
        "heads": heads,
        "params": params,
        "single_output": bool(getattr(clf, "single_output_", False)),
        "versions": library_versions(),
        **metadata,
    }
    return _write_json(directory / INTRINSIC_FILE, meta, indent=1)


def load_intrinsic(directory: Path) -> tuple[IntrinsicClassifier, dict[str, Any]]:
    meta = _read_meta(Path(directory) / INTRINSIC_FILE)
    return _intrinsic_from(Path(directory), meta), meta


def _intrinsic_from(directory: Path, meta: dict[str, Any]) -> IntrinsicClassifier:
    params = dict(meta.get("params", {}))  # layout 1: the heads only
    params["heads"] = tuple(params.get("heads", meta["heads"]))
    if "audit_sizes" in params:
        params["audit_sizes"] = tuple(params["audit_sizes"])
    clf = IntrinsicClassifier(**params)
    clf.heads_, clf.priors_, clf.rounds_ = {}, {}, {}
    for head, spec in meta["heads"].items():
        if "constant" in spec:
            clf.heads_[head] = spec["constant"]
            continue
        clf.priors_[head] = np.asarray(spec["prior"], dtype=np.float64)
        clf.rounds_[head] = {int(q): int(k) for q, k in spec["trees"].items()}
        clf.heads_[head] = (
            ClassPrior.from_probabilities(spec["classes"], spec["prior"])
            if "file" not in spec
            else MulticlassBooster.from_text(_read(directory / spec["file"]), spec["classes"])
        )
    clf.single_output_ = bool(meta.get("single_output", False))
    per_head = [np.asarray(clf.head_classes(h)) for h in clf.heads_]
    clf.classes_ = per_head[0] if clf.single_output_ else per_head
    return clf


# --- greedy votes ------------------------------------------------------------------------------------


def save_vote(path: Path, vote: GreedyVote, metadata: Mapping[str, Any] | None = None) -> Path:
    """The vote as one compact JSON file (`GreedyVote.to_dict`), written atomically."""
    return _write_json(Path(path), vote.to_dict(metadata), separators=(",", ":"))


def load_vote(path: Path) -> GreedyVote:
    path = Path(path)
    if not path.exists():
        raise ModelError(f"greedy-vote file missing: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"corrupt greedy-vote file {path}: {exc}") from None
    try:
        return GreedyVote.from_dict(data)
    except ModelError as exc:
        raise ModelError(f"{path}: {exc}") from None


# --- files -------------------------------------------------------------------------------------------


def _write_json(path: Path, data: Mapping[str, Any], **dump: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, **dump), encoding="utf-8")
    os.replace(tmp, path)
    return path


def _read(path: Path) -> str:
    if not path.exists():
        raise ModelError(f"classifier file missing: {path}")
    return path.read_text(encoding="utf-8")


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(_read(path))
    except json.JSONDecodeError as exc:
        raise ModelError(f"corrupt classifier metadata {path}: {exc}") from None
    if meta.get("format") not in (ARTIFACT_FORMAT, *LEGACY_FORMATS):
        raise ModelError(
            f"{path}: unsupported classifier format {meta.get('format')!r} "
            f"(expected {ARTIFACT_FORMAT} or {', '.join(LEGACY_FORMATS)})"
        )
    return meta
