"""Collect a grid on a Ray cluster: one task per (configuration, machine kind), shards in a shared store.

The driver (this module) owns every manifest.  It submits one task per configuration not yet done
for each machine kind in the cluster, then, as each finishes, reads the task's shards back from the
store (hash-checked) and only then names them in that kind's manifest, which is rewritten after
every configuration: an interrupted or failed job resumes where it stopped, and a shard that is
missing, torn or corrupt never enters a manifest.  A failed task is reported by configuration and
kind with its cause; the others carry on.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hspi.collector.collect import check_sizes, config_done, plan_probe_sets, process_plans
from hspi.collector.fleet_kinds import MachineKind, kinds_in_cluster, select_kinds
from hspi.collector.fleet_local import LOOPBACK_SWITCH, is_loopback
from hspi.collector.fleet_store import ShardStore, StoreError
from hspi.collector.fleet_task import run_configuration
from hspi.collector.grid import grid_platforms
from hspi.collector.models import resolve_models
from hspi.collector.targets.local import check_supported
from hspi.dataset import ConfigRecord, Manifest, RunRecord
from hspi.errors import CollectionError, ConfigError, DatasetError, HspiError
from hspi.platform import Platform, platform_labels

RUNS = ("reference", "replay", "fresh")


@dataclass
class FleetReport:
    store: str
    nodes: int
    kinds: list[str]
    configurations: int  # (configuration, kind) pairs in the plan
    done_before: int  # already in the store's manifests: not run again
    ran: int
    seconds: float
    failures: list[str] = field(default_factory=list)


def fleet_collect(
    grid: str,
    models: str,
    store_url: str,
    *,
    address: str = "auto",
    kinds: list[str] | None = None,
    pool: int,
    fresh: int,
    replay: int,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> FleetReport:
    """Collect `grid` x `models` on every machine kind of the Ray cluster at `address` into `store_url`."""
    started = time.perf_counter()
    platforms = list(dict.fromkeys(grid_platforms(grid)))
    names = resolve_models(models)
    for platform in platforms:
        for name in names:
            check_supported(platform, name)
    check_sizes(pool, fresh, replay)
    devices = sorted({p.device for p in platforms})
    store = ShardStore(store_url)
    store.check_writable()
    probe_sets = plan_probe_sets(names, pool, fresh)
    plans = {
        process: [plan.model_dump(mode="json") for plan in runs]
        for process, runs in process_plans(pool, fresh, replay).items()
    }
    check_reachable(address)
    ray = _connect(address)
    try:
        alive = [n for n in ray.nodes() if n.get("Alive")]
        available = kinds_in_cluster([dict(n.get("Resources", {})) for n in alive])
        chosen = [k for device in devices for k in select_kinds(available, device, kinds)]
        manifests = {k.name: _open_manifest(store, k.name, grid, probe_sets) for k in chosen}
        tasks = [(k, p) for k in chosen for p in platforms if p.device == k.device]
        todo = [(k, p) for k, p in tasks if not config_done(manifests[k.name], p.id, names)]
        status = _Status(store, tasks, manifests, names)
        remote = ray.remote(run_configuration)
        pending: dict[Any, tuple[MachineKind, Platform]] = {}
        for kind, platform in todo:
            ref = remote.options(**kind.task_options(platform), max_retries=0).remote(
                platform.model_dump_json(), names, plans, store.task_url, kind.name, kind.resources
            )
            pending[ref] = (kind, platform)
            status.set(kind, platform, "pending")
        status.save()
        failures: list[str] = []
        finished = len(tasks) - len(todo)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            kind, platform = pending.pop(ready[0])
            if on_progress:
                on_progress(f"{platform.id} on {kind.name}", finished, len(tasks))
            finished += 1
            try:
                result = ray.get(ready[0])
            except Exception as exc:  # Ray wraps what the task raised, or says the worker or node died
                reason = describe_failure(exc, platform.id)
                failures.append(f"{platform.id} on {kind.name}: {reason}")
                status.set(kind, platform, "failed", reason=reason)
                status.save()
                continue
            try:
                record = merge_result(store, kind.name, manifests[kind.name], platform, names, result)
            except StoreError:
                for ref in pending:
                    ray.cancel(ref)
                raise
            except HspiError as exc:
                failures.append(f"{platform.id} on {kind.name}: {exc}")
                status.set(kind, platform, "failed", reason=str(exc))
                status.save()
                continue
            status.set(kind, platform, "done", node=str(result.get("node", "")), seconds=_seconds(record))
            status.save()
        if on_progress:
            on_progress("done", len(tasks), len(tasks))
        status.finish()
    finally:
        ray.shutdown()
    report = FleetReport(
        store=store_url,
        nodes=len(alive),
        kinds=[k.name for k in chosen],
        configurations=len(tasks),
        done_before=len(tasks) - len(todo),
        ran=len(todo) - len(failures),
        seconds=round(time.perf_counter() - started, 2),
        failures=failures,
    )
    if failures:
        raise CollectionError(
            f"{len(failures)} of {len(todo)} configurations failed (the store keeps the "
            f"{len(tasks) - len(failures)} done; rerun to resume): " + "; ".join(failures)
        )
    return report


def merge_result(
    store: ShardStore, kind: str, manifest: Manifest, platform: Platform, models: list[str], result: dict[str, Any]
) -> ConfigRecord:
    """Name a finished task's shards in `kind`'s manifest, once every one of them is whole in the store."""
    where = f"{platform.id} on {kind}"
    if config_done(manifest, platform.id, models):  # a result that arrives twice is not merged twice
        raise CollectionError(f"{where}: a second result arrived for a configuration already merged; kept the first")
    try:
        runs = {name: RunRecord.model_validate(value) for name, value in dict(result["runs"]).items()}
    except (KeyError, TypeError, ValueError) as exc:
        raise CollectionError(f"{where}: the task returned no readable result: {str(exc).splitlines()[0]}") from None
    for run in RUNS:
        missing = [m for m in models if run not in runs or m not in runs[run].shards]
        if missing:
            raise CollectionError(f"{where}: the task returned no {run} outputs of {', '.join(missing)}")
    for run, run_record in runs.items():
        for model, ref in run_record.shards.items():
            if ref.probe_set not in manifest.probe_sets.get(model, {}):
                raise DatasetError(f"{where}: {run} of {model} used probe set {ref.probe_set!r}, not this collection's")
            try:
                store.verify_shard(kind, ref, model)
            except DatasetError as exc:
                raise DatasetError(f"{where}: not merged: {exc}") from None
    record = ConfigRecord(platform=platform, labels={}, runs=runs, source=manifest.name)
    record.labels = platform_labels(platform, runs["reference"].provenance)
    manifest.configs[platform.id] = record
    try:
        store.save_manifest(kind, manifest)
    except StoreError as exc:
        del manifest.configs[platform.id]
        raise StoreError(f"{where}: its manifest entry could not be saved: {exc}") from None
    return record


def describe_failure(exc: BaseException, config_id: str) -> str:
    """One line saying why a task failed: what the task raised, or what happened to its worker or node."""
    from ray import exceptions as rx

    cause = getattr(exc, "cause", None)
    if isinstance(cause, HspiError):
        text = str(cause)
    elif isinstance(exc, rx.NodeDiedError):
        text = "the node running it left the cluster"
    elif isinstance(exc, rx.WorkerCrashedError):
        text = "the Ray worker running it died (killed, or out of memory)"
    elif isinstance(exc, rx.TaskCancelledError):
        text = "the task was cancelled"
    elif cause is not None:
        text = f"{type(cause).__name__}: {(str(cause).strip().splitlines() or [''])[0]}"
    else:
        text = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"
    return text.removeprefix(f"{config_id}: ")


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast, in one line, where no Ray cluster listens: ray.init retries an absent one for minutes."""
    resolved = address
    if address == "auto":
        resolved = os.environ.get("RAY_ADDRESS", "")
        recorded = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"  # where `ray start` writes it
        if not resolved and recorded.exists():
            resolved = recorded.read_text(encoding="utf-8").strip()
        if not resolved:
            raise CollectionError("no Ray cluster to join: start one with `ray start --head`, or name it with --ray")
    host, _, port = resolved.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"bad Ray address {resolved!r}: expected HOST:PORT or 'auto'")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise CollectionError(f"no Ray cluster at {resolved}: {exc.strerror or type(exc).__name__}") from None


