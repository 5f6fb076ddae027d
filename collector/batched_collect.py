"""`hspi dataset collect-batched`: references under dynamic batching, one fresh process per configuration.

A probe answered by a batching server comes back as the platform computes it inside a batch of
whatever size formed, so the reference of a platform is a *set* of answers per probe.  For every
configuration of a model that a dynamic batcher can serve (torch or ONNX Runtime, batch size 1: a
batcher decides the size, so the `bs=8` configurations are the same server), this run answers a
subset of the pool once per batch size (`collector.batch_compositions`); for a llama.cpp platform with
slots (llama.cpp's `llama-server`), once per batch composition its continuous batching forms
(`collector.llama_cpp_compositions`); each in a fresh worker with the platform's load-time caps,
after the bit-for-bit check that this machine reproduces the stored
references (`collector.reproduction`).  The subset is the pool probes that split the model's classes
best at the top-20 tier, leaving out the `replay` probes the matcher learned from.  The manifest is
saved after each configuration: an interrupted run resumes and loses nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from hspi.collector.llama_cpp_compositions import sequences, usable_compositions
from hspi.collector.reproduction import pool_size, run_checked
from hspi.collector.worker import RunPlan
from hspi.dataset import BATCHED_RUN, Dataset, save_manifest
from hspi.equivalence import equivalence_classes
from hspi.errors import ConfigError
from hspi.features.tiers import tier_view

BATCH_SIZES = (1, 2, 3, 4, 5, 6, 7, 8)  # `hspi target serve --dynamic-batching`'s default largest batch is 8
PROBES = 200

Progress = Callable[[str, int, int], None]  # (config, done, total)


def batchable_configs(ds: Dataset, model: str) -> list[str]:
    """Configurations of `model` a batching server can serve: torch or ONNX Runtime at batch size 1 (under a
    dynamic batcher), and llama.cpp platforms with slots (llama-server's continuous batching)."""
    out = []
    for cid in ds.complete_configs(model, ("reference",)):
        platform = ds.manifest.configs[cid].platform
        if (
            platform.engine == "llama.cpp"
            and platform.slots
            or platform.engine != "llama.cpp"
            and platform.batch_size == 1
        ):
            out.append(cid)
    return out


def batched_plan(ds: Dataset, config_id: str, model: str, ids: list[int], sizes: tuple[int, ...]) -> RunPlan:
    """The batched run of one configuration: batches of each size, or a llama-server platform's compositions."""
    platform = ds.manifest.configs[config_id].platform
    plan = RunPlan(name=BATCHED_RUN, probe_set="pool", size=pool_size(ds, [model]), ids=ids, batch_sizes=list(sizes))
    if platform.slots:
        compositions = usable_compositions(platform.slots)
        plan.compositions = compositions
        plan.batch_sizes = [sequences(c) for c in compositions]
    return plan


def batched_selection(ds: Dataset, model: str, n: int = PROBES) -> np.ndarray:
    """The `n` pool probes whose top-20 answers split the model's classes into the most groups (ties by
    id), outside the replay run; sorted."""
    classes = equivalence_classes(ds, model)
    references = [ds.pool_references(c.members[0], model) for c in classes]
    pool_ids = references[0].probe_ids
    views = [tier_view(r.as_float32(), "topk20", c.convention) for r, c in zip(references, classes)]
    # per probe: how many distinct top-20 answers (ids and value bits) the classes give
    shown = [np.concatenate([v.ids.astype(np.int64), v.values.view(np.int32).astype(np.int64)], axis=1) for v in views]
    groups = np.array([len({s[j].tobytes() for s in shown}) for j in range(len(pool_ids))])
    replayed: set[int] = set()
    for cid in ds.complete_configs(model, ("replay",)):
        replayed.update(int(p) for p in ds.responses(cid, "replay", model).probe_ids)
    free = np.array([j for j, p in enumerate(pool_ids) if int(p) not in replayed], dtype=np.int64)
    if len(free) < n:
        raise ConfigError(f"{ds.directory}: {model} has {len(free)} pool probes outside the replay run, fewer than {n}")
    best = free[np.lexsort((pool_ids[free], -groups[free]))[:n]]
    return np.sort(pool_ids[best]).astype(np.int64)


def collect_batched(
    dataset_dir: Path,
    model: str,
    *,
    probes: int = PROBES,
    sizes: tuple[int, ...] = BATCH_SIZES,
    on_progress: Progress | None = None,
) -> list[str]:
    """Answer `probes` pool probes in batches of every size on every batchable configuration of `model`
    (resumable); returns the configurations done."""
    ds = Dataset(dataset_dir)
    configs = check_batched_request(ds, model, sizes)
    ids = [int(i) for i in batched_selection(ds, model, probes)]
    plans = {c: batched_plan(ds, c, model, ids, sizes) for c in configs}
    todo = [c for c in configs if not batched_done(ds, c, model, plans[c])]
    for number, cid in enumerate(todo):
        if on_progress:
            on_progress(cid, len(configs) - len(todo) + number, len(configs))
        record = ds.manifest.configs[cid]
        run = run_checked(ds, cid, [model], plans[cid], "answers in batches")
        previous = record.runs.get(BATCHED_RUN)
        if previous is not None and (previous.batch_sizes, previous.compositions) == (
            run.batch_sizes,
            run.compositions,
        ):  # other models' batched answers stay
            run.shards = {**previous.shards, **run.shards}
            run.answer_sizes = {**previous.answer_sizes, **run.answer_sizes}
            run.batch_mates = {**previous.batch_mates, **run.batch_mates}
        record.runs[BATCHED_RUN] = run
        save_manifest(ds.directory, ds.manifest)
    if on_progress:
        on_progress("done", len(configs), len(configs))
    return configs


def check_batched_request(ds: Dataset, model: str, sizes: tuple[int, ...]) -> list[str]:
    """The configurations to answer in batches; a clear error for a model or sizes the dataset cannot take."""
    if model not in ds.models:
        raise ConfigError(f"model {model!r} is not in {ds.directory}; it has: {', '.join(ds.models)}")
    if not sizes or min(sizes) < 1:
        raise ConfigError(f"batch sizes must be positive: {sizes}")
    configs = batchable_configs(ds, model)
    if not configs:
        raise ConfigError(
            f"{ds.directory}: no configuration of {model} runs under a batching server "
            "(torch or ONNX Runtime at batch size 1, or llama.cpp with slots)"
        )
    return configs


def batched_done(ds: Dataset, config_id: str, model: str, plan: RunPlan) -> bool:
    run = ds.manifest.configs[config_id].runs.get(BATCHED_RUN)
    if run is None or model not in run.shards or run.batch_sizes != plan.batch_sizes:
        return False
    if run.compositions != (plan.compositions or []) or not plan.compositions and model not in run.batch_mates:
        return False
    return sorted(set(int(p) for p in ds.responses(config_id, BATCHED_RUN, model).probe_ids)) == plan.ids
