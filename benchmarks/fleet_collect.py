"""The same grid through `hspi collect` and through Ray (`hspi fleet collect`), side by side.

Starts a Ray cluster on loopback (a head that runs nothing and --workers worker nodes, each a raylet
advertising this machine's measured kind), collects the grid both ways into fresh directories,
times each from the command's start to its exit, and compares every shard file byte for byte.
Writes benchmarks/results/fleet-collect.json.  On one machine Ray adds no hardware, so the wall
times measure the engine's overhead and its concurrency on these cores, not a fleet's speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hspi.collector.fleet_local import local_cluster
from hspi.dataset import load_manifest
from hspi.provenance import cpu_info

ROOT = Path(__file__).resolve().parents[1]


def hspi(*args: str) -> float:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "hspi", *args], capture_output=True, text=True, timeout=3600)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"hspi {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return round(seconds, 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", default="cpu-smoke")
    parser.add_argument("--models", default="mlp,lm-small")
    parser.add_argument("--pool", type=int, default=200)
    parser.add_argument("--fresh", type=int, default=80)
    parser.add_argument("--replay", type=int, default=60)
    parser.add_argument("--workers", type=int, default=2, help="Ray worker nodes (raylets) on this machine")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fleet-collect.json")
    args = parser.parse_args()
    sizes = ["--pool", str(args.pool), "--fresh", str(args.fresh), "--replay", str(args.replay)]
    plan = ["--grid", args.grid, "--models", args.models, *sizes]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="hspi-fleet-bench-") as tmp:
        local, store = Path(tmp) / "local", Path(tmp) / "store"
        local_seconds = hspi("collect", *plan, "--out", str(local))
        started = time.perf_counter()
        with local_cluster(workers=args.workers) as address:
            cluster_seconds = round(time.perf_counter() - started, 2)
            ray_seconds = hspi("fleet", "collect", "--ray", address, *plan, "--store", str(store))
        (kind,) = [p.name for p in store.iterdir() if p.is_dir()]
        ours = {p.name: p.read_bytes() for p in (store / kind / "shards").iterdir()}
        theirs = {p.name: p.read_bytes() for p in (local / "shards").iterdir()}
        fleet, reference = load_manifest(store / kind), load_manifest(local)
        same_refs = all(
            fleet.configs[cid].runs[run].shards == rec.runs[run].shards
            for cid, rec in reference.configs.items()
            for run in ("reference", "replay", "fresh")
        )
    import ray

    info = cpu_info()
    result = {
        "engine": "ray",
        "ray_version": ray.__version__,
        "grid": args.grid,
        "models": args.models.split(","),
        "pool": args.pool,
        "fresh": args.fresh,
        "replay": args.replay,
        "nodes": {"head": 1, "workers": args.workers, "cpus_per_worker": 2, "machine_kind": kind},
        "configurations": len(reference.configs),
        "worker_processes_per_engine": 2 * len(reference.configs),
        "wall_seconds": {
            "hspi_collect": local_seconds,
            "ray_fleet_collect": ray_seconds,
            "ray_cluster_start": cluster_seconds,
        },
        "shards": {
            "hspi_collect": len(theirs),
            "ray": len(ours),
            "bit_identical": sum(1 for name, data in ours.items() if theirs.get(name) == data),
            "manifest_shard_references_equal": same_refs,
        },
        "machine": {
            "cpu_model": info["cpu_model"],
            "cores": os.cpu_count(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(),
        },
        "note": "one shared machine: the Ray nodes are processes on the same cores, so the times compare the engines' "
        "overhead and concurrency here, not a fleet's speed-up; other jobs ran on the machine meanwhile (load average)",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=1))
    return 0 if result["shards"]["bit_identical"] == len(theirs) == len(ours) else 1


if __name__ == "__main__":
    sys.exit(main())
