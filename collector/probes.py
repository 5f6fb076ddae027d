"""Deterministic, versioned probe sets.

Every probe is a pure function of (model version, probe-set kind, probe id): any machine, any day,
regenerates the same inputs bit for bit.  The `pool` is the reference pool (every platform's
outputs are stored for it); `fresh` probes come from a separate stream and are never stored as
references: they are what held-out evaluation and reference-free audits use.

`border` is a third stream of *candidates* for border prompts (inputs whose top two outputs nearly
tie, so platforms round them to different winners).  Every non-negative int32 is a candidate id,
laid out so that a search can walk towards a tie and the id alone still regenerates the input:

- token models: ``id = prefix * vocab + last``: a seeded prefix of ``seq_len - 1`` tokens, then
  every vocabulary token as the last one (a search reuses the prefix's work for all of them);
- vector and image models: ``id = arc << ARC_STEP_BITS | step``: the point at parameter
  ``u = step / 2**ARC_STEP_BITS`` on the quarter circle ``x(u) = c(u) a + s(u) b`` between two
  seeded standard-normal endpoints, with the rational parametrisation ``c = (1-u²)/(1+u²)``,
  ``s = 2u/(1+u²)`` (so ``c² + s² = 1``: every point is standard normal again, and only correctly
  rounded + - * / are used: no libm, so every machine computes the same float32 bits).  A search
  bisects along an arc to where the winner changes.

Which candidates are border prompts for a model is a measured selection stored with a dataset
(`features/border.py`), not part of this stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hspi.collector.models import ModelSpec
from hspi.errors import ConfigError

PROBE_SET_VERSION = "probes-v1"
_STREAMS = {"pool": 1, "fresh": 2, "border": 3}
BORDER_STREAM_SIZE = 2**31 - 1  # every non-negative int32 is a border candidate id
ARC_STEP_BITS = 21  # 2^21 points per arc (u resolution 4.8e-7), 1024 arcs in the int32 range
MAX_ENUMERABLE = 2**26  # `ids` of a larger set would be gigabytes: a border stream is addressed by id


@dataclass(frozen=True)
class ProbeSet:
    spec: ModelSpec
    kind: str  # "pool" | "fresh" | "border"
    size: int

    def __post_init__(self) -> None:
        if self.kind not in _STREAMS:
            raise ConfigError(f"unknown probe set {self.kind!r}; allowed: {', '.join(_STREAMS)}")
        if self.kind == "border" and self.spec.source == "registered":
            raise ConfigError(f"border prompts are not searched for registered models ({self.spec.name})")
        if self.kind == "border" and not 0 < self.size <= BORDER_STREAM_SIZE:
            raise ConfigError(f"a border stream holds 1..{BORDER_STREAM_SIZE} candidates, not {self.size}")

    @property
    def version(self) -> str:
        return f"{self.spec.version}/{PROBE_SET_VERSION}/{self.kind}"

    @property
    def ids(self) -> np.ndarray:
        if self.size > MAX_ENUMERABLE:
            raise ConfigError(f"{self.version} has {self.size} candidates: too many to list; address them by id")
        return np.arange(self.size, dtype=np.int32)

    def inputs(self, ids: np.ndarray) -> np.ndarray:
        """Inputs for the given probe ids: float32 vectors/images, or int64 token ids."""
        if self.kind == "border":
            return self._border(np.asarray(ids, dtype=np.int64))
        return np.stack([self._one(int(i)) for i in ids])

    def _seed(self, index: int) -> list[int]:
        return [sum(map(ord, self.spec.version)), _STREAMS[self.kind], index]

    def _one(self, probe_id: int) -> np.ndarray:
        rng = np.random.default_rng(self._seed(probe_id))
        if self.spec.source == "registered":
            from hspi.collector.registered_prompts import round_trip_prompt

            return round_trip_prompt(self.spec, self.kind, probe_id, rng)
        if self.spec.input_kind == "tokens":
            return rng.integers(0, self.spec.n_outputs, size=self.spec.input_shape, dtype=np.int64)
        return rng.standard_normal(self.spec.input_shape).astype(np.float32)

    # --- the border candidate stream -------------------------------------------------------------

    def border_prefix(self, prefix: int) -> np.ndarray:
        """Token models: the seeded first seq_len - 1 tokens shared by candidates prefix * vocab + t."""
        rng = np.random.default_rng(self._seed(prefix))
        return rng.integers(0, self.spec.n_outputs, size=self.spec.input_shape[0] - 1, dtype=np.int64)

    def border_arc(self, arc: int) -> tuple[np.ndarray, np.ndarray]:
        """Vector/image models: the two float64 endpoints (a at u = 0, b at u = 1) of one arc."""
        rng = np.random.default_rng(self._seed(arc))
        a = rng.standard_normal(self.spec.input_shape)
        return a, rng.standard_normal(self.spec.input_shape)

    @staticmethod
    def arc_point(a: np.ndarray, b: np.ndarray, step: int) -> np.ndarray:
        u = step / 2**ARC_STEP_BITS  # exact in float64
        c, s = (1.0 - u * u) / (1.0 + u * u), 2.0 * u / (1.0 + u * u)
        return (c * a + s * b).astype(np.float32)

    def _border(self, ids: np.ndarray) -> np.ndarray:
        if ids.ndim != 1 or (len(ids) and (ids.min() < 0 or ids.max() >= self.size)):
            raise ConfigError(f"border candidate ids must lie in 0..{self.size - 1}")
        tokens = self.spec.input_kind == "tokens"
        out = np.empty((len(ids), *self.spec.input_shape), dtype=np.int64 if tokens else np.float32)
        if tokens:
            vocab = self.spec.n_outputs
            bases, offsets = ids // vocab, ids % vocab
        else:
            bases, offsets = ids >> ARC_STEP_BITS, ids & (2**ARC_STEP_BITS - 1)
        for base in np.unique(bases):
            rows = np.flatnonzero(bases == base)
            if tokens:
                out[rows, :-1] = self.border_prefix(int(base))
                out[rows, -1] = offsets[rows]
            else:
                a, b = self.border_arc(int(base))
                for row in rows:
                    out[row] = self.arc_point(a, b, int(offsets[row]))
        return out
