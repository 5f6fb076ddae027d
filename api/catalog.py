"""What the service knows: reference datasets (platform classes), classifiers, and classifying
answers collected elsewhere against them.  Loaded lazily, once per process, and shared."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import numpy as np

from hspi.api.schemas import ClassifierInfo, ClassifyRequest, ClassifyResult, PlatformClass, PlatformList
from hspi.audit.claims import head_verdict, overall_verdict
from hspi.audit.engine import TOP_GUESSES, HeadReport
from hspi.audit.verdict import Guess
from hspi.classifier.artifacts import load_matcher
from hspi.classifier.reference import CalibratedMatcher, ReferenceMatcher
from hspi.classifier.sequential import ReferenceBook, ReferenceEvidence
from hspi.collector.models import MODEL_SPECS, model_spec
from hspi.dataset import Dataset
from hspi.equivalence import EquivalenceClass, equivalence_classes
from hspi.errors import ConfigError, ModelError
from hspi.features.tiers import TIERS, TierView
from hspi.shipped import shipped_classifier, shipped_dataset

TIER_WIDTH = {"topk20": 20, "topk5": 5, "top1": 1}


class Catalog:
    def __init__(self, dataset: Path | None = None, classifier: Path | None = None) -> None:
        self.dataset, self.classifier = dataset, classifier
        self._lock = threading.Lock()
        self._classes: dict[str, list[EquivalenceClass]] = {}
        self._pools: dict[str, tuple[str, np.ndarray]] = {}
        self._books: dict[tuple[str, str], ReferenceBook] = {}
        self._matchers: dict[tuple[str, str], ReferenceMatcher | CalibratedMatcher] = {}

    def dataset_dir(self, model: str) -> Path:
        return self.dataset or shipped_dataset(model)

    def classifier_dir(self, model: str) -> Path:
        return self.classifier or shipped_classifier(model)

    def models(self) -> list[str]:
        """Models this service can audit: a reference dataset and a classifier for each."""
        return [m for m in MODEL_SPECS if self._has(m)]

    def _has(self, model: str) -> bool:
        return (self.dataset_dir(model) / "dataset.json").is_file() and (self.classifier_dir(model) / model).is_dir()

    def check_model(self, model: str) -> None:
        model_spec(model)  # an unknown name says which are known
        if not self._has(model):
            raise ConfigError(
                f"this service has no reference dataset and classifier for {model}; "
                f"it audits: {', '.join(self.models()) or 'nothing'}"
            )

    # -- platforms -----------------------------------------------------------------------------
    def classes(self, model: str) -> list[EquivalenceClass]:
        self.check_model(model)
        with self._lock:
            if model not in self._classes:
                self._classes[model] = equivalence_classes(Dataset(self.dataset_dir(model)), model)
            return self._classes[model]

    def platforms(self, model: str) -> PlatformList:
        return PlatformList(
            model=model,
            dataset=self.dataset_dir(model).name,
            data=[
                PlatformClass(name=c.name, members=list(c.members), labels=dict(c.labels)) for c in self.classes(model)
            ],
        )

    # -- classifiers ---------------------------------------------------------------------------
    def classifiers(self) -> list[ClassifierInfo]:
        found: list[ClassifierInfo] = []
        for model in self.models():
            root = self.classifier_dir(model) / model
            for tier in TIERS:
                meta_path = root / tier / "reference.json"
                if not meta_path.is_file():
                    continue
                try:
                    meta = json.loads(meta_path.read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    continue  # an unreadable artifact is not offered
                found.append(
                    ClassifierInfo(
                        model=model,
                        tier=tier,
                        kind=str(meta.get("kind", "reference-matcher")),
                        heads=list(meta.get("heads", {})),
                        threshold=float(meta.get("threshold", 0.0)),
                        classes=len(meta.get("classes", {})),
                        dataset=meta.get("dataset"),
                        versions={k: str(v) for k, v in (meta.get("versions") or {}).items()},
                    )
                )
        return found

    def matcher(self, model: str, tier: str) -> ReferenceMatcher | CalibratedMatcher:
        key = (model, tier)
        with self._lock:
            if key not in self._matchers:
                directory = self.classifier_dir(model) / model / tier
                if not (directory / "reference.json").is_file():
                    raise ModelError(f"this service has no classifier for {model} at the {tier} tier")
                self._matchers[key] = load_matcher(directory)[0]
            return self._matchers[key]

    # -- classify answers collected elsewhere --------------------------------------------------------
    def pool(self, model: str) -> tuple[str, np.ndarray]:
        """(the reference pool's version, its probe ids)."""
        self.check_model(model)
        with self._lock:
            if model not in self._pools:
                ds = Dataset(self.dataset_dir(model))
                version = next(v for v in ds.manifest.probe_sets[model] if v.endswith("/pool"))
                first = equivalence_classes(ds, model)[0].members[0]
                self._pools[model] = (version, ds.pool_references(first, model).probe_ids)
            return self._pools[model]

    def book(self, model: str, tier: str) -> ReferenceBook:
        key = (model, tier)
        classes = self.classes(model)
        _, pool_ids = self.pool(model)
        with self._lock:
            if key not in self._books:
                ds = Dataset(self.dataset_dir(model))
                logits = []
                for c in classes:
                    responses = ds.pool_references(c.members[0], model)
                    if not np.array_equal(responses.probe_ids, pool_ids):
                        raise ModelError(f"reference runs of {model} cover different pool probes")
                    logits.append(responses.as_float32())
                self._books[key] = ReferenceBook(logits, [c.labels for c in classes], tier, pool_ids)
            return self._books[key]

    def classify(self, request: ClassifyRequest, claim: dict[str, str]) -> ClassifyResult:
        model, tier = request.model, request.tier
        spec = model_spec(model)
        version, pool_ids = self.pool(model)
        if request.probe_set not in (None, version):
            raise ConfigError(
                f"answers must be to the reference pool {version}, not {request.probe_set}: "
                "each is compared with every platform's stored answer to the same probe"
            )
        if tier != "logits" and spec.input_kind != "tokens":
            raise ConfigError(f"{model} is not a language model: its answers are at the logits tier")
        width = spec.n_outputs if tier == "logits" else TIER_WIDTH[tier]
        known = {int(p) for p in pool_ids}
        seen: set[int] = set()
        views: list[tuple[int, TierView]] = []
        for i, answer in enumerate(request.answers):
            where = f"answers[{i}]"
            if answer.probe_id not in known:
                raise ConfigError(
                    f"{where}: probe {answer.probe_id} is not in the reference pool {version} "
                    f"(ids 0..{len(pool_ids) - 1})"
                )
            if answer.probe_id in seen:
                raise ConfigError(f"{where}: probe {answer.probe_id} is answered twice")
            seen.add(answer.probe_id)
            if len(answer.ids) != width or len(answer.values) != width:
                raise ConfigError(
                    f"{where}: the {tier} tier of {model} shows {width} values; got {len(answer.ids)} ids "
                    f"and {len(answer.values)} values"
                )
            if any(not 0 <= t < spec.n_outputs for t in answer.ids) or len(set(answer.ids)) != width:
                raise ConfigError(f"{where}: ids must be distinct outputs of {model}, in 0..{spec.n_outputs - 1}")
            if not all(math.isfinite(v) for v in answer.values):
                raise ConfigError(f"{where}: values must be finite numbers")
            ids = np.asarray([answer.ids], dtype=np.int32)
            values = np.asarray([answer.values], dtype=np.float32)
            if tier == "logits":  # the logits tier shows every output in id order
                order = np.argsort(ids[0])
                ids, values = ids[:, order], values[:, order]
            views.append((answer.probe_id, TierView(tier, ids, values)))
        evidence = ReferenceEvidence(self.matcher(model, tier), self.book(model, tier))
        for probe_id, view in views:
            evidence.update(probe_id, view)
        score, threshold = evidence.match_score(), evidence.matcher.threshold_
        status = "match" if score >= threshold else "unknown"
        heads: dict[str, HeadReport] = {}
        verdicts: dict[str, str] = {}
        for head, (values_, post) in evidence.head_posteriors().items():
            order = np.argsort(-post)[:TOP_GUESSES]
            report = HeadReport(guesses=[Guess(label=values_[i], probability=round(float(post[i]), 4)) for i in order])
            if head in claim:
                verdict, p, why = head_verdict(claim[head], values_, [float(x) for x in post])
                report.claimed, report.verdict, report.why = claim[head], verdict, why
                report.claim_probability = None if p is None else round(p, 4)
                verdicts[head] = verdict
            heads[head] = report
        if status == "unknown":
            verdict_all = "unknown-platform" if claim else None
            reason = f"no known platform matches: best candidate scores {score:.3f} < threshold {threshold:.3f}"
        else:
            verdict_all = overall_verdict(verdicts) if claim else None
            reason = "a known platform matches the answers"
        return ClassifyResult(
            model=model,
            tier=tier,
            status=status,
            verdict=verdict_all,
            reason=reason,
            answers_used=len(views),
            match_score=round(score, 4),
            threshold=round(threshold, 4),
            claim=claim,
            heads=heads,
        )
