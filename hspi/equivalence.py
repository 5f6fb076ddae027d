"""Equivalence classes: configurations whose outputs are bit-identical on every probe of a model.

A class is named after its first member in collection order; its label for a head lists the
members' labels joined by '|', so a class that merges torch-eager and torch-compile says so, and a
class whose outputs are identical on two CPUs carries both CPUs' hardware labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hspi.dataset import SEARCHED_REFERENCE_RUN, Dataset
from hspi.errors import DatasetError
from hspi.platform import HEADS, gpu_hardware_label, measured_cpu


@dataclass(frozen=True)
class EquivalenceClass:
    name: str
    members: tuple[str, ...]
    labels: dict[str, str]  # head -> label (full -> name)
    # how the members' server turns logits into logprobs (`Platform.logprob_convention`): one per class,
    # since equal logits shown by two conventions are two answers
    convention: str = "numpy"


def equivalence_classes(dataset: Dataset, model: str) -> list[EquivalenceClass]:
    configs = dataset.complete_configs(model, ("reference", "fresh"))
    if not configs:
        raise DatasetError(f"{dataset.directory}: no complete configuration for model {model}")
    searched = dataset.has_searched_pool(model)
    groups: dict[tuple[str, ...], list[str]] = {}
    for cid in configs:
        runs = dataset.manifest.configs[cid].runs
        key = (
            runs["reference"].shards[model].shard,
            runs["fresh"].shards[model].shard,
            runs[SEARCHED_REFERENCE_RUN].shards[model].shard if searched else "",
            dataset.manifest.configs[cid].platform.logprob_convention,
        )
        groups.setdefault(key, []).append(cid)
    classes = []
    for members in groups.values():
        labels = {
            h: "|".join(sorted({dataset.manifest.configs[m].labels[h] for m in members})) for h in HEADS if h != "full"
        }
        labels["full"] = members[0]
        convention = dataset.manifest.configs[members[0]].platform.logprob_convention
        classes.append(EquivalenceClass(members[0], tuple(members), labels, convention))
    return classes


def joint_classes(dataset: Dataset) -> list[EquivalenceClass]:
    """Classes over every model at once: identical on every probe of every model."""
    per_model = {
        m: {c: cls.name for cls in equivalence_classes(dataset, m) for c in cls.members} for m in dataset.models
    }
    configs = [c for c in dataset.manifest.configs if all(c in per_model[m] for m in dataset.models)]
    groups: dict[tuple[str, ...], list[str]] = {}
    for cid in configs:
        groups.setdefault(tuple(per_model[m][cid] for m in dataset.models), []).append(cid)
    out = []
    for members in groups.values():
        labels = {
            h: "|".join(sorted({dataset.manifest.configs[m].labels[h] for m in members})) for h in HEADS if h != "full"
        }
        labels["full"] = members[0]
        convention = dataset.manifest.configs[members[0]].platform.logprob_convention
        out.append(EquivalenceClass(members[0], tuple(members), labels, convention))
    return out


def measured_on(dataset: Dataset, members: tuple[str, ...] | list[str]) -> list[str]:
    """The hardware the members' reference runs measured ('amd: AMD EPYC', 'nvidia-h200-sm90'), sorted."""
    seen = set()
    for cid in members:
        record = dataset.manifest.configs[cid]
        provenance = record.runs["reference"].provenance if "reference" in record.runs else {}
        seen.add(gpu_hardware_label(provenance) if record.platform.device == "cuda" else measured_cpu(provenance))
    return sorted(seen)


def measured_vendors(dataset: Dataset, members: tuple[str, ...] | list[str]) -> list[str]:
    """The CPU vendors the members' reference runs measured ('amd', 'intel'), sorted."""
    return sorted(
        {
            str(dataset.manifest.configs[c].runs["reference"].provenance.get("cpu_vendor") or "unknown")
            for c in members
            if "reference" in dataset.manifest.configs[c].runs
        }
    )


def distinct_answers(words: np.ndarray) -> np.ndarray:
    """(n,) per probe: how many distinct answers C classes give, from their (C, n, V) uint32 answers."""
    return np.array([len({words[c, p].tobytes() for c in range(words.shape[0])}) for p in range(words.shape[1])])
