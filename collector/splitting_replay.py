"""Re-run, in an independent process per configuration, the pool probes that split near-twin classes.

Some equivalence classes differ on a handful of the 1,000 pool probes only (on this CPU: the bf16
ISA profiles of the MLP and the CNN). The `replay` run is a random 300-probe subset, so it holds
almost none of those probes, and the evaluation could not show whether a live audit, which picks
its probes from the whole pool, tells such twins apart. This run answers exactly those probes: the
pool probes on which two classes that agree on at least `1 - RARE_SHARE` of the pool disagree,
read from the stored references, in a seeded shuffled order (other batch compositions), in a fresh
worker with the platform's load-time caps, exactly as `hspi collect` runs it.

Each process first re-answers a few pool probes and checks them bit for bit against the stored
references (as the border collection does): another machine's answers would be filed under the
wrong classes. The worker writes into a scratch directory; only the checked answers are copied into
the dataset's content-addressed shards, and the manifest is saved after each finished
configuration, so an interrupted run resumes where it stopped and loses nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import combinations
from pathlib import Path

import numpy as np

from hspi.collector.reproduction import pool_size, run_checked
from hspi.collector.worker import RunPlan
from hspi.dataset import SPLITTING_RUN, Dataset, save_manifest
from hspi.equivalence import equivalence_classes
from hspi.errors import ConfigError

RARE_SHARE = 0.05  # classes that differ on at most this share of the pool are near twins
SEED = 23

Progress = Callable[[str, int, int], None]  # (config, done, total)


def splitting_probes(ds: Dataset, model: str, rare_share: float = RARE_SHARE) -> np.ndarray:
    """Sorted pool probe ids on which some pair of near-twin classes of `model` disagree."""
    classes = equivalence_classes(ds, model)
    words = [ds.responses(c.members[0], "reference", model).as_float32().view(np.uint32) for c in classes]
    chosen: set[int] = set()
    for a, b in combinations(range(len(words)), 2):
        differ = np.flatnonzero((words[a] != words[b]).any(axis=1))
        if 0 < len(differ) <= rare_share * len(words[a]):
            chosen.update(int(i) for i in differ)
    return np.array(sorted(chosen), dtype=np.int64)


def splitting_selection(ds: Dataset, rare_share: float = RARE_SHARE) -> dict[str, np.ndarray]:
    """Per model with near twins, its splitting probes; an error when no model has any."""
    if not 0.0 < rare_share <= 1.0:
        raise ConfigError(f"rare share {rare_share} is not in (0, 1]")
    ids = {m: splitting_probes(ds, m, rare_share) for m in ds.models}
    ids = {m: chosen for m, chosen in ids.items() if len(chosen)}
    if not ids:
        raise ConfigError(
            f"{ds.directory}: no two classes are near twins (differ on at most {rare_share:.0%} "
            "of the pool); nothing to replay"
        )
    return ids


def collect_splitting_replay(
    dataset_dir: Path, *, rare_share: float = RARE_SHARE, on_progress: Progress | None = None
) -> dict[str, list[int]]:
    """Answer every model's splitting probes on every configuration (resumable); returns the probe ids."""
    ds = Dataset(dataset_dir)
    ids = splitting_selection(ds, rare_share)
    models = sorted(ids)
    union = sorted({int(i) for m in models for i in ids[m]})
    configs = list(ds.manifest.configs)
    todo = [c for c in configs if not _done(ds, c, models, ids)]
    for number, cid in enumerate(todo):
        if on_progress:
            on_progress(cid, len(configs) - len(todo) + number, len(configs))
        record = ds.manifest.configs[cid]
        plan = RunPlan(
            name=SPLITTING_RUN, probe_set="pool", size=pool_size(ds, models), ids=union, shuffle=True, seed=SEED
        )
        run = run_checked(ds, cid, models, plan, "splitting-probe answers")
        record.runs[SPLITTING_RUN] = run
        save_manifest(ds.directory, ds.manifest)
    if on_progress:
        on_progress("done", len(configs), len(configs))
    return {m: [int(i) for i in ids[m]] for m in models}


def _done(ds: Dataset, config_id: str, models: list[str], ids: dict[str, np.ndarray]) -> bool:
    run = ds.manifest.configs[config_id].runs.get(SPLITTING_RUN)
    union = {int(i) for m in models for i in ids[m]}
    return run is not None and all(m in run.shards and run.shards[m].n_probes == len(union) for m in models)
