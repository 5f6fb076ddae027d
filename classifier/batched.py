"""A platform's answers under dynamic batching: a *set* per probe, and how an answer is read against it.

A server that batches concurrent requests computes a probe inside a batch of whatever size formed,
so on a platform whose kernels block by batch size (fp32 through MKL on CPU) one probe has several
answers.  `BatchedAnswers` holds, per class and pool probe, the distinct answers collected in
batches of each size (`collector.batched_collect`), with the sizes that gave each.

Reading an answer against a class (`ReferenceBook.read`): it fits the class when it is its stored answer
or one of its answers under batching.  Among the classes it fits, the likelihood of the answer is a
mixture of two servers, one that runs each request alone (the stored answer, probability 1) and one
that batches (each answer as often as the batch sizes that gave it): P = (1[a = stored] + f(a)) / 2,
f(a) the share of sizes that gave a.  A class without answers under batching (a static `bs=8`
configuration: its batch size is fixed) answers only its stored answer, P = 1[a = stored].  So a
server whose answers always look like batch size 8 is read as the static `bs=8` class, and one whose
answers change with the load as the class under batching.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hspi.dataset import BATCHED_RUN, Dataset
from hspi.equivalence import EquivalenceClass
from hspi.errors import DatasetError


@dataclass
class BatchedAnswers:
    """Per class: {pool row: (distinct float32 answers (k, V), bit mask of the sizes that gave each (k,))}."""

    batch_sizes: list[int]
    probe_ids: np.ndarray  # sorted pool probe ids answered in batches
    per_class: list[dict[int, tuple[np.ndarray, np.ndarray]]]
    # per class: whether the batch-mates, not only the size, changed an answer (measured at collection):
    # then its answers under batching are not all collected, and an answer may fit none of them
    mates_dependent: list[bool] | None = None

    @classmethod
    def load(
        cls, ds: Dataset, model: str, classes: Sequence[EquivalenceClass], pool_ids: np.ndarray
    ) -> BatchedAnswers | None:
        """Every class's answers under batching (the union over its members that have them); None when
        no configuration of `model` has a batched run."""
        row_of = {int(p): i for i, p in enumerate(pool_ids)}
        sizes: list[int] | None = None
        ids: set[int] = set()
        per_class: list[dict[int, tuple[np.ndarray, np.ndarray]]] = []
        mates_dependent: list[bool] = []
        for c in classes:
            mates_dependent.append(False)
            answers: dict[int, dict[bytes, tuple[np.ndarray, int]]] = {}
            for member in c.members:
                run = ds.manifest.configs[member].runs.get(BATCHED_RUN)
                if run is None or model not in run.shards:
                    continue
                if sizes is None:
                    sizes = list(run.batch_sizes)
                elif sizes != list(run.batch_sizes):
                    raise DatasetError(
                        f"{ds.directory}: {member} answered {model} in batches of {run.batch_sizes}, others in {sizes}"
                    )
                got = ds.responses(member, BATCHED_RUN, model)
                mates_dependent[-1] |= run.batch_mates.get(model, {}).get("changed", 0) > 0
                masks = run.answer_sizes.get(model, [])
                if len(masks) != len(got.probe_ids):
                    raise DatasetError(f"{ds.directory}: {member} {BATCHED_RUN} of {model} lacks its batch-size masks")
                values = got.as_float32()
                for probe, row_values, mask in zip(got.probe_ids, values, masks):
                    if int(probe) not in row_of:
                        raise DatasetError(f"{ds.directory}: {member} answered {model} probe {probe} outside its pool")
                    ids.add(int(probe))
                    slot = answers.setdefault(row_of[int(probe)], {})
                    key = row_values.tobytes()
                    previous = slot.get(key)
                    slot[key] = (row_values, (previous[1] if previous else 0) | int(mask))
            per_class.append(
                {
                    row: (np.stack([v for v, _ in slot.values()]), np.array([m for _, m in slot.values()]))
                    for row, slot in answers.items()
                }
            )
        if sizes is None:
            return None
        return cls(sizes, np.array(sorted(ids), dtype=np.int64), per_class, mates_dependent)

    def share(self, mask: int) -> float:
        """The share of the batch sizes a mask covers."""
        return bin(int(mask)).count("1") / len(self.batch_sizes)

    def sizes_of(self, mask: int) -> list[int]:
        return [s for i, s in enumerate(self.batch_sizes) if mask >> i & 1]


@dataclass
class AnswerReading:
    """One answer read against every class: which fit it, their log mixture likelihood relative to the
    best fit (0 for the best, -inf never: classes that do not fit get 0 and are left to the matcher),
    and for each class the mask of the batch sizes that gave the answer (0: none, or not collected)."""

    fits: np.ndarray  # (C,) bool
    log_weight: np.ndarray  # (C,)
    masks: np.ndarray  # (C,) int


def read_answer_signature(
    shown: int, primary: np.ndarray, alternates: Sequence[tuple[np.ndarray, np.ndarray] | None], batched: BatchedAnswers
) -> AnswerReading:
    """`shown`: the answer's signature; `primary` (C,): each class's stored signature at that probe;
    `alternates[c]`: (signatures (k,), masks (k,)) of class c's answers under batching there, or None."""
    n = len(primary)
    likelihood = np.zeros(n)
    masks = np.zeros(n, dtype=np.int64)
    for c in range(n):
        stored = float(primary[c] == shown)
        alt = alternates[c]
        if alt is None:
            likelihood[c] = stored
            continue
        hit = np.flatnonzero(alt[0] == shown)
        if len(hit):
            masks[c] = int(alt[1][hit[0]])
        share = batched.share(masks[c]) if len(hit) else 0.0
        likelihood[c] = (stored + share) / 2.0
    fits = likelihood > 0
    log_weight = np.zeros(n)
    if fits.any():
        log_weight[fits] = np.log(likelihood[fits] / likelihood.max())
    return AnswerReading(fits, log_weight, masks)
