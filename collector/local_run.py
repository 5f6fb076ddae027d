"""Answer probes with a platform of the grid in a fresh process (its load-time knobs honoured)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hspi.collector.worker import RunPlan, WorkerJob, WorkerResult
from hspi.dataset import read_shard
from hspi.errors import CollectionError
from hspi.platform import Platform
from hspi.responses import Responses

LOAD_TIME_VARIABLES = (
    "MKL_ENABLE_INSTRUCTIONS",
    "ONEDNN_MAX_CPU_ISA",
    "ATEN_CPU_CAPABILITY",
    "MKL_CBWR",
    "ONEDNN_VERBOSE",
)
WORKER_TIMEOUT_S = 1800  # torch.compile of three models on two cores takes minutes, not hours


def run_worker(job: WorkerJob, workdir: Path) -> WorkerResult:
    """Run one `WorkerJob` in a fresh interpreter whose environment carries the platform's caps."""
    job_path, result_path = workdir / "job.json", workdir / "result.json"
    job_path.write_text(job.model_dump_json(), encoding="utf-8")
    result_path.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in LOAD_TIME_VARIABLES}
    env.update(job.platform.environment())
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "hspi.collector.worker", str(job_path), str(result_path)],
            env=env,
            capture_output=True,
            text=True,
            timeout=WORKER_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise CollectionError(f"{job.platform.id}: worker ran past {WORKER_TIMEOUT_S}s") from None
    if proc.returncode != 0 or not result_path.exists():
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise CollectionError(f"{job.platform.id}: worker exited {proc.returncode}: {tail}")
    return WorkerResult.model_validate_json(result_path.read_text(encoding="utf-8"))


def run_in_fresh_process(
    platform: Platform, model: str, probe_sets: dict[str, int], n_probes: int, *, seed: int, workdir: Path
) -> Responses:
    """`n_probes` pool probes drawn with `seed`, answered by `platform` in a new process."""
    pool_size = next(size for version, size in probe_sets.items() if version.endswith("/pool"))
    plan = RunPlan(name="audit", probe_set="pool", size=pool_size, subset=n_probes, shuffle=True, seed=seed)
    job = WorkerJob(
        platform=platform, models=[model], runs=[plan], dataset_dir=str(workdir), export_dir=str(workdir / "exports")
    )
    result = run_worker(job, workdir)
    return read_shard(workdir, result.runs["audit"].shards[model], model)