def _connect(address: str) -> Any:
    if is_loopback(address):
        # Ray rewrites a loopback address into this machine's outward IP, where a cluster started on
        # 127.0.0.1 does not listen; this switch (read when ray is imported) keeps it on loopback
        os.environ.setdefault(LOOPBACK_SWITCH, "0")
    import ray

    try:
        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise CollectionError(f"no Ray cluster at {address!r}: {(str(exc).strip().splitlines() or [''])[0]}") from None
    return ray


def _open_manifest(store: ShardStore, kind: str, grid: str, probe_sets: dict[str, dict[str, int]]) -> Manifest:
    manifest = store.load_manifest(kind)
    if manifest is None:
        manifest = Manifest(
            name=kind, grid=grid, probe_sets=probe_sets, created=datetime.now(UTC).isoformat(timespec="seconds")
        )
        store.save_manifest(kind, manifest)
    elif manifest.probe_sets != probe_sets:
        raise DatasetError(
            f"{store.url} {kind} was collected with other probe sets ({manifest.probe_sets}); "
            "use another store, or merge afterwards"
        )
    return manifest


def _seconds(record: ConfigRecord) -> float:
    return round(sum(r.seconds for name, r in record.runs.items() if name in ("reference", "replay")), 2)


class _Status:
    """`fleet-status.json`: every (configuration, kind) of the job as done, pending or failed (with why)."""

    def __init__(
        self,
        store: ShardStore,
        tasks: list[tuple[MachineKind, Platform]],
        manifests: dict[str, Manifest],
        models: list[str],
    ) -> None:
        self.store = store
        self.jobs: dict[str, dict[str, Any]] = {}
        self.state: dict[str, Any] = {"started": _now(), "driver": "running"}
        for kind, platform in tasks:
            done = config_done(manifests[kind.name], platform.id, models)
            self.set(kind, platform, "done" if done else "pending")

    def set(self, kind: MachineKind, platform: Platform, state: str, **extra: Any) -> None:
        self.jobs[f"{kind.name} {platform.id}"] = {"kind": kind.name, "config": platform.id, "state": state, **extra}

    def save(self) -> None:
        self.store.save_status({**self.state, "updated": _now(), "jobs": self.jobs})

    def finish(self) -> None:
        self.state["driver"] = "finished"
        self.save()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
