"""Answer a dataset's border prompts on every one of its configurations, twice, resumably.

Per configuration, two fresh worker processes (the platform's load-time caps in their
environment, exactly as `hspi collect` runs them):

- `border`: the border prompts of every model, in id order;
- `border-replay`: an independent process, the same prompts in a seeded shuffled order (other
  batch compositions): how stable each platform's greedy answer is.

Each process first re-answers a few pool probes and compares them bit for bit with the dataset's
stored reference outputs: border answers from a machine that does not reproduce the dataset would
be joined to the wrong classes, so such a run stops with a `CollectionError`.  Only the text tier
is kept (greedy id, runner-up id, top-2 margin) in `hspi.collector.border_store` shards; the index is
rewritten after each finished configuration and a rerun skips what it records.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from hspi.collector.border_store import (
    INDEX_FILE,
    RUNS,
    BorderConfig,
    BorderIndex,
    BorderRun,
    SelectionFile,
    border_dir,
    load_index,
    load_selection,
    read_answers,
    save_index,
    selection_sha256,
    write_answers,
)
from hspi.collector.local_run import run_worker
from hspi.collector.probes import BORDER_STREAM_SIZE
from hspi.collector.reproduction import CHECK_RUN, check_plan, check_reproduces
from hspi.collector.worker import RunPlan, WorkerJob
from hspi.dataset import Dataset, read_shard
from hspi.errors import ConfigError, DatasetError
from hspi.features.border import TextAnswers

REPLAY_SEED = 17  # the shuffled order of the independent run

Progress = Callable[[str, int, int], None]  # (config, done, total)


def collect_border(
    dataset_dir: Path, *, configs: list[str] | None = None, restart: bool = False, on_progress: Progress | None = None
) -> BorderIndex:
    """Collect (or resume) the border answers of `dataset_dir`'s configurations (default: all)."""
    ds = Dataset(dataset_dir)
    directory = border_dir(ds.directory)
    selection = load_selection(directory)
    missing = [m for m in selection.models if m not in ds.models]
    if missing:
        raise DatasetError(f"{directory}: border prompts for {', '.join(missing)}, which {ds.directory} does not hold")
    models = sorted(selection.models)
    chosen = list(ds.manifest.configs) if configs is None else configs
    unknown = [c for c in chosen if c not in ds.manifest.configs]
    if unknown:
        raise ConfigError(f"configuration(s) not in {ds.directory}: {', '.join(unknown)}")
    index = _open_index(ds, directory, selection, restart)
    todo = [c for c in chosen if _missing(index, c, models)]
    done_before = len(chosen) - len(todo)
    for number, cid in enumerate(todo):
        if on_progress:
            on_progress(cid, done_before + number, len(chosen))
        platform = ds.manifest.configs[cid].platform
        record = index.configs.get(cid) or BorderConfig(platform=platform)
        needed = _missing(index, cid, models)  # models added to the selection since the last run
        union = sorted({i for m in needed for i in selection.models[m].ids})
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="hspi-border-") as tmp:
            for run in RUNS:
                shuffled = run == "border-replay"
                plans = [
                    check_plan(ds, needed),
                    RunPlan(
                        name=run,
                        probe_set="border",
                        size=BORDER_STREAM_SIZE,
                        ids=union,
                        shuffle=shuffled,
                        seed=REPLAY_SEED if shuffled else 0,
                    ),
                ]
                workdir = Path(tmp) / run
                workdir.mkdir()
                job = WorkerJob(
                    platform=platform,
                    models=needed,
                    runs=plans,
                    dataset_dir=str(workdir),
                    export_dir=str(ds.directory / "exports"),
                )
                result = run_worker(job, workdir)
                for model in needed:
                    check_reproduces(
                        ds,
                        cid,
                        model,
                        read_shard(workdir, result.runs[CHECK_RUN].shards[model], model),
                        "border answers",
                    )
                before = record.runs.get(run)
                shards = dict(before.shards) if before is not None else {}
                for model in needed:
                    outputs = read_shard(workdir, result.runs[run].shards[model], model)
                    answers = TextAnswers.from_outputs(outputs.probe_set, outputs.probe_ids, outputs.as_float32())
                    shards[model] = write_answers(
                        directory, model, answers.select(np.sort(selection.models[model].ids))
                    )
                record.runs[run] = BorderRun(
                    shards=shards,
                    order="shuffled" if shuffled else "sorted",
                    seed=REPLAY_SEED if shuffled else 0,
                    seconds=round(result.runs[run].seconds + (before.seconds if before else 0.0), 2),
                    provenance=compact_provenance(result.runs[run].provenance),
                )
        record.wall_seconds = round(record.wall_seconds + time.perf_counter() - started, 1)
        index.configs[cid] = record
        save_index(directory, index)
    if on_progress:
        on_progress("done", len(chosen), len(chosen))
    _prune(directory, index)
    return index


