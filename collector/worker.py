"""One collection run in a fresh process: `python -m hspi.collector.worker JOB.json RESULT.json`.

The parent sets the load-time environment (ISA caps, MKL_CBWR) for this process; the worker runs
the probes, measures provenance here (what the libraries dispatched) and writes content-addressed
shards, then the result file.  It never touches the manifest: the parent owns that.
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from hspi.collector.batch_compositions import answer_in_batches
from hspi.collector.llama_cpp_compositions import answer_in_compositions
from hspi.collector.models import model_spec
from hspi.collector.probes import ProbeSet
from hspi.collector.targets.local import make_target
from hspi.dataset import RunRecord, write_shard
from hspi.errors import HspiError
from hspi.platform import Platform
from hspi.provenance import capture_native_output, cpu_info, library_versions, requested_environment, torch_runtime


class RunPlan(BaseModel):
    name: str  # "reference" | "replay" | "fresh"
    probe_set: str  # "pool" | "fresh"
    size: int  # the probe set's size
    subset: int | None = None  # run only this many ids, drawn with `seed`
    shuffle: bool = False  # another order, hence another batch composition
    seed: int = 0
    ids: list[int] | None = None  # explicit probe ids (e.g. a border selection) instead of 0..size-1
    # answer every probe once inside a batch of each of these sizes (batch-mates: the run's other
    # probes, each probe at another position per size); stored: each probe's distinct answers
    batch_sizes: list[int] | None = None
    # a llama-server platform's batches instead (`collector.llama_cpp_compositions`); batch_sizes then
    # holds the requests of each
    compositions: list[str] | None = None


class WorkerJob(BaseModel):
    platform: Platform
    models: list[str]
    runs: list[RunPlan]
    dataset_dir: str
    export_dir: str


class WorkerResult(BaseModel):
    runs: dict[str, RunRecord]


def plan_ids(plan: RunPlan) -> np.ndarray:
    ids = np.arange(plan.size, dtype=np.int32) if plan.ids is None else np.asarray(plan.ids, dtype=np.int32)
    rng = np.random.default_rng(plan.seed)
    if plan.subset is not None:
        ids = np.sort(rng.choice(ids, size=min(plan.subset, len(ids)), replace=False)).astype(np.int32)
    if plan.shuffle:
        ids = rng.permutation(ids).astype(np.int32)
    return ids


def run_job(job: WorkerJob) -> WorkerResult:
    started = time.perf_counter()
    provenance = {**cpu_info(), "versions": library_versions(), "requested_env": requested_environment()}
    shards: dict[str, dict] = {plan.name: {} for plan in job.runs}
    native: dict[str, dict] = {}
    answer_sizes: dict[str, dict[str, list[int]]] = {plan.name: {} for plan in job.runs}
    batch_mates: dict[str, dict[str, dict[str, int]]] = {plan.name: {} for plan in job.runs}
    llama_cpp = job.platform.engine == "llama.cpp"
    for model in job.models:
        target = make_target(model, job.platform, export_dir=Path(job.export_dir))
        spec = model_spec(model)
        first = ProbeSet(spec, job.runs[0].probe_set, job.runs[0].size)
        if llama_cpp:  # llama.cpp states its compiled CPU features itself; torch's libraries do not run
            native[model] = target.provenance()  # type: ignore[attr-defined]
        else:  # one batch under verbose output: what oneDNN/MKL really dispatched for this model
            native[model] = capture_native_output(lambda: target.answer(first, first.ids[: job.platform.batch_size]))
        for plan in job.runs:
            probes = ProbeSet(spec, plan.probe_set, plan.size)
            ids = plan_ids(plan)
            if plan.compositions:
                responses, masks = answer_in_compositions(target, probes, ids, plan.compositions)
                shards[plan.name][model] = write_shard(Path(job.dataset_dir), responses)
                answer_sizes[plan.name][model] = masks
                continue
            if plan.batch_sizes:
                responses, masks, mates = answer_in_batches(target, probes, ids, plan.batch_sizes)
                shards[plan.name][model] = write_shard(Path(job.dataset_dir), responses)
                answer_sizes[plan.name][model] = masks
                batch_mates[plan.name][model] = mates
                continue
            responses = target.answer(probes, ids)
            order = np.argsort(responses.probe_ids, kind="stable")  # stored sorted: same content, same shard
            responses = responses.select(responses.probe_ids[order])
            shards[plan.name][model] = write_shard(Path(job.dataset_dir), responses)
    # the process's peak resident memory (Linux reports KiB): what a configuration needs to be collected
    provenance["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if llama_cpp:
        return _llama_cpp_result(job, provenance, native, shards, answer_sizes, started)
    import torch

    # a tiny fp32 convolution always goes through oneDNN: it makes the library state its ISA
    conv = torch.nn.Conv2d(1, 1, 3)
    native["onednn-isa-check"] = capture_native_output(lambda: conv(torch.ones(1, 1, 5, 5)))
    provenance.update(torch_runtime())
    provenance["native_dispatch"] = native
    # the ISA line is process-wide; keep the first model's report at top level for labelling
    provenance["onednn_isa"] = next((n["onednn_isa"] for n in native.values() if n["onednn_isa"]), "")
    seconds = time.perf_counter() - started
    sizes = {plan.name: plan.batch_sizes or [] for plan in job.runs}
    return WorkerResult(
        runs={
            name: RunRecord(
                shards=s,
                provenance=provenance,
                seconds=seconds,
                batch_sizes=sizes[name],
                answer_sizes=answer_sizes[name],
                batch_mates=batch_mates[name],
            )
            for name, s in shards.items()
        }
    )


def _llama_cpp_result(
    job: WorkerJob, provenance: dict, native: dict, shards: dict, answer_sizes: dict, started: float
) -> WorkerResult:
    first = native[job.models[0]]
    provenance["native_dispatch"] = native
    # process-wide facts at top level, for labelling (hspi.platform.measured_isa_level reads them)
    provenance["llama_cpp_system_info"] = first["llama_cpp_system_info"]
    provenance["llama_cpp_python"] = first["llama_cpp_python"]
    seconds = time.perf_counter() - started
    plans = {plan.name: plan for plan in job.runs}
    return WorkerResult(
        runs={
            name: RunRecord(
                shards=s,
                provenance=provenance,
                seconds=seconds,
                batch_sizes=plans[name].batch_sizes or [],
                answer_sizes=answer_sizes[name],
                compositions=plans[name].compositions or [],
            )
            for name, s in shards.items()
        }
    )


def main(argv: list[str]) -> int:
    job_path, result_path = Path(argv[1]), Path(argv[2])
    job = WorkerJob.model_validate_json(job_path.read_text(encoding="utf-8"))
    try:
        result = run_job(job)
    except HspiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    tmp = result_path.with_suffix(".tmp")
    tmp.write_text(result.model_dump_json(), encoding="utf-8")
    tmp.replace(result_path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
