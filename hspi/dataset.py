"""The fingerprint dataset on disk: a manifest, content-addressed Parquet shards, a datasheet.

    <dataset>/dataset.json        manifest: probe sets, configurations, their platforms,
                                  measured provenance and which shard holds each run's outputs
    <dataset>/shards/<sha>.parquet  one (model, run) output table: probe_id, exact native bytes
    <dataset>/DATASHEET.md        what, where, how collected, classes, sizes

A shard is named by the SHA-256 of its decoded content, so identical outputs (configurations in
one equivalence class) are stored once and corruption is caught on read.  The manifest is
rewritten atomically after every finished configuration: an interruption loses at most the
configuration in flight, and a rerun resumes from the manifest.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, Field, ValidationError

from hspi.errors import DatasetError
from hspi.files import atomic_path, write_text_atomic
from hspi.platform import Platform
from hspi.responses import Responses

FORMAT = "hspi-dataset/1"
MANIFEST = "dataset.json"
# pool probes that split near-twin classes, re-run in another independent process (see collector.splitting_replay)
SPLITTING_RUN = "replay-splitting"
# pool probes beyond the first `size`, found by searching the pool stream for probes that split
# near-twin classes: every configuration's answers (references) and an independent re-run
# (see collector.splitting_search)
SEARCHED_REFERENCE_RUN = "reference-searched"
SEARCHED_REPLAY_RUN = "replay-searched"
# pool probes answered inside batches of several sizes, as a dynamic batcher forms them: each probe's
# distinct answers (see collector.batched_collect)
BATCHED_RUN = "batched"


class ShardRef(BaseModel):
    shard: str
    probe_set: str
    n_probes: int
    native_dtype: str


class RunRecord(BaseModel):
    """One fresh process's outputs for one configuration: per model, the shard that holds them."""

    shards: dict[str, ShardRef]
    provenance: dict[str, Any]
    seconds: float
    # batched runs only: the batch sizes tried, and per model, for each stored row (a probe's distinct
    # answer), a bit mask of the sizes (bit i: batch_sizes[i]) in which it appeared
    batch_sizes: list[int] = Field(default_factory=list)
    answer_sizes: dict[str, list[int]] = Field(default_factory=dict)
    # batched runs of a llama-server platform: bit i is the batch `compositions[i]`
    # (`collector.llama_cpp_compositions`), and batch_sizes[i] the requests it holds (1: alone)
    compositions: list[str] = Field(default_factory=list)
    # batched runs only, per model: probes answered again beside other batch-mates ("checked"), and how
    # many answers changed ("changed": the batch-mates, not only the size, change this platform's answers)
    batch_mates: dict[str, dict[str, int]] = Field(default_factory=dict)


class ConfigRecord(BaseModel):
    platform: Platform
    labels: dict[str, str]
    runs: dict[str, RunRecord] = Field(default_factory=dict)
    source: str = ""  # which machine's collection it came from (dataset name at collection time)


class Manifest(BaseModel):
    format: str = FORMAT
    name: str
    grid: str = ""
    probe_sets: dict[str, dict[str, int]] = Field(default_factory=dict)  # model -> {probe-set version: size}
    configs: dict[str, ConfigRecord] = Field(default_factory=dict)
    created: str = ""
    notes: list[str] = Field(default_factory=list)


def content_hash(probe_ids: np.ndarray, native: np.ndarray, native_dtype: str) -> str:
    digest = hashlib.sha256()
    digest.update(native_dtype.encode())
    digest.update(np.ascontiguousarray(probe_ids, dtype=np.int32).tobytes())
    digest.update(np.ascontiguousarray(native).tobytes())
    return digest.hexdigest()[:32]


def write_shard(directory: Path, responses: Responses) -> ShardRef:
    """Write (once) the shard for these responses; return its reference.  Atomic."""
    if not np.isfinite(responses.as_float32()).all():
        raise DatasetError(f"refusing to store NaN/Inf outputs of {responses.model} ({responses.probe_set})")
    sha = content_hash(responses.probe_ids, responses.native, responses.native_dtype)
    path = directory / "shards" / f"{sha}.parquet"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        width = responses.native.shape[1] * responses.native.itemsize
        rows = byte_planes(responses.native)
        table = pa.table(
            {
                "probe_id": pa.array(responses.probe_ids.astype(np.int32)),
                "value": pa.FixedSizeBinaryArray.from_buffers(
                    pa.binary(width), len(rows), [None, pa.py_buffer(rows.tobytes())]
                ),
            }
        )
        table = table.replace_schema_metadata(
            {
                "model": responses.model,
                "probe_set": responses.probe_set,
                "native_dtype": responses.native_dtype,
                "n_outputs": str(responses.native.shape[1]),
                "sha": sha,
                "layout": "byte-planes",
            }
        )
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp, compression="zstd", compression_level=9)
    return ShardRef(
        shard=sha, probe_set=responses.probe_set, n_probes=len(responses.probe_ids), native_dtype=responses.native_dtype
    )


def byte_planes(native: np.ndarray) -> np.ndarray:
    """Each row's words regrouped byte by byte (all top bytes, then the next...): sign/exponent
    bytes repeat and compress; the float words themselves barely do."""
    n, width = native.shape
    raw = np.ascontiguousarray(native).view(np.uint8).reshape(n, width, native.itemsize)
    return np.ascontiguousarray(raw.transpose(0, 2, 1)).reshape(n, -1)


def from_byte_planes(planes: np.ndarray, dtype: type, width: int) -> np.ndarray:
    itemsize = np.dtype(dtype).itemsize
    raw = planes.reshape(len(planes), itemsize, width).transpose(0, 2, 1)
    return np.ascontiguousarray(raw).view(dtype).reshape(len(planes), width)


