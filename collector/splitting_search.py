"""Search the pool stream beyond the stored pool for probes that split near-twin classes, then store
every configuration's answers to the best of them.

On this CPU no stored pool probe tells every class apart: the bf16 classes of different ISA caps
differ on a few percent of the probes each (the MLP) or on about one percent (the CNN), and rarely
on the same probe, so a one-query audit cannot separate them all.  The pool stream is unbounded
(every id regenerates its input), so a search can look further than the first `size` probes:

1. **Search.**  One fresh process per near-twin class (a representative member, with its load-time
   caps, after re-answering 16 stored pool probes bit for bit) answers `n_candidates` pool ids from
   `size` on.  Each candidate scores the number of near-twin class pairs whose answers differ on it;
   the best `keep` per model (ties to the lower id) are selected.  The candidates' answers are
   scratch: only the selection, with its scores, is kept (`searched/selection.json`).
2. **References.**  Every configuration answers the selected ids of every searched model in a fresh
   process (`reference-searched`) and, in another independent process, again in a shuffled order
   (`replay-searched`), each after the same bit-for-bit check.  The manifest is saved after each
   configuration, so an interrupted run resumes where it stopped and loses nothing.

The searched probes then join the reference pool (`Dataset.pool_references`) once every
configuration has them: audits may ask them, and equivalence classes account for them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from itertools import combinations
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from hspi.collector.reproduction import checked_answers, pool_size, run_checked
from hspi.collector.worker import RunPlan
from hspi.dataset import SEARCHED_REFERENCE_RUN, SEARCHED_REPLAY_RUN, Dataset, save_manifest
from hspi.equivalence import distinct_answers, equivalence_classes
from hspi.errors import ConfigError, DatasetError
from hspi.files import write_text_atomic

NEAR_SHARE = 0.25  # classes that differ on at most this share of the pool are near twins
N_CANDIDATES = 100_000
KEEP = 64
SEED = 29
SELECTION = Path("searched") / "selection.json"

Progress = Callable[[str, int, int], None]  # (what, done, total)


class SearchedProbe(BaseModel):
    id: int
    pairs_split: int  # near-twin class pairs whose answers differ on it
    distinct: int  # distinct answers among the near-twin classes


class ModelSearch(BaseModel):
    candidates: tuple[int, int]  # pool ids [start, stop) searched
    near_share: float
    classes: list[str]  # the near-twin classes that answered every candidate
    pairs: int  # near-twin class pairs among them
    best_stored: int  # most pairs any stored pool probe splits, for comparison
    selected: list[SearchedProbe]
    seconds: float


def pairs_split(words: np.ndarray, pairs: list[tuple[int, int]]) -> np.ndarray:
    """(n,) per probe: how many of `pairs` answer it differently, from (C, n, V) uint32 answers."""
    counts = np.zeros(words.shape[1], dtype=np.int64)
    for a, b in pairs:
        counts += (words[a] != words[b]).any(axis=1)
    return counts


def near_twins(words: np.ndarray, near_share: float) -> tuple[list[int], list[tuple[int, int]]]:
    """Classes with a near twin (differing on at most `near_share` of the probes, but not none) and
    every pair among them."""
    twins: set[int] = set()
    for a, b in combinations(range(words.shape[0]), 2):
        differ = (words[a] != words[b]).any(axis=1).mean()
        if 0.0 < differ <= near_share:
            twins.update((a, b))
    members = sorted(twins)
    return members, list(combinations(range(len(members)), 2))


def searchable_models(ds: Dataset, near_share: float) -> list[str]:
    """Models that have near twins and whose stored pool has no probe telling every class apart."""
    chosen = []
    for model in ds.models:
        classes = equivalence_classes(ds, model)
        words = np.stack([ds.responses(c.members[0], "reference", model).as_float32().view(np.uint32) for c in classes])
        if near_twins(words, near_share)[0] and distinct_answers(words).max() < len(classes):
            chosen.append(model)
    return chosen


def load_selection(directory: Path) -> dict[str, ModelSearch]:
    path = directory / SELECTION
    if not path.exists():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return {m: ModelSearch.model_validate(v) for m, v in raw.items()}
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: not a readable search selection ({type(exc).__name__})") from None


def save_selection(directory: Path, selection: dict[str, ModelSearch]) -> None:
    write_text_atomic(
        directory / SELECTION, json.dumps({m: s.model_dump() for m, s in selection.items()}, indent=1) + "\n"
    )


def search_model(
    ds: Dataset,
    model: str,
    *,
    n_candidates: int = N_CANDIDATES,
    keep: int = KEEP,
    near_share: float = NEAR_SHARE,
    on_progress: Progress | None = None,
) -> ModelSearch:
    """Stage 1 for one model: every near-twin class answers the candidates; the best `keep` are chosen."""
    started = time.perf_counter()
    classes = equivalence_classes(ds, model)
    stored = np.stack([ds.responses(c.members[0], "reference", model).as_float32().view(np.uint32) for c in classes])
    members, pairs = near_twins(stored, near_share)
    if not members:
        raise ConfigError(
            f"{ds.directory}: {model} has no near-twin classes (differing on at most {near_share:.0%} of "
            "the pool); nothing to search for"
        )
    start = pool_size(ds, [model])
    candidates = np.arange(start, start + n_candidates, dtype=np.int64)
    if candidates[-1] > np.iinfo(np.int32).max:
        raise ConfigError(f"{n_candidates} candidates from pool id {start} run past the int32 probe ids")
    answers = []
    for number, c in enumerate(members):
        cid = classes[c].members[0]
        if on_progress:
            on_progress(f"{model} search {cid}", number, len(members))
        plan = RunPlan(name="search", probe_set="pool", size=start, ids=candidates.tolist())
        _, got = checked_answers(ds, cid, [model], plan, "a splitting-probe search")
        answers.append(got[model].select(candidates).as_float32().view(np.uint32))
    words = np.stack(answers)  # (near classes, candidates, V)
    split = pairs_split(words, pairs)
    order = np.lexsort((candidates, -split))[:keep]
    order = order[split[order] > 0]
    distinct = distinct_answers(words[:, order])
    best_stored = int(pairs_split(stored[members], pairs).max())
    return ModelSearch(
        candidates=(int(start), int(start + n_candidates)),
        near_share=near_share,
        classes=[classes[c].name for c in members],
        pairs=len(pairs),
        best_stored=best_stored,
        selected=[
            SearchedProbe(id=int(candidates[i]), pairs_split=int(split[i]), distinct=int(d))
            for i, d in zip(order, distinct)
        ],
        seconds=round(time.perf_counter() - started, 1),
    )


def collect_searched_probes(
    dataset_dir: Path,
    *,
    models: list[str] | None = None,
    n_candidates: int = N_CANDIDATES,
    keep: int = KEEP,
    near_share: float = NEAR_SHARE,
    on_progress: Progress | None = None,
) -> dict[str, ModelSearch]:
    """Search (or reuse a stored search), then answer the selection on every configuration; resumable."""
    if n_candidates < 1 or keep < 1:
        raise ConfigError(f"candidates ({n_candidates}) and probes kept ({keep}) must be at least 1")
    if not 0.0 < near_share <= 1.0:
        raise ConfigError(f"near share {near_share} is not in (0, 1]")
    ds = Dataset(dataset_dir)
    unknown = sorted(set(models or []) - set(ds.models))
    if unknown:
        raise ConfigError(f"{', '.join(unknown)} not in {dataset_dir}; it has: {', '.join(ds.models)}")
    models = sorted(models or searchable_models(ds, near_share))
    if not models:
        raise ConfigError(
            f"{dataset_dir}: every model has a stored probe that splits all its classes, or no near "
            "twins; nothing to search for"
        )
    selection = load_selection(ds.directory)
    for model in models:
        previous = selection.get(model)
        wanted = (pool_size(ds, [model]), pool_size(ds, [model]) + n_candidates)
        if (
            previous is None
            or previous.candidates != wanted
            or previous.near_share != near_share
            or len(previous.selected) > keep
        ):
            selection[model] = search_model(
                ds, model, n_candidates=n_candidates, keep=keep, near_share=near_share, on_progress=on_progress
            )
            save_selection(ds.directory, selection)
    union = sorted({p.id for m in models for p in selection[m].selected})
    if not union:
        raise ConfigError(f"no candidate split any near-twin pair of {', '.join(models)}; search more candidates")
    configs = [c for c in ds.manifest.configs if all(c in ds.complete_configs(m, ("reference",)) for m in models)]
    todo = [c for c in configs if not _done(ds, c, models, union)]
    for number, cid in enumerate(todo):
        if on_progress:
            on_progress(f"searched probes {cid}", len(configs) - len(todo) + number, len(configs))
        record = ds.manifest.configs[cid]
        for run, shuffle in ((SEARCHED_REFERENCE_RUN, False), (SEARCHED_REPLAY_RUN, True)):
            # two processes: the replay is independent of the reference it is compared with
            plan = RunPlan(
                name=run, probe_set="pool", size=pool_size(ds, models), ids=union, shuffle=shuffle, seed=SEED
            )
            record.runs[run] = run_checked(ds, cid, models, plan, "searched pool probes")
        save_manifest(ds.directory, ds.manifest)
    if on_progress:
        on_progress("done", len(configs), len(configs))
    return {m: selection[m] for m in models}


def _done(ds: Dataset, config_id: str, models: list[str], union: list[int]) -> bool:
    runs = ds.manifest.configs[config_id].runs
    return all(
        run in runs and all(m in runs[run].shards and runs[run].shards[m].n_probes == len(union) for m in models)
        for run in (SEARCHED_REFERENCE_RUN, SEARCHED_REPLAY_RUN)
    )
