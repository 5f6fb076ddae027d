"""Measured, not bounded: the wall time to collect a 200-probe reference pool of the ~0.5B-parameter model
(`byo_realistic.py`'s: Qwen2.5-0.5B's shape, random weights, seed 20261130) on every configuration of the
`cpu-default` grid that a registered model runs, on this machine, with each worker's peak memory.

    python benchmarks/byo_realistic_grid.py [--stop-after-s S]   # writes results/byo-realistic-grid.{json,png}

Each configuration runs as `hspi collect` runs its reference process: a fresh worker process
(`hspi.collector.worker`) that loads the model and answers the pool's 200 probes, one after another, in
the grid's order.  The replay and fresh processes of a full `hspi collect` are not run (they would add
`--replay` + `--fresh` probes and one more load per configuration).  The JSON is rewritten after every
configuration, so an interrupted run keeps what it measured; with `--stop-after-s`, no configuration
starts after that many seconds and those left are listed under `not_run`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from byo_realistic import machine_and_model, make_model  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
POOL = 200
MODEL = "realistic-0.5b"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stop-after-s", type=float, default=None)
    args = parser.parse_args()
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="hspi-byo-realistic-grid-"))
    os.environ["HSPI_HOME"] = str(work / "home")
    from hspi.collector.collect import unsupported_platforms
    from hspi.collector.grid import grid_platforms
    from hspi.collector.local_run import run_worker
    from hspi.collector.registry import ModelRegistry
    from hspi.collector.worker import RunPlan, WorkerJob
    from hspi.errors import CollectionError
    from hspi.platform import platform_labels
    from hspi.provenance import cpu_info

    t0 = time.perf_counter()
    card, _ = ModelRegistry().add(MODEL, hf=make_model(work / "model"))
    make_seconds = time.perf_counter() - t0
    grid = grid_platforms("cpu-default")
    skipped = unsupported_platforms(grid, [MODEL])
    platforms = [p for p in grid if p.id not in skipped]
    load_before = os.getloadavg()
    rows: list[dict] = []
    failed: list[dict] = []
    grid_started = time.perf_counter()

    def write(complete: bool) -> None:
        shared = machine_and_model(card, load_before, make_seconds)
        shared["machine"]["cpu_flags"] = cpu_info()["cpu_flags"]  # the flags every collection's provenance keeps
        # rewritten after every configuration: the load average is the one at this write
        shared["machine"]["load_average_1_5_15_now"] = shared["machine"].pop("load_average_1_5_15_after")
        result = {
            "benchmark": "byo-realistic-grid",
            "complete": complete,
            **shared,
            "grid": "cpu-default",
            "pool_probes": POOL,
            "what": "the reference process of hspi collect (model load + the pool's probes, one fresh worker per "
            "configuration, one configuration at a time); the replay and fresh processes are not run",
            "configurations_in_grid": len(grid),
            "skipped_by_the_collector": skipped,
            "configurations": rows,
            "failed": failed,
            "not_run": [p.id for p in platforms[len(rows) + len(failed) :]],
            "summary": {
                "configurations_measured": len(rows),
                "grid_wall_seconds": round(time.perf_counter() - grid_started, 1),
                "sum_worker_seconds": round(sum(r["worker_seconds"] for r in rows), 1),
                "max_peak_rss_mb": max((r["peak_rss_mb"] for r in rows), default=None),
            },
            "seconds": round(time.perf_counter() - started, 1),
        }
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "byo-realistic-grid.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")

    for platform in platforms:
        if args.stop_after_s is not None and time.perf_counter() - grid_started > args.stop_after_s:
            break
        job = WorkerJob(
            platform=platform,
            models=[MODEL],
            runs=[RunPlan(name="reference", probe_set="pool", size=POOL)],
            dataset_dir=str(work / "dataset"),
            export_dir=str(work / "exports"),
        )
        t0 = time.perf_counter()
        try:
            with tempfile.TemporaryDirectory() as tmp:
                record = run_worker(job, Path(tmp)).runs["reference"]
        except CollectionError as exc:  # a configuration this machine cannot run is a result, not the end of the run
            failed.append({"platform": platform.id, "error": str(exc)[:300]})
            print(failed[-1], flush=True)
            write(False)
            continue
        wall = time.perf_counter() - t0
        rows.append(
            {
                "platform": platform.id,
                "probes": POOL,
                "worker_seconds": round(record.seconds, 1),
                "wall_seconds": round(wall, 1),
                "probes_per_second_including_load": round(POOL / record.seconds, 3),
                "peak_rss_mb": round(int(record.provenance["peak_rss_bytes"]) / 2**20),
                # what oneDNN's dispatch reported in the worker (the cap's effect, measured), and the label
                "onednn_isa": record.provenance.get("onednn_isa", ""),
                "hardware_label": platform_labels(platform, record.provenance)["hardware"],
            }
        )
        print(rows[-1], flush=True)
        write(False)
    write(len(rows) + len(failed) == len(platforms))
    plot()


def plot() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    result = json.loads((RESULTS / "byo-realistic-grid.json").read_text(encoding="utf-8"))
    rows = result["configurations"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 0.32 * len(rows) + 1.8), sharey=True)
    names = [r["platform"] for r in rows]
    left.barh(names, [r["worker_seconds"] for r in rows], color="tab:blue")
    left.set_xlabel(f"seconds for {result['pool_probes']} probes, model load included")
    right.barh(names, [r["peak_rss_mb"] / 1024 for r in rows], color="tab:orange")
    right.set_xlabel("worker peak RSS (GiB)")
    left.invert_yaxis()
    left.tick_params(axis="y", labelsize=7)
    summary = result["summary"]
    fig.suptitle(
        f"{result['model']['parameters'] / 1e6:.0f}M-parameter model, {result['grid']} grid on {result['machine']['cpu']}"
        f" ({result['machine']['cores']} cores): {summary['grid_wall_seconds'] / 60:.0f} min for "
        f"{summary['configurations_measured']} configurations",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(RESULTS / "byo-realistic-grid.png", dpi=110)


if __name__ == "__main__":
    main()
