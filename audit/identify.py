"""Identify the platform behind answers to pool probes: reference-relative features -> `Verdict`."""

from __future__ import annotations

import numpy as np

from hspi.audit.verdict import Guess, Verdict
from hspi.classifier.reference import CalibratedMatcher, ReferenceMatcher
from hspi.dataset import Dataset
from hspi.equivalence import equivalence_classes
from hspi.errors import DatasetError
from hspi.features.relative import relative_features
from hspi.features.tiers import reference_values, tier_view
from hspi.responses import Responses

TOP_GUESSES = 3


def identify(
    dataset: Dataset, matcher: ReferenceMatcher | CalibratedMatcher, responses: Responses, tier: str
) -> Verdict:
    classes = equivalence_classes(dataset, responses.model)
    if not responses.probe_set.endswith("/pool"):
        raise DatasetError(f"answers to {responses.probe_set} have no references: identify needs pool probes")
    view = tier_view(responses.as_float32(), tier)
    features = []
    for cls in classes:
        ref = dataset.pool_references(cls.members[0], responses.model)
        if ref.probe_set != responses.probe_set:
            raise DatasetError(f"probe-set mismatch: answers to {responses.probe_set}, references of {ref.probe_set}")
        full = reference_values(ref.select(responses.probe_ids).as_float32(), tier)
        features.append(relative_features(view, full))
    X = np.stack(features, axis=1)
    groups = np.zeros(len(responses.probe_ids), dtype=np.int64)
    probs = matcher.pair_probabilities(X)
    score = float(ReferenceMatcher.match_scores(probs["full"], groups)[0])
    posts = matcher.posteriors(probs, [c.labels for c in classes], groups, from_full=score >= matcher.threshold_)
    heads = {}
    for head, (values, post) in posts.items():
        order = np.argsort(-post[0])[:TOP_GUESSES]
        heads[head] = [Guess(label=values[i], probability=round(float(post[0][i]), 4)) for i in order]
    status = "match" if score >= matcher.threshold_ else "unknown"
    reason = (
        ""
        if status == "match"
        else f"no stored platform matches: best candidate scores {score:.3f} < threshold {matcher.threshold_:.3f}"
    )
    return Verdict(
        model=responses.model,
        tier=tier,
        queries=len(responses.probe_ids),
        status=status,
        match_score=round(score, 4),
        threshold=round(matcher.threshold_, 4),
        heads=heads,
        reason=reason,
    )
