"""Identify the platform behind answers to pool probes: reference-relative features -> `Identification`."""

from __future__ import annotations

import numpy as np

from hspi.audit.claims import head_reports
from hspi.audit.identification import Identification
from hspi.classifier.reference import CalibratedMatcher, ReferenceMatcher
from hspi.classifier.sequential import score_matches
from hspi.dataset import Dataset
from hspi.equivalence import equivalence_classes
from hspi.errors import DatasetError
from hspi.features.relative import relative_features
from hspi.features.tiers import reference_values, tier_view
from hspi.responses import Responses
from hspi.terms import MatchStatus


def identify(
    dataset: Dataset, matcher: ReferenceMatcher | CalibratedMatcher, responses: Responses, tier: str
) -> Identification:
    classes = equivalence_classes(dataset, responses.model)
    if not responses.probe_set.endswith("/pool"):
        raise DatasetError(f"answers to {responses.probe_set} have no references: identify needs pool probes")
    view = tier_view(responses.as_float32(), tier)
    features = []
    for cls in classes:
        ref = dataset.pool_references(cls.members[0], responses.model)
        if ref.probe_set != responses.probe_set:
            raise DatasetError(f"probe-set mismatch: answers to {responses.probe_set}, references of {ref.probe_set}")
        full = reference_values(ref.select(responses.probe_ids).as_float32(), tier, cls.convention)
        features.append(relative_features(view, full))
    X = np.stack(features, axis=1)
    groups = np.zeros(len(responses.probe_ids), dtype=np.int64)
    probs = matcher.pair_probabilities(X)
    score = float(ReferenceMatcher.match_scores(probs["full"], groups)[0])
    posts = matcher.posteriors(
        probs, [c.labels for c in classes], groups, from_full=score_matches(score, matcher.threshold_)
    )
    reports, _ = head_reports({head: (values, post[0]) for head, (values, post) in posts.items()}, {})
    heads = {head: report.guesses for head, report in reports.items()}
    status = MatchStatus.MATCH if score_matches(score, matcher.threshold_) else MatchStatus.UNKNOWN
    reason = (
        ""
        if status is MatchStatus.MATCH
        else f"no stored platform matches: best candidate scores {score:.3f} < threshold {matcher.threshold_:.3f}"
    )
    return Identification(
        model=responses.model,
        tier=tier,
        queries=len(responses.probe_ids),
        status=status,
        match_score=round(score, 4),
        threshold=round(matcher.threshold_, 4),
        heads=heads,
        reason=reason,
    )
