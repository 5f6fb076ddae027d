"""Run a named grid: one fresh subprocess per configuration and run, resumable, nothing lost.

For every configuration two processes run: `reference` (the whole reference pool, in order) and
`replay` (an independent process: a shuffled subset of the pool, hence other batch compositions,
plus the fresh probes).  The manifest is rewritten after each finished configuration; a rerun skips
what is recorded as done.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import UTC, datetime
from pathlib import Path

from hspi.collector.grid import grid_platforms
from hspi.collector.local_run import run_worker
from hspi.collector.models import model_spec, resolve_models
from hspi.collector.probes import ProbeSet
from hspi.collector.targets.local import check_supported
from hspi.collector.worker import RunPlan, WorkerJob
from hspi.dataset import ConfigRecord, Manifest, load_manifest, save_manifest
from hspi.errors import CollectionError, ConfigError, DatasetError
from hspi.platform import Platform, platform_labels

POOL_SIZE = 1000  # reference pool per model (the floor)
FRESH_SIZE = 400  # fresh probes per model: never stored as references, held out for evaluation
REPLAY_SIZE = 300  # pool probes re-run in an independent process: the targets of reference-match tests
REPLAY_SEED = 7


def check_sizes(pool: int, fresh: int, replay: int) -> None:
    """Refuse probe counts a collection cannot run, before any model is loaded."""
    for name, size in (("pool", pool), ("fresh", fresh), ("replay", replay)):
        # every configuration's record holds the three runs that training and evaluation read
        if size < 1:
            raise ConfigError(f"--{name} {size}: a collection needs at least 1 {name} probe")
    if replay > pool:
        raise ConfigError(f"replay subset {replay} is larger than the pool {pool}")


def process_plans(pool: int, fresh: int, replay: int) -> dict[str, list[RunPlan]]:
    return {
        "reference": [RunPlan(name="reference", probe_set="pool", size=pool)],
        "replay": [
            RunPlan(name="replay", probe_set="pool", size=pool, subset=replay, shuffle=True, seed=REPLAY_SEED),
            RunPlan(name="fresh", probe_set="fresh", size=fresh, shuffle=True, seed=REPLAY_SEED + 1),
        ],
    }


def plan_probe_sets(names: list[str], pool: int, fresh: int) -> dict[str, dict[str, int]]:
    """The manifest's probe sets of a collection: per model, {probe-set version: size}."""
    return {
        name: {
            ProbeSet(model_spec(name), "pool", pool).version: pool,
            ProbeSet(model_spec(name), "fresh", fresh).version: fresh,
        }
        for name in names
    }


