"""The data training and evaluation share: one model's stored outputs, the replay split, pair features.

`load_model_data` reads a dataset's reference, replay, fresh and targeted re-run outputs of one model;
the float64 oracle's outputs (`collector/targets/oracle.py`), which only the evaluation's intrinsic
features read, are computed only when asked (`oracle=True`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hspi.dataset import SEARCHED_REPLAY_RUN, SPLITTING_RUN, Dataset
from hspi.equivalence import EquivalenceClass, equivalence_classes
from hspi.errors import DatasetError
from hspi.features.relative import relative_features
from hspi.features.tiers import tier_view

SPLIT_SEED = 11
TRAIN_SHARE, CALIBRATE_SHARE = 0.4, 0.2  # of the replayed pool probes; the rest is the test set


@dataclass
class ModelData:
    model: str
    classes: list[EquivalenceClass]
    class_of: dict[str, int]  # config id -> class index
    config_labels: dict[str, dict[str, str]]
    reference: dict[int, np.ndarray]  # class index -> (pool, V) float32 logits, rows follow pool_ids
    replay_ids: np.ndarray
    replay: dict[str, np.ndarray]  # config -> (R, V) float32 logits, rows follow replay_ids
    fresh_ids: np.ndarray
    fresh: dict[str, np.ndarray]
    pool_f64: np.ndarray = field(default_factory=lambda: np.zeros(0))
    fresh_f64: np.ndarray = field(default_factory=lambda: np.zeros(0))
    # the reference pool's probe ids, sorted: the stored pool 0..pool_size-1, then searched probes
    pool_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))
    pool_size: int = 0
    # pool probes re-run outside `replay` because they split near-twin classes, where collected (the
    # `replay-splitting` and `replay-searched` runs): their ids and every config's answers
    targeted_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))
    targeted: dict[str, np.ndarray] = field(default_factory=dict)

    def convention(self, config: str) -> str:
        """How this config's server shows logprobs (its class's convention)."""
        return self.classes[self.class_of[config]].convention

    def rows(self, probe_ids: np.ndarray) -> np.ndarray:
        """Rows of `reference` (and `pool_f64`) holding these pool probe ids."""
        rows = np.searchsorted(self.pool_ids, probe_ids)
        if len(rows) and (rows.max() >= len(self.pool_ids) or not np.array_equal(self.pool_ids[rows], probe_ids)):
            raise DatasetError(f"{self.model}: probes outside the reference pool")
        return rows


def load_model_data(dataset: Dataset, model: str, *, oracle: bool = False) -> ModelData:
    """One model's reference, replay, fresh and targeted re-run outputs.  With `oracle`, also the float64
    oracle's outputs on the pool and fresh probes (`pool_f64`, `fresh_f64`), which the intrinsic
    features of the evaluation compare against; computing them is most of the loading time, and
    training never reads them, so by default they stay empty."""
    from hspi.collector.models import model_spec
    from hspi.collector.probes import ProbeSet

    classes = equivalence_classes(dataset, model)
    if len(classes) < 2:
        raise DatasetError(f"{dataset.directory}: model {model} has one equivalence class only; nothing to tell apart")
    configs = [
        c
        for cls in classes
        for c in cls.members
        if c in dataset.complete_configs(model, ("reference", "replay", "fresh"))
    ]
    class_of = {c: i for i, cls in enumerate(classes) for c in cls.members}
    pool_refs = [dataset.pool_references(cls.members[0], model) for cls in classes]
    reference = {i: r.as_float32() for i, r in enumerate(pool_refs)}
    first = dataset.responses(configs[0], "replay", model)
    replay_ids, fresh_ids = first.probe_ids, dataset.responses(configs[0], "fresh", model).probe_ids
    replay, fresh = {}, {}
    for cid in configs:
        r, f = dataset.responses(cid, "replay", model), dataset.responses(cid, "fresh", model)
        if not (np.array_equal(r.probe_ids, replay_ids) and np.array_equal(f.probe_ids, fresh_ids)):
            raise DatasetError(f"{dataset.directory}: {cid} was run on other probes than {configs[0]} ({model})")
        replay[cid], fresh[cid] = r.as_float32(), f.as_float32()
    spec = model_spec(model)
    pool_size = dataset.responses(classes[0].members[0], "reference", model).probe_ids.shape[0]
    fresh_version = first.probe_set.replace("/pool", "/fresh")
    fresh_size = max(
        dataset.manifest.probe_sets[model].get(fresh_version, int(fresh_ids.max()) + 1), int(fresh_ids.max()) + 1
    )
    # truth is the class: members of one class are indistinguishable by construction
    data = ModelData(
        model,
        classes,
        class_of,
        {c: dict(classes[class_of[c]].labels) for c in configs},
        reference,
        replay_ids,
        replay,
        fresh_ids,
        fresh,
    )
    data.pool_ids, data.pool_size = pool_refs[0].probe_ids, pool_size
    if any(not np.array_equal(r.probe_ids, data.pool_ids) for r in pool_refs):
        raise DatasetError(f"{dataset.directory}: reference runs of {model} cover different pool probes")
    runs = [
        run
        for run in (SPLITTING_RUN, SEARCHED_REPLAY_RUN)
        if configs and set(configs) <= set(dataset.complete_configs(model, (run,)))
    ]
    if SEARCHED_REPLAY_RUN in runs and not dataset.has_searched_pool(model):
        runs.remove(SEARCHED_REPLAY_RUN)  # re-runs of probes without every config's reference
    parts: dict[str, list] = {cid: [] for cid in configs}
    ids: list[np.ndarray] = []
    for run in runs:
        run_ids = dataset.responses(configs[0], run, model).probe_ids
        fresh_rows = ~np.isin(run_ids, np.concatenate(ids)) if ids else np.ones(len(run_ids), bool)
        ids.append(run_ids[fresh_rows])
        for cid in configs:
            r = dataset.responses(cid, run, model)
            if not np.array_equal(r.probe_ids, run_ids):
                raise DatasetError(f"{dataset.directory}: {cid} {run} ran other probes than {configs[0]} ({model})")
            parts[cid].append(r.as_float32()[fresh_rows])
    if runs:
        data.targeted_ids = np.concatenate(ids)
        data.targeted = {cid: np.concatenate(p) for cid, p in parts.items()}
    if oracle:
        from hspi.collector.targets.oracle import float64_outputs  # torch: only when asked

        data.pool_f64 = float64_outputs(ProbeSet(spec, "pool", pool_size), data.pool_ids)
        data.fresh_f64 = float64_outputs(ProbeSet(spec, "fresh", fresh_size), fresh_ids)
    return data


def split_replay(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices of the replayed probes for train / calibrate / test (disjoint, seeded)."""
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    a, b = int(n * TRAIN_SHARE), int(n * (TRAIN_SHARE + CALIBRATE_SHARE))
    return np.sort(order[:a]), np.sort(order[a:b]), np.sort(order[b:])


def pair_features(
    data: ModelData, tier: str, config: str, rows: np.ndarray, candidates: list[int], ref_full: dict[int, np.ndarray]
) -> np.ndarray:
    """(len(rows), C, F) features of one config's replayed answers against each candidate class."""
    view = tier_view(data.replay[config][rows], tier, data.convention(config))
    probe_ids = data.replay_ids[rows]
    return np.stack([relative_features(view, ref_full[c][data.rows(probe_ids)]) for c in candidates], axis=1)
