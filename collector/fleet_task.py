"""One fleet task: a configuration run on one node, its shards uploaded to the shared store.

It runs inside a Ray worker on the node Ray placed it on, and does what `hspi collect` does for one
configuration: the existing worker in fresh interpreters (`collector.local_run`), one per process
plan, with the platform's load-time environment.  The shards are written to a local scratch
directory, hash-checked, then put in the store; the manifest is never touched here (the driver
merges what the tasks report).
"""

from __future__ import annotations

import socket
import tempfile
from pathlib import Path
from typing import Any

from hspi.collector.fleet_kinds import ACCELERATOR, node_resources
from hspi.collector.fleet_store import ShardStore
from hspi.collector.local_run import run_worker
from hspi.collector.worker import RunPlan, WorkerJob
from hspi.dataset import RunRecord
from hspi.errors import CollectionError, HspiError
from hspi.platform import Platform


def run_configuration(
    platform_json: str,
    models: list[str],
    plans: dict[str, list[dict[str, Any]]],
    store_url: str,
    kind: str,
    kind_resources: dict[str, float],
) -> dict[str, Any]:
    """Run one configuration here; return its run records (JSON) and where it ran."""
    platform = Platform.model_validate_json(platform_json)
    where = f"{platform.id} on {kind} ({socket.gethostname()})"
    measured = node_resources()
    wrong = [r for r in kind_resources if not r.startswith(ACCELERATOR) and r not in measured]
    if wrong:  # the node advertised labels its CPU does not have: its outputs would be filed under another kind
        raise CollectionError(f"{where}: this node is not of kind {kind} (measured here: {', '.join(measured)})")
    store = ShardStore(store_url)
    runs: dict[str, RunRecord] = {}
    with tempfile.TemporaryDirectory(prefix="hspi-fleet-") as tmp:
        work = Path(tmp)
        for process_runs in plans.values():
            job = WorkerJob(
                platform=platform,
                models=models,
                runs=[RunPlan.model_validate(p) for p in process_runs],
                dataset_dir=str(work),
                export_dir=str(work / "exports"),
            )
            runs.update(run_worker(job, work).runs)
        uploaded = 0
        for record in runs.values():
            for model, ref in record.shards.items():
                data = (work / "shards" / f"{ref.shard}.parquet").read_bytes()
                try:
                    uploaded += store.put_shard(kind, ref, data, model)
                except HspiError as exc:
                    raise CollectionError(f"{where}: {exc}") from None
    return {
        "runs": {name: record.model_dump(mode="json") for name, record in runs.items()},
        "node": socket.gethostname(),
        "uploaded": uploaded,
    }
