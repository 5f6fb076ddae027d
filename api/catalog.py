"""What the service knows: reference datasets (platform classes), classifiers, and classifying
answers collected elsewhere against them, all through the service's one `ReferenceStore`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from hspi.api.public_views import heads_public
from hspi.api.schemas import ClassifierInfo, ClassifyRequest, ClassifyResult, PlatformClass, PlatformList
from hspi.audit.claims import audit_verdict, head_reports
from hspi.audit.references import ReferenceStore
from hspi.classifier.reference import ReferenceMatcher
from hspi.classifier.sequential import ReferenceBook, ReferenceEvidence
from hspi.collector.models import MODEL_SPECS, model_spec
from hspi.equivalence import EquivalenceClass
from hspi.errors import ConfigError, ModelError
from hspi.features.tiers import TIERS, TierView
from hspi.terms import TIER_WIDTH, MatchStatus, Tier


class Catalog:
    """The service's view of its `ReferenceStore`: which models it audits, their classes, classifiers."""

    def __init__(self, references: ReferenceStore | None = None) -> None:
        self.references = references or ReferenceStore()

    @property
    def dataset(self) -> Path | None:
        return self.references.dataset

    @property
    def classifier(self) -> Path | None:
        return self.references.classifier

    def dataset_dir(self, model: str) -> Path:
        return self.references.dataset_dir(model)

    def classifier_dir(self, model: str) -> Path:
        return self.references.classifier_dir(model)

    def models(self) -> list[str]:
        """Models this service can audit: a reference dataset and a classifier for each (built-in reference
        models, and models registered with `hspi model add` whose references the service's dataset holds)."""
        from hspi.collector.registry import ModelRegistry

        return [m for m in [*MODEL_SPECS, *ModelRegistry().registered_names()] if self._has(m)]

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
        return self.references.references(model).classes

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

    def matcher(self, model: str, tier: str) -> ReferenceMatcher:
        try:
            return self.references.matcher(model, tier)
        except ModelError:
            raise ModelError(f"this service has no classifier for {model} at the {tier} tier") from None

    # -- classify answers collected elsewhere --------------------------------------------------------
    def pool(self, model: str) -> tuple[str, np.ndarray]:
        """(the reference pool's version, its probe ids)."""
        self.check_model(model)
        refs = self.references.references(model)
        return refs.pool.version, refs.pool_ids

    def book(self, model: str, tier: str) -> ReferenceBook:
        self.check_model(model)
        return self.references.references(model).book(tier)

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
        width = TIER_WIDTH[Tier(tier)] or spec.n_outputs
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
        status = MatchStatus.MATCH if evidence.matches() else MatchStatus.UNKNOWN
        heads, verdicts = head_reports(evidence.head_posteriors(), claim, matched=status is MatchStatus.MATCH)
        full = heads.get("full")
        settled = full is not None and full.decided
        verdict_all = audit_verdict(status, verdicts, claim, cut_short=False, settled=settled)
        if status is MatchStatus.UNKNOWN:
            reason = f"no known platform matches: best candidate scores {score:.3f} < threshold {threshold:.3f}"
        else:
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
            heads=heads_public(heads),
        )
