"""The `Target` interface: anything that answers probes of one reference model.

Every target (in-process torch or ONNX Runtime, llama.cpp, a JSON-logits endpoint, an
OpenAI-compatible endpoint) answers one probe at a tier with `ask`, and tells which tier it gives
with `probe_tier`; white-box targets also give full outputs for many probes with `answer`.  Every
target is a context manager that releases what it holds (connections, models) on exit.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from hspi.collector.probes import ProbeSet
from hspi.errors import TargetError
from hspi.features.tiers import tier_view
from hspi.responses import Responses, TierAnswers
from hspi.terms import Tier


class Target:
    """Answers probes.  Subclasses declare `kind`, and implement `answer` (full outputs) or `ask`."""

    kind: ClassVar[str]
    tier: ClassVar[str] = "logits"  # the richest tier it gives

    def answer(self, probes: ProbeSet, ids: np.ndarray) -> Responses:
        """Full outputs for `ids` of `probes`, rows in the order given."""
        raise TargetError(f"a {self.kind} target gives no full outputs, only answers at a tier")

    def ask(self, probes: ProbeSet, probe_id: int, tier: Tier) -> TierAnswers:
        """One probe's answer as `tier` shows it (one billed query for a remote target)."""
        responses = self.answer(probes, np.array([probe_id]))
        view = tier_view(responses.as_float32(), Tier.TOP1 if tier is Tier.TEXT else tier, self.logprob_convention)
        values = np.full_like(view.values, np.nan) if tier is Tier.TEXT else view.values  # the token only
        return TierAnswers(responses.model, probes.version, responses.probe_ids, tier, view.ids, values)

    @property
    def logprob_convention(self) -> str:
        """How this target's answers turn logits into logprobs (`features.tiers.CONVENTIONS`)."""
        return "numpy"

    def probe_tier(self, probes: ProbeSet, probe_id: int, most: Tier | None = None) -> tuple[Tier, TierAnswers]:
        """The richest tier up to `most` (default: all it gives) that this target gives, and its answer."""
        tier = Tier(self.tier) if most is None else most
        return tier, self.ask(probes, probe_id, tier)

    def prompt_mismatch(self) -> str | None:
        """Why the last prompt the target reports running is not the one the references ran on (None: it is,
        or the target does not say)."""
        return None

    def close(self) -> None:
        """Release what the target holds; the default holds nothing."""

    def __enter__(self) -> Target:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