_NUMPY_OF = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}


def read_shard(directory: Path, ref: ShardRef, model: str) -> Responses:
    path = directory / "shards" / f"{ref.shard}.parquet"
    if not path.exists():
        raise DatasetError(f"missing shard {path}")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise DatasetError(f"corrupt or truncated shard {path}: {str(exc).splitlines()[0]}") from None
    return decode_shard_table(table, ref, model, label=str(path))


def decode_shard_table(table: pa.Table, ref: ShardRef, model: str, *, label: str) -> Responses:
    """A shard's responses, checked against the hash its reference names (`label` says where it was read)."""
    try:
        meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
        n_outputs, native_dtype = int(meta["n_outputs"]), meta["native_dtype"]
        probe_ids = table.column("probe_id").to_numpy().astype(np.int32)
        column = table.column("value").combine_chunks()
        raw = np.frombuffer(column.buffers()[1], dtype=np.uint8)[: len(probe_ids) * column.type.byte_width]
        itemsize = np.dtype(_NUMPY_OF[native_dtype]).itemsize
        native = from_byte_planes(raw.reshape(len(probe_ids), n_outputs * itemsize), _NUMPY_OF[native_dtype], n_outputs)
    except (pa.ArrowException, OSError, KeyError, ValueError) as exc:
        raise DatasetError(f"corrupt or truncated shard {label}: {str(exc).splitlines()[0]}") from None
    if content_hash(probe_ids, native, native_dtype) != ref.shard:
        raise DatasetError(f"corrupt shard {label}: its content does not match its hash")
    responses = Responses(model, ref.probe_set, probe_ids, native, native_dtype)
    if not np.isfinite(responses.as_float32()).all():
        raise DatasetError(f"shard {label} holds NaN/Inf outputs")
    return responses


def load_manifest(directory: Path) -> Manifest:
    path = Path(directory) / MANIFEST
    if not path.exists():
        raise DatasetError(f"no dataset at {directory}: {MANIFEST} not found")
    try:
        manifest = Manifest.model_validate_json(path.read_text(encoding="utf-8"))
    except (ValidationError, ValueError) as exc:
        raise DatasetError(f"corrupt manifest {path}: {str(exc).splitlines()[0]}") from None
    if manifest.format != FORMAT:
        raise DatasetError(f"{path}: unsupported format {manifest.format!r} (this hspi reads {FORMAT})")
    return manifest


def save_manifest(directory: Path, manifest: Manifest) -> None:
    write_text_atomic(directory / MANIFEST, json.dumps(manifest.model_dump(mode="json"), indent=1, sort_keys=True))


class Dataset:
    """Read access to one dataset directory, with the shards decoded lazily and cached."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.manifest = load_manifest(self.directory)
        self._cache: dict[tuple[str, str], Responses] = {}

    @property
    def models(self) -> list[str]:
        return sorted(self.manifest.probe_sets)

    def complete_configs(self, model: str, runs: tuple[str, ...] = ("reference", "replay")) -> list[str]:
        """Configurations whose every listed run holds outputs for `model`, in manifest order."""
        return [
            cid
            for cid, rec in self.manifest.configs.items()
            if all(r in rec.runs and model in rec.runs[r].shards for r in runs)
        ]

    def responses(self, config_id: str, run: str, model: str) -> Responses:
        key = (config_id, run + "/" + model)
        if key not in self._cache:
            try:
                ref = self.manifest.configs[config_id].runs[run].shards[model]
            except KeyError:
                raise DatasetError(f"{self.directory}: no {run} outputs of {model} for {config_id}") from None
            self._cache[key] = read_shard(self.directory, ref, model)
        return self._cache[key]

    def has_searched_pool(self, model: str) -> bool:
        """Whether every configuration with references of `model` also answered its searched pool probes
        (a search in progress, or a merge with a dataset that has none, leaves the pool as it was)."""
        configs = self.complete_configs(model, ("reference",))
        return bool(configs) and all(cid in self.complete_configs(model, (SEARCHED_REFERENCE_RUN,)) for cid in configs)

    def pool_references(self, config_id: str, model: str) -> Responses:
        """A configuration's stored answers to every reference pool probe, sorted by probe id: the
        `reference` run, plus the searched pool probes where every configuration has them."""
        reference = self.responses(config_id, "reference", model)
        if not self.has_searched_pool(model):
            return reference
        searched = self.responses(config_id, SEARCHED_REFERENCE_RUN, model)
        if searched.probe_set != reference.probe_set or searched.native_dtype != reference.native_dtype:
            raise DatasetError(
                f"{self.directory}: {config_id} {SEARCHED_REFERENCE_RUN} of {model} does not extend its "
                f"reference run ({searched.probe_set} {searched.native_dtype})"
            )
        ids = np.concatenate([reference.probe_ids, searched.probe_ids])
        order = np.argsort(ids, kind="stable")
        if len(np.unique(ids)) != len(ids):
            raise DatasetError(
                f"{self.directory}: {config_id} {SEARCHED_REFERENCE_RUN} of {model} repeats reference probes"
            )
        native = np.concatenate([reference.native, searched.native])[order]
        return Responses(model, reference.probe_set, ids[order].astype(np.int32), native, reference.native_dtype)

    def validate(self) -> None:
        """Read every shard once (hash-checked) and check the probe-set versions agree."""
        for cid, record in self.manifest.configs.items():
            for run, run_record in record.runs.items():
                for model, ref in run_record.shards.items():
                    known = self.manifest.probe_sets.get(model, {})
                    if ref.probe_set not in known:
                        raise DatasetError(
                            f"{self.directory}: {cid} {run} {model} uses probe set {ref.probe_set!r}, "
                            f"the dataset declares {sorted(known)}"
                        )
                    self.responses(cid, run, model)
