"""The `text` tier of an audit: greedy tokens only, read against the border-prompt vote.

An endpoint that returns text says something about its platform only on prompts whose top two
tokens nearly tie.  `TextEvidence` keeps the greedy answers per probe kind (`pool` and `border`),
asks the `GreedyVote` for the class posterior, and picks the next prompt by expected information
gain, never one whose first token equals the previous prompt's (prefix caches).
"""

from __future__ import annotations

import numpy as np

from hspi.classifier.greedy_vote import GreedyVote, TextVerdict, rank_probes
from hspi.collector.models import ModelSpec
from hspi.collector.probes import BORDER_STREAM_SIZE, ProbeSet


class TextEvidence:
    def __init__(
        self, vote: GreedyVote, spec: ModelSpec, pool_size: int, *, avoid_pool: set[int] | frozenset[int] = frozenset()
    ) -> None:
        self.vote = vote
        self.avoid_pool = set(avoid_pool)  # pool probes never to ask
        self.probe_sets = {"pool": ProbeSet(spec, "pool", pool_size)}
        if "border" in vote.probe_ids_:  # a registered model's vote has pool probes only
            self.probe_sets["border"] = ProbeSet(spec, "border", BORDER_STREAM_SIZE)
        self.answers: dict[str, tuple[list[int], list[int]]] = {}
        self.last_first_token: int | None = None

    def version(self, kind: str) -> str:
        return self.probe_sets[kind].version

    def kind_of(self, probe_set_version: str) -> str:
        return next(k for k, ps in self.probe_sets.items() if ps.version == probe_set_version)

    def inputs(self, kind: str, probe_id: int) -> np.ndarray:
        return self.probe_sets[kind].inputs(np.array([probe_id]))[0]

    def knows(self, kind: str, probe_id: int) -> bool:
        return kind in self.vote.probe_ids_ and bool(np.isin(probe_id, self.vote.probe_ids_[kind]))

    def add(self, kind: str, probe_id: int, observed: int) -> None:
        """One greedy answer (-1: not a single token of the vocabulary)."""
        ids, seen = self.answers.setdefault(kind, ([], []))
        ids.append(int(probe_id))
        seen.append(int(observed))
        self.last_first_token = int(self.inputs(kind, probe_id)[0])

    @property
    def n(self) -> int:
        return sum(len(ids) for ids, _ in self.answers.values())

    def _answers(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return {k: (np.asarray(i), np.asarray(o)) for k, (i, o) in self.answers.items() if i}

    def posterior(self) -> np.ndarray:
        if not self.n:
            return np.full(len(self.vote.classes_), 1.0 / len(self.vote.classes_))
        return self.vote.class_posterior(self._answers())

    def verdict(self) -> TextVerdict:
        return self.vote.predict(self._answers())

    def next_probe(self) -> tuple[str, int] | None:
        """The unused probe with the largest expected information gain; None when none is informative."""
        used = {k: list(ids) for k, (ids, _) in self.answers.items()}
        used["pool"] = used.get("pool", []) + sorted(self.avoid_pool)
        for kind, probe_id, gain in rank_probes(self.vote, self.posterior(), used=used, limit=64):
            if gain <= 1e-9:
                return None
            if self.last_first_token is None or int(self.inputs(kind, probe_id)[0]) != self.last_first_token:
                return kind, probe_id
        return None
