"""Border prompts on disk, next to the dataset they extend: the selection and the text-tier answers.

    <dataset>/border/selection.json          which border-stream candidates are border prompts, per
                                             model, with their float64 top-2 margins (the search)
    <dataset>/border/index.json              per configuration and run, the shard of each model
                                             and its SHA-256; per model, the SHA-256 of the
                                             selection its answers answer
    <dataset>/border/shards/<sha>.parquet    one (model, run) table: probe_id, greedy, second, margin

Only what the `text` tier needs is kept: the greedy id, the runner-up id and the platform's own
top-2 margin (float64, exact).  A shard is named by the SHA-256 of its decoded content, so the
members of one equivalence class share it and any change to the bytes is caught on read.  Every
file is written to a temporary name and renamed: an interruption never leaves half a file, and
the index is rewritten after each finished configuration, so a rerun resumes.
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
from hspi.features.border import TextAnswers
from hspi.files import atomic_path, write_text_atomic
from hspi.platform import Platform

SELECTION_FORMAT = "hspi-border-selection/1"
INDEX_FORMAT = "hspi-border/1"
BORDER_DIR = "border"
SELECTION_FILE = "selection.json"
INDEX_FILE = "index.json"
RUNS = ("border", "border-replay")  # in order, then an independent process in shuffled order


class BorderSelection(BaseModel):
    """The border prompts of one model: candidate ids of its border stream and their float64 margins."""

    model: str
    probe_set: str  # e.g. "lm-small-v1/probes-v1/border"
    stream_size: int
    method: str
    scanned: int  # candidates whose outputs the search computed
    bases: int  # prefixes (token models) or arcs (vector/image models) searched
    seconds: float
    ids: list[int]  # smallest relative margin first
    greedy: list[int]  # float64 oracle's top two ids
    second: list[int]
    margin: list[float]  # float64 oracle's top1 - top2
    relative_margin: list[float]  # margin in bf16 grid steps at the top value
    versions: dict[str, str | None] = Field(default_factory=dict)


class SelectionFile(BaseModel):
    format: str = SELECTION_FORMAT
    models: dict[str, BorderSelection] = Field(default_factory=dict)


class BorderShardRef(BaseModel):
    sha256: str
    n_probes: int


class BorderRun(BaseModel):
    shards: dict[str, BorderShardRef]  # model -> shard
    order: str  # "sorted" | "shuffled"
    seed: int
    seconds: float
    provenance: dict[str, Any]  # compact: what the process measured (ISA, versions, CPU)


class BorderConfig(BaseModel):
    platform: Platform
    runs: dict[str, BorderRun] = Field(default_factory=dict)
    wall_seconds: float = 0.0  # both processes, start to finish, as the collector saw them


class BorderIndex(BaseModel):
    format: str = INDEX_FORMAT
    dataset: str
    selections: dict[str, str] = Field(default_factory=dict)  # model -> SHA-256 of its selection
    probe_sets: dict[str, str] = Field(default_factory=dict)  # model -> border probe-set version
    configs: dict[str, BorderConfig] = Field(default_factory=dict)
    created: str = ""


def border_dir(dataset_dir: Path) -> Path:
    return Path(dataset_dir) / BORDER_DIR


def _read_json_model(path: Path, cls: type[BaseModel], fmt: str, what: str) -> Any:
    if not path.exists():
        raise DatasetError(f"no {what} at {path}")
    try:
        obj = cls.model_validate_json(path.read_bytes())
    except (ValidationError, ValueError) as exc:
        raise DatasetError(f"corrupt {what} {path}: {str(exc).splitlines()[0]}") from None
    found = getattr(obj, "format", None)
    if found != fmt:
        raise DatasetError(f"{path}: unsupported format {found!r} (this hspi reads {fmt})")
    return obj


# --- selection ------------------------------------------------------------------------------------


def save_selection(directory: Path, selection: SelectionFile) -> Path:
    path = Path(directory) / SELECTION_FILE
    write_text_atomic(path, json.dumps(selection.model_dump(mode="json"), indent=1))
    return path


def load_selection(directory: Path) -> SelectionFile:
    return _read_json_model(Path(directory) / SELECTION_FILE, SelectionFile, SELECTION_FORMAT, "border selection")


def selection_sha256(selection: BorderSelection) -> str:
    """SHA-256 of one model's selection (canonical JSON): answers are valid for exactly this one."""
    text = json.dumps(selection.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --- shards ---------------------------------------------------------------------------------------


def content_sha256(answers: TextAnswers) -> str:
    digest = hashlib.sha256()
    digest.update(answers.probe_set.encode())
    for column in (answers.probe_ids, answers.greedy, answers.second):
        digest.update(np.ascontiguousarray(column, dtype="<i4").tobytes())
    digest.update(np.ascontiguousarray(answers.margin, dtype="<f8").tobytes())
    return digest.hexdigest()


def write_answers(directory: Path, model: str, answers: TextAnswers) -> BorderShardRef:
    """Write (once) the shard holding these answers; return its reference.  Atomic."""
    if not np.isfinite(answers.margin).all():
        raise DatasetError(f"refusing to store non-finite margins of {model} ({answers.probe_set})")
    sha = content_sha256(answers)
    path = Path(directory) / "shards" / f"{sha}.parquet"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        table = pa.table(
            {
                "probe_id": pa.array(answers.probe_ids),
                "greedy": pa.array(answers.greedy),
                "second": pa.array(answers.second),
                "margin": pa.array(answers.margin),
            }
        )
        table = table.replace_schema_metadata({"model": model, "probe_set": answers.probe_set, "sha256": sha})
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp, compression="zstd", compression_level=9)
    return BorderShardRef(sha256=sha, n_probes=len(answers))


