"""No threshold at the ceiling: answers bit-identical to a stored reference match at any number of
answers, for every shipped classifier (a mean of equal probabilities may round one step below the
threshold it was calibrated at; that must never turn an exact match into "unknown")."""

from __future__ import annotations

import numpy as np
import pytest

from hspi.audit.references import ReferenceStore
from hspi.classifier.sequential import ReferenceEvidence
from hspi.features.tiers import TIERS, tier_view
from hspi.shipped import shipped_classifier

STORE = ReferenceStore()
SHIPPED = [
    (model, tier)
    for model in ("lm-small", "mlp", "cnn", "lm-gpt2")
    for tier in TIERS
    if (shipped_classifier(model) / model / tier / "reference.json").is_file()
]


@pytest.mark.slow
@pytest.mark.parametrize("model, tier", SHIPPED)
def test_exact_answers_match_at_every_count_up_to_64(model: str, tier: str) -> None:
    refs = STORE.references(model)
    matcher = STORE.matcher(model, tier)
    rng = np.random.default_rng(0)
    for cls in (0, len(refs.classes) - 1):  # the first and the last class
        evidence = ReferenceEvidence(matcher, refs.book(tier))
        rows = rng.choice(len(refs.pool_ids), size=64, replace=False)
        view = tier_view(refs.logits[cls][rows], tier)
        for n, row in enumerate(rows, start=1):
            one = type(view)(tier, view.ids[n - 1 : n], view.values[n - 1 : n])
            evidence.update(int(refs.pool_ids[row]), one)
            assert evidence.matches(), (
                f"{model}/{tier}: class {refs.classes[cls].name}'s own answers read unknown after {n} "
                f"(score {evidence.match_score()!r} < threshold {matcher.threshold_!r})"
            )
