"""The `Target` interface: anything that answers probes of one reference model."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

from hspi.collector.probes import ProbeSet
from hspi.responses import Responses


class Target(ABC):
    """Answers probes with raw outputs.  Subclasses declare `kind` and the tier they can give."""

    kind: ClassVar[str]
    tier: ClassVar[str] = "logits"

    @abstractmethod
    def answer(self, probes: ProbeSet, ids: np.ndarray) -> Responses:
        """Outputs for `ids` of `probes`, rows in the order given."""