def read_answers(directory: Path, ref: BorderShardRef) -> TextAnswers:
    path = Path(directory) / "shards" / f"{ref.sha256}.parquet"
    if not path.exists():
        raise DatasetError(f"missing border shard {path}")
    try:
        table = pq.read_table(path)
        meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
        answers = TextAnswers(
            meta["probe_set"],
            table.column("probe_id").to_numpy(),
            table.column("greedy").to_numpy(),
            table.column("second").to_numpy(),
            table.column("margin").to_numpy(),
        )
    except (pa.ArrowException, OSError, KeyError, ValueError, UnicodeDecodeError) as exc:
        raise DatasetError(f"corrupt or truncated border shard {path}: {str(exc).splitlines()[0]}") from None
    if content_sha256(answers) != ref.sha256 or len(answers) != ref.n_probes:
        raise DatasetError(f"corrupt border shard {path}: its content does not match its SHA-256")
    return answers


# --- index ----------------------------------------------------------------------------------------


def load_index(directory: Path) -> BorderIndex:
    return _read_json_model(Path(directory) / INDEX_FILE, BorderIndex, INDEX_FORMAT, "border index")


def save_index(directory: Path, index: BorderIndex) -> None:
    write_text_atomic(Path(directory) / INDEX_FILE, json.dumps(index.model_dump(mode="json"), indent=1, sort_keys=True))


class BorderStore:
    """Read access to a dataset's border directory; shards decoded lazily, hash-checked, cached."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.selection = load_selection(self.directory)
        self.index = load_index(self.directory)
        for model, sha in self.index.selections.items():
            if model not in self.selection.models or selection_sha256(self.selection.models[model]) != sha:
                raise DatasetError(
                    f"{self.directory}: the {model} answers in {INDEX_FILE} answer another "
                    f"{SELECTION_FILE}; collect them again (--restart)"
                )
        self._cache: dict[tuple[str, str, str], TextAnswers] = {}

    @property
    def models(self) -> list[str]:
        """Models with a selection and answers to it."""
        return sorted(m for m in self.selection.models if m in self.index.selections)

    def complete_configs(self, model: str) -> list[str]:
        return [
            cid
            for cid, rec in self.index.configs.items()
            if all(r in rec.runs and model in rec.runs[r].shards for r in RUNS)
        ]

    def answers(self, config_id: str, run: str, model: str) -> TextAnswers:
        key = (config_id, run, model)
        if key not in self._cache:
            try:
                ref = self.index.configs[config_id].runs[run].shards[model]
            except KeyError:
                raise DatasetError(f"{self.directory}: no {run} border answers of {model} for {config_id}") from None
            self._cache[key] = read_answers(self.directory, ref)
        return self._cache[key]

    def validate(self) -> None:
        for cid, record in self.index.configs.items():
            for run, run_record in record.runs.items():
                for model in run_record.shards:
                    self.answers(cid, run, model)

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.directory.rglob("*") if p.is_file())
