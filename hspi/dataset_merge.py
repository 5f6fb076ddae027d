"""Merge datasets collected on several machines into one (shards are content-addressed: copied once).

A CPU configuration's hardware label is derived again from the provenance its reference run measured
(`cpu_hardware_label`: vendor, model, ISA), so sources collected before labels named the CPU model, or
on other machines, are labelled alike and two CPUs never share a label by accident of an older format.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

from hspi.dataset import Dataset, Manifest, save_manifest
from hspi.errors import DatasetError
from hspi.platform import cpu_hardware_label


def merge(out: Path, sources: list[Path]) -> Manifest:
    if not sources:
        raise DatasetError("nothing to merge: name at least one source dataset")
    datasets = [Dataset(s) for s in sources]
    probe_sets = datasets[0].manifest.probe_sets
    merged = Manifest(
        name=out.name,
        grid="+".join(sorted({d.manifest.grid for d in datasets})),
        probe_sets=probe_sets,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    for ds in datasets:
        if ds.manifest.probe_sets != probe_sets:
            raise DatasetError(
                f"{ds.directory}: probe sets {ds.manifest.probe_sets} differ from "
                f"{datasets[0].directory}'s {probe_sets}; they cannot be compared"
            )
        ds.validate()
        for cid, record in ds.manifest.configs.items():
            key = (
                cid
                if record.source in ("", ds.manifest.name) and cid not in merged.configs
                else f"{ds.manifest.name}:{cid}"
            )
            if key in merged.configs:
                raise DatasetError(f"configuration {key} appears twice (in {ds.directory})")
            labels = dict(record.labels)
            if record.platform.device == "cpu" and "reference" in record.runs:
                isa = labels["hardware"].rsplit("-x86-", 1)[1] if "-x86-" in labels.get("hardware", "") else None
                labels["hardware"] = cpu_hardware_label(record.runs["reference"].provenance, isa)
            source = record.source or ds.manifest.name
            merged.configs[key] = record.model_copy(update={"source": source, "labels": labels})
            for run in record.runs.values():
                for ref in run.shards.values():
                    target = out / "shards" / f"{ref.shard}.parquet"
                    if not target.exists():
                        target.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(ds.directory / "shards" / f"{ref.shard}.parquet", target)
    save_manifest(out, merged)
    return merged
