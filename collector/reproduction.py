"""Before a run extends a dataset: does this machine reproduce the dataset's stored references?

A worker that adds answers to an existing dataset (border prompts, splitting probes) first
re-answers a few pool probes; if they are not bit-identical to the stored references, its answers
would be filed under the wrong classes, so the collection stops.
"""

from __future__ import annotations

from hspi.dataset import Dataset
from hspi.responses import Responses
from hspi.errors import CollectionError
from hspi.collector.worker import RunPlan

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
        raise CollectionError(f"{config_id}: this machine does not reproduce the stored {model} outputs of "
                              f"{ds.manifest.name} (pool probes 0..{CHECK_PROBES - 1}); collect {what} "
                              "on the machine the dataset came from")