def _open_index(ds: Dataset, directory: Path, selection: SelectionFile, restart: bool) -> BorderIndex:
    """The index to extend: models new to the selection are added; a model whose selection changed
    since its answers were collected stops the run (or, with `restart`, loses those answers)."""
    if (directory / INDEX_FILE).exists():
        index = load_index(directory)
    else:
        index = BorderIndex(dataset=ds.manifest.name, created=datetime.now(UTC).isoformat(timespec="seconds"))
    if index.dataset != ds.manifest.name:
        raise DatasetError(f"{directory / INDEX_FILE} belongs to dataset {index.dataset!r}, not {ds.manifest.name!r}")
    for model, chosen in sorted(selection.models.items()):
        sha = selection_sha256(chosen)
        if index.selections.get(model, sha) != sha:
            if not restart:
                raise DatasetError(
                    f"{directory / INDEX_FILE} holds {model} answers to another selection; "
                    "collect with --restart to answer the new one"
                )
            for record in index.configs.values():
                for run in record.runs.values():
                    run.shards.pop(model, None)
        index.selections[model], index.probe_sets[model] = sha, chosen.probe_set
    save_index(directory, index)
    return index


def _missing(index: BorderIndex, config_id: str, models: list[str]) -> list[str]:
    """The models whose two runs this configuration has not recorded yet."""
    record = index.configs.get(config_id)
    return [
        m for m in models if record is None or not all(r in record.runs and m in record.runs[r].shards for r in RUNS)
    ]


def compact_provenance(provenance: dict[str, Any]) -> dict[str, Any]:
    """What identifies the process's kernels, without the verbose dumps the dataset already keeps."""
    keys = (
        "cpu_model",
        "cpu_vendor",
        "cpu_flags",
        "onednn_isa",
        "aten_capability",
        "quantized_engine",
        "float32_matmul_precision",
        "requested_env",
        "torch_threads",
    )
    out = {k: provenance[k] for k in keys if k in provenance}
    # inherited by the worker; PASSIVE keeps OpenMP from spinning on a shared machine (same numbers:
    # every process is checked bit for bit against the stored pool outputs)
    out["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY", "")
    versions = provenance.get("versions") or {}
    out["versions"] = {k: versions.get(k) for k in ("torch", "numpy", "onnxruntime")}
    return out


def _prune(directory: Path, index: BorderIndex) -> None:
    """Remove shards no configuration refers to (left by a --restart): the repository stays lean."""
    used = {ref.sha256 for rec in index.configs.values() for run in rec.runs.values() for ref in run.shards.values()}
    for path in (directory / "shards").glob("*.parquet"):
        if path.stem not in used:
            path.unlink()


def verify_border(dataset_dir: Path) -> int:
    """Read every border shard once (hash-checked); the number read."""
    directory = border_dir(dataset_dir)
    index = load_index(directory)
    n = 0
    for record in index.configs.values():
        for run in record.runs.values():
            for ref in run.shards.values():
                read_answers(directory, ref)
                n += 1
    return n
