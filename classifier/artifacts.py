"""Classifier artifacts: LightGBM model text per head + one JSON metadata file.  Never pickle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from hspi.classifier.intrinsic import ClassPrior, IntrinsicClassifier
from hspi.classifier.lgbm import BinaryBooster, MulticlassBooster
from hspi.classifier.reference import ReferenceMatcher
from hspi.errors import ModelError
from hspi.provenance import library_versions

ARTIFACT_FORMAT = "hspi-classifier/1"


def save_matcher(directory: Path, matcher: ReferenceMatcher, metadata: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    heads = {}
    for head, model in matcher.heads_.items():
        if model is None:
            heads[head] = None
            continue
        (directory / f"reference-{head}.txt").write_text(model.to_text(), encoding="utf-8")
        heads[head] = f"reference-{head}.txt"
    meta = {
        "format": ARTIFACT_FORMAT,
        "kind": "reference-matcher",
        "heads": heads,
        "threshold": matcher.threshold_,
        "params": {
            "n_estimators": matcher.n_estimators,
            "num_leaves": matcher.num_leaves,
            "learning_rate": matcher.learning_rate,
            "random_state": matcher.random_state,
        },
        "versions": library_versions(),
        **metadata,
    }
    (directory / "reference.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")


def load_matcher(directory: Path) -> tuple[ReferenceMatcher, dict[str, Any]]:
    meta = _read_meta(directory / "reference.json")
    matcher = ReferenceMatcher(**meta["params"])
    matcher.heads_ = {}
    for head, name in meta["heads"].items():
        matcher.heads_[head] = None if name is None else BinaryBooster.from_text(_read(directory / name))
    matcher.threshold_ = float(meta["threshold"])
    return matcher, meta


def save_intrinsic(directory: Path, clf: IntrinsicClassifier, metadata: dict[str, Any]) -> None:
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
    meta = {"format": ARTIFACT_FORMAT, "kind": "intrinsic", "heads": heads, "versions": library_versions(), **metadata}
    (directory / "intrinsic.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")


def load_intrinsic(directory: Path) -> tuple[IntrinsicClassifier, dict[str, Any]]:
    meta = _read_meta(directory / "intrinsic.json")
    clf = IntrinsicClassifier(heads=tuple(meta["heads"]))
    clf.heads_, clf.priors_, clf.rounds_ = {}, {}, {}
    for head, spec in meta["heads"].items():
        if "constant" in spec:
            clf.heads_[head] = spec["constant"]
            continue
        clf.priors_[head] = np.asarray(spec["prior"], dtype=np.float64)
        clf.rounds_[head] = {int(q): int(k) for q, k in spec["trees"].items()}
        clf.heads_[head] = (
            ClassPrior(spec["classes"], spec["prior"])
            if "file" not in spec
            else MulticlassBooster.from_text(_read(directory / spec["file"]), spec["classes"])
        )
    return clf, meta


def _read(path: Path) -> str:
    if not path.exists():
        raise ModelError(f"classifier file missing: {path}")
    return path.read_text(encoding="utf-8")


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(_read(path))
    except json.JSONDecodeError as exc:
        raise ModelError(f"corrupt classifier metadata {path}: {exc}") from None
    if meta.get("format") != ARTIFACT_FORMAT:
        raise ModelError(f"{path}: unsupported classifier format {meta.get('format')!r} (expected {ARTIFACT_FORMAT})")
    return meta
