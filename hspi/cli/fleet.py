"""fleet collect, fleet status, fleet resources: a grid collected on a Ray cluster, by machine kind."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer
from rich.table import Table

from hspi.cli.app import collection_progress, console, err
from hspi.cli.pipeline import _split

fleet_app = typer.Typer(no_args_is_help=True, help="Collect grids on a Ray cluster, one dataset per machine kind.")

DEFAULT_STORE = "fleet-store"


@fleet_app.command("collect")
def collect(
    ray_address: Annotated[str, typer.Option("--ray", help="Ray cluster address ('auto': the one this node is in)")] = (
        "auto"
    ),
    grid: Annotated[str, typer.Option(help="named grid: cpu-default, cpu-smoke, gpu-default...")] = "cpu-default",
    models: Annotated[
        str, typer.Option(help="'all' or comma-separated: mlp,cnn,lm-small or registered models (hspi model add)")
    ] = "all",
    store: Annotated[str, typer.Option(help="shard store: a local path or an fsspec URL (s3://...)")] = DEFAULT_STORE,
    kinds: Annotated[
        Optional[str], typer.Option(help="comma-separated machine kinds (default: every kind in the cluster)")
    ] = None,
    pool: Annotated[int, typer.Option(min=1, help="reference-pool probes per model")] = 1000,
    fresh: Annotated[int, typer.Option(min=1, help="fresh (held-out) probes per model")] = 400,
    replay: Annotated[int, typer.Option(min=1, help="pool probes re-run in an independent process")] = 300,
) -> None:
    """One Ray task per (configuration, machine kind); resumable; a dataset per kind in the store."""
    from hspi.collector.fleet import check_reachable, fleet_collect
    from hspi.collector.fleet_store import ShardStore
    from hspi.collector.grid import grid_platforms
    from hspi.collector.models import resolve_models

    grid_platforms(grid), resolve_models(models)  # bad names and stores fail before Ray is reached
    ShardStore(store).check_writable()
    check_reachable(ray_address)
    with collection_progress() as on_progress:
        report = fleet_collect(
            grid,
            models,
            store,
            address=ray_address,
            kinds=_split(kinds) if kinds else None,
            pool=pool,
            fresh=fresh,
            replay=replay,
            on_progress=on_progress,
        )
    console.print(
        f"{report.ran} configurations run, {report.done_before} already done, on {report.nodes} nodes "
        f"({', '.join(report.kinds)}) in {report.seconds} s; datasets under {store}"
    )


@fleet_app.command("status")
def status(
    store: Annotated[str, typer.Option(help="shard store: a local path or an fsspec URL")] = DEFAULT_STORE,
) -> None:
    """Configurations per machine kind: done, pending, failed (and why)."""
    from hspi.collector.fleet_store import ShardStore

    shard_store = ShardStore(store)
    state = shard_store.load_status()
    jobs = list(dict(state.get("jobs", {})).values())
    counts: dict[str, dict[str, int]] = {}
    for job in jobs:
        counts.setdefault(job["kind"], {}).setdefault(job["state"], 0)
        counts[job["kind"]][job["state"]] += 1
    for kind in shard_store.kinds():
        counts.setdefault(kind, {})
    table = Table("machine kind", "done", "pending", "failed", "in manifest", title=f"fleet store {store}")
    for kind in sorted(counts):
        manifest = shard_store.load_manifest(kind)
        row = counts[kind]
        table.add_row(
            kind,
            str(row.get("done", 0)),
            str(row.get("pending", 0)),
            str(row.get("failed", 0)),
            str(len(manifest.configs) if manifest else 0),
        )
    console.print(table)
    if state.get("driver"):
        console.print(f"driver {state['driver']} (started {state.get('started')}, updated {state.get('updated')})")
    for job in jobs:
        if job["state"] == "failed":
            err.print(f"failed: {job['config']} on {job['kind']}: {job.get('reason', '')}", markup=False)


@fleet_app.command("resources")
def resources() -> None:
    """This node's machine-kind labels, measured here, as JSON for `ray start --resources`."""
    from hspi.collector.fleet_kinds import node_resources

    print(json.dumps(node_resources()))