def collect(
    grid: str,
    models: str,
    out: Path,
    *,
    pool: int = POOL_SIZE,
    fresh: int = FRESH_SIZE,
    replay: int = REPLAY_SIZE,
    parallel: int = 1,
    keep_going: bool = False,
    stop_after_s: float | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> Manifest:
    """Collect `grid` × `models` into `out`; resume whatever a previous run of the same plan finished.

    `parallel` configurations run at once; `keep_going` runs the others after one fails (the error,
    naming every failed one, comes at the end); no configuration starts after `stop_after_s`."""
    platforms = grid_platforms(grid)
    names = resolve_models(models)
    if any(p.device == "cuda" for p in platforms):
        require_cuda(grid)
    skipped = unsupported_platforms(platforms, names)
    platforms = [p for p in platforms if p.id not in skipped]
    check_sizes(pool, fresh, replay)
    probe_sets = plan_probe_sets(names, pool, fresh)
    if (out / "dataset.json").exists():
        manifest = load_manifest(out)
        if manifest.probe_sets != probe_sets:
            raise DatasetError(
                f"{out} was collected with other probe sets ({manifest.probe_sets}); "
                "collect into a new directory, or merge afterwards"
            )
    else:
        manifest = Manifest(
            name=out.name, grid=grid, probe_sets=probe_sets, created=datetime.now(UTC).isoformat(timespec="seconds")
        )
        save_manifest(out, manifest)
    new_notes = [f"skipped {pid}: {why}" for pid, why in skipped.items()]
    if any(note not in manifest.notes for note in new_notes):
        manifest.notes += [note for note in new_notes if note not in manifest.notes]
        save_manifest(out, manifest)
    plans = process_plans(pool, fresh, replay)
    todo = [p for p in platforms if not config_done(manifest, p.id, names)]
    done_before = len(platforms) - len(todo)
    stop_at = None if stop_after_s is None else time.monotonic() + stop_after_s

    def run_configuration(platform: Platform) -> ConfigRecord | None:
        if stop_at is not None and time.monotonic() > stop_at:
            return None  # past the time budget: left for a rerun to resume
        record = ConfigRecord(platform=platform, labels={}, source=manifest.name)
        with tempfile.TemporaryDirectory(prefix="hspi-worker-") as tmp:
            for _process, runs in plans.items():
                job = WorkerJob(
                    platform=platform, models=names, runs=runs, dataset_dir=str(out), export_dir=str(out / "exports")
                )
                result = run_worker(job, Path(tmp))
                record.runs.update(result.runs)
        record.labels = platform_labels(platform, record.runs["reference"].provenance)
        return record

    failures: list[CollectionError] = []
    finished = 0
    # configurations run side by side in threads, each in its own fresh processes; this thread
    # alone writes the manifest, after each one finishes
    with ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="hspi-collect") as pool_of_runs:
        futures = {pool_of_runs.submit(run_configuration, p): p for p in todo}
        if on_progress and todo:
            on_progress(todo[0].id, done_before, len(platforms))
        for future in as_completed(futures):
            platform = futures[future]
            if future.cancelled():  # not started after an earlier failure: a rerun resumes it
                continue
            finished += 1
            try:
                record = future.result()
            except CollectionError as exc:
                failures.append(exc)
                if not keep_going:  # stop at the first failure: nothing new starts, what runs finishes
                    for other in futures:
                        other.cancel()
                continue
            if record is not None:
                manifest.configs[platform.id] = record
                save_manifest(out, manifest)
            if on_progress:
                on_progress(platform.id, done_before + finished, len(platforms))
    if failures:
        if len(failures) == 1:
            raise failures[0]
        raise CollectionError(f"{len(failures)} configurations failed: " + "; ".join(str(f) for f in failures))
    if on_progress:
        on_progress("done", len(platforms), len(platforms))
    return manifest


def unsupported_platforms(platforms: list[Platform], models: list[str]) -> dict[str, str]:
    """Platform id -> why a registered model cannot run it (the grid runs the rest).  A built-in model that
    cannot run a platform of its grid is a mistake in the grid, and refused."""
    skipped: dict[str, str] = {}
    for platform in platforms:
        for name in models:
            try:
                check_supported(platform, name)
            except ConfigError as exc:
                if model_spec(name).source != "registered":
                    raise
                skipped[platform.id] = str(exc).removeprefix(f"{platform.id}: ")
    if len(skipped) == len(platforms):
        raise ConfigError(f"no platform of this grid runs {', '.join(models)}: " + next(iter(skipped.values())))
    return skipped


def require_cuda(grid: str) -> None:
    """Refuse a CUDA grid where this process sees no CUDA device (its workers would not either)."""
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(
            f"grid {grid} runs on CUDA; torch {torch.__version__} sees no CUDA device here "
            "(collect it on a GPU machine, e.g. benchmarks/gpu/, or with `hspi fleet collect`)"
        )


def config_done(manifest: Manifest, config_id: str, models: list[str]) -> bool:
    """Whether every run of `config_id` holds outputs of every model (a rerun skips it)."""
    record = manifest.configs.get(config_id)
    return record is not None and all(
        run in record.runs and all(m in record.runs[run].shards for m in models)
        for run in ("reference", "replay", "fresh")
    )
