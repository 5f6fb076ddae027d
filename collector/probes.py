"""Deterministic, versioned probe sets.

Every probe is a pure function of (model version, probe-set kind, probe id): any machine, any day,
regenerates the same inputs bit for bit.  The `pool` is the reference pool (every platform's
outputs are stored for it); `fresh` probes come from a separate stream and are never stored as
references: they are what held-out evaluation and reference-free audits use.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hspi.errors import ConfigError

from hspi.collector.models import ModelSpec

PROBE_SET_VERSION = "probes-v1"
_STREAMS = {"pool": 1, "fresh": 2}


@dataclass(frozen=True)
class ProbeSet:
    spec: ModelSpec
    kind: str  # "pool" | "fresh"
    size: int

    def __post_init__(self) -> None:
        if self.kind not in _STREAMS:
            raise ConfigError(f"unknown probe set {self.kind!r}; allowed: {', '.join(_STREAMS)}")

    @property
    def version(self) -> str:
        return f"{self.spec.version}/{PROBE_SET_VERSION}/{self.kind}"

    @property
    def ids(self) -> np.ndarray:
        return np.arange(self.size, dtype=np.int32)

    def inputs(self, ids: np.ndarray) -> np.ndarray:
        """Inputs for the given probe ids: float32 vectors/images, or int64 token ids."""
        return np.stack([self._one(int(i)) for i in ids])

    def _one(self, probe_id: int) -> np.ndarray:
        seed = [sum(map(ord, self.spec.version)), _STREAMS[self.kind], probe_id]
        rng = np.random.default_rng(seed)
        if self.spec.input_kind == "tokens":
            return rng.integers(0, self.spec.n_outputs, size=self.spec.input_shape, dtype=np.int64)
        return rng.standard_normal(self.spec.input_shape).astype(np.float32)
