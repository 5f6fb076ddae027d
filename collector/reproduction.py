"""Before a run extends a dataset: does this machine reproduce the dataset's stored references?

A worker that adds answers to an existing dataset (border prompts, splitting probes) first
re-answers a few pool probes; if they are not bit-identical to the stored references, its answers
would be filed under the wrong classes, so the collection stops.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

from hspi.collector.local_run import run_worker
from hspi.collector.worker import RunPlan, WorkerJob
from hspi.dataset import Dataset, RunRecord, read_shard, write_shard
from hspi.errors import CollectionError
from hspi.platform import Platform
from hspi.responses import Responses

CHECK_RUN = "check"
CHECK_PROBES = 16  # pool probes each process re-answers: two batches of 8, so batch size 8 is checked too


def pool_size(ds: Dataset, models: list[str]) -> int:
    """The smallest reference pool among `models` (the check probes must exist in every one)."""
    return min(next(n for v, n in ds.manifest.probe_sets[m].items() if v.endswith("/pool")) for m in models)


def check_plan(ds: Dataset, models: list[str]) -> RunPlan:
    return RunPlan(name=CHECK_RUN, probe_set="pool", size=pool_size(ds, models), ids=list(range(CHECK_PROBES)))


def check_reproduces(ds: Dataset, config_id: str, model: str, got: Responses, what: str) -> None:
    """Raise unless `got` (the check run's answers) equals the stored reference bit for bit."""
    want = ds.responses(config_id, "reference", model).select(got.probe_ids)
    if got.native_dtype != want.native_dtype or got.native.tobytes() != want.native.tobytes():
        raise CollectionError(
            f"{config_id}: this machine does not reproduce the stored {model} outputs of "
            f"{ds.manifest.name} (pool probes 0..{CHECK_PROBES - 1}); collect {what} "
            "on the machine the dataset came from"
        )


def checked_answers(
    ds: Dataset, config_id: str, models: list[str], plan: RunPlan, what: str
) -> tuple[RunRecord, dict[str, Responses]]:
    """Run `plan` for `config_id` in a fresh worker after the bit-for-bit check: the worker's run
    record (its shards are scratch, gone on return) and, per model, the checked answers."""
    record = ds.manifest.configs[config_id]
    with tempfile.TemporaryDirectory(prefix="hspi-checked-") as tmp:
        job = WorkerJob(
            platform=record.platform,
            models=models,
            runs=[check_plan(ds, models), plan],
            dataset_dir=tmp,
            export_dir=str(ds.directory / "exports"),
        )
        result = run_worker(job, Path(tmp))
        for model in models:
            check_reproduces(
                ds, config_id, model, read_shard(Path(tmp), result.runs[CHECK_RUN].shards[model], model), what
            )
        run = result.runs[plan.name]
        return run, {model: read_shard(Path(tmp), run.shards[model], model) for model in models}


def run_checked(ds: Dataset, config_id: str, models: list[str], plan: RunPlan, what: str) -> RunRecord:
    """`checked_answers`, stored: only checked answers reach the dataset's shards (the worker writes into
    a scratch directory).  The caller files the returned run in the manifest."""
    run, answers = checked_answers(ds, config_id, models, plan, what)
    run.shards = {model: write_shard(ds.directory, got) for model, got in answers.items()}
    return run


def check_answers_here(ds: Dataset, platform: Platform, models: Sequence[str]) -> dict[str, Responses]:
    """This machine's answers of `platform` to the dataset's check probes, from a fresh worker process
    (ISA caps and other load-time knobs hold only there), as every reference is collected."""
    with tempfile.TemporaryDirectory(prefix="hspi-reproduces-") as tmp:
        job = WorkerJob(
            platform=platform,
            models=list(models),
            runs=[check_plan(ds, list(models))],
            dataset_dir=tmp,
            export_dir=str(ds.directory / "exports"),
        )
        result = run_worker(job, Path(tmp))
        return {m: read_shard(Path(tmp), result.runs[CHECK_RUN].shards[m], m) for m in models}


def _same(ds: Dataset, config_id: str, answers: dict[str, Responses]) -> bool:
    try:
        for model, got in answers.items():
            check_reproduces(ds, config_id, model, got, "")
    except CollectionError:
        return False
    return True


def reproduces_here(ds: Dataset, config_id: str, models: Sequence[str]) -> bool:
    """Does this machine answer `config_id`'s check probes of `models` bit for bit as stored?"""
    return _same(ds, config_id, check_answers_here(ds, ds.manifest.configs[config_id].platform, models))


def identical_config(ds: Dataset, platform: Platform, models: Sequence[str]) -> str | None:
    """The stored configuration whose references equal this machine's answers of `platform` bit for
    bit (on the check probes), itself first; None when no collected configuration gives them.

    On another CPU a platform can give the answers that another configuration gave on the machine
    that collected the dataset (e.g. fp32 through MKL on a CPU without AVX-512 gives what the
    collecting machine gave under an AVX2 cap): an audit then rightly names that class."""
    answers = check_answers_here(ds, platform, models)
    own = [c for c, r in ds.manifest.configs.items() if r.platform == platform]
    others = [c for c in sorted(ds.manifest.configs) if c not in own]
    return next((c for c in own + others if _same(ds, c, answers)), None)


def first_reproducing(ds: Dataset, models: Sequence[str], candidates: Sequence[str]) -> str:
    """The first of `candidates` (configuration ids of `ds`) that this machine reproduces.

    Shipped references come from one machine; another CPU gives other bits for some configurations
    (fp32 through MKL differs between vendors and ISAs, ONNX Runtime and the capped bf16/fp16 paths
    do not), so whatever must reproduce them (a border collection, a test of one) picks its platform
    here, by measurement."""
    unknown = [c for c in candidates if c not in ds.manifest.configs]
    if unknown:
        raise CollectionError(f"{unknown[0]} is not a configuration of {ds.manifest.name}")
    for config_id in candidates:
        if reproduces_here(ds, config_id, models):
            return config_id
    raise CollectionError(
        f"this machine reproduces none of {', '.join(candidates)} of {ds.manifest.name} for {', '.join(models)}: "
        "collect references here (hspi collect) and audit against them"
    )


def first_identified(ds: Dataset, models: Sequence[str], candidates: Sequence[str]) -> tuple[str, str]:
    """(the first of `candidates` whose answers here equal some collected configuration's, that
    configuration): a platform to serve that an audit against `ds` can identify on this machine."""
    for platform_id in candidates:
        found = identical_config(ds, Platform.parse(platform_id), models)
        if found is not None:
            return platform_id, found
    raise CollectionError(
        f"on this machine none of {', '.join(candidates)} answers as a configuration of {ds.manifest.name} "
        f"did for {', '.join(models)}: collect references here (hspi collect) and audit against them"
    )
