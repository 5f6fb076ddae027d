"""Collect the `gpu-default` grid on the device machine and pack it for the trip back.

Runs there under the image's python3 (torch with CUDA preinstalled), with hspi and the few packages
the image lacks installed from wheels carried in `.whl/` (benchmarks/gpu/prepare.sh builds them
here; README.md beside this has the command).  Nothing is fetched.  Within a time budget it runs
`hspi collect`'s engine on the grid, several configurations at once (each in its own fresh
processes on the one GPU), keeps going past a configuration that fails (an SDPA backend this GPU
lacks, say) and starts nothing after the budget; then it writes at most 8 files to --out:

    gpu-grid-summary.json          what ran, where (CUDA provenance), how long, what failed
    gpu-grid.log                   the collection's progress lines
    gpu-dataset.tar.part-NN        the dataset directory as one tar, cut into parts of <= 16 MiB

Join the parts with `cat gpu-dataset.tar.part-* | tar -x` (or `join_parts` below).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

MAX_FILES = 8  # what comes back from the device machine: 8 files...
MAX_FILE_BYTES = 16 * 2**20  # ...of at most 16 MiB each
SIDE_FILES = ("gpu-grid-summary.json", "gpu-grid.log")
MAX_PARTS = MAX_FILES - len(SIDE_FILES)


def tar_bytes(directory: Path, arcname: str) -> bytes:
    """The directory as an uncompressed tar (the shards are zstd Parquet already), members sorted."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(directory.rglob("*")):
            if path.is_file() and "exports" not in path.relative_to(directory).parts:
                tar.add(path, arcname=f"{arcname}/{path.relative_to(directory)}", recursive=False)
    return buffer.getvalue()


def plan_parts(size: int, part_bytes: int = MAX_FILE_BYTES, max_parts: int = MAX_PARTS) -> list[tuple[int, int]]:
    """(start, end) byte ranges cutting `size` bytes into parts; ValueError if more than `max_parts` are needed."""
    if part_bytes < 1:
        raise ValueError(f"part size must be positive, got {part_bytes}")
    ranges = [(start, min(start + part_bytes, size)) for start in range(0, size, part_bytes)] or [(0, 0)]
    if len(ranges) > max_parts:
        raise ValueError(
            f"{size} bytes need {len(ranges)} parts of {part_bytes} bytes; at most {max_parts} come back "
            "(collect fewer models or smaller pools)"
        )
    return ranges


def write_parts(data: bytes, out: Path, stem: str = "gpu-dataset.tar") -> list[Path]:
    paths = []
    for index, (start, end) in enumerate(plan_parts(len(data))):
        path = out / f"{stem}.part-{index:02d}"
        path.write_bytes(data[start:end])
        paths.append(path)
    return paths


def join_parts(paths: list[Path]) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(paths))


def device_facts() -> dict[str, Any]:
    """The CUDA stack as this process sees it (the workers measure their own again, per configuration)."""
    import torch

    from hspi.provenance import cuda_info, library_versions

    facts: dict[str, Any] = {"torch": torch.__version__, "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        torch.ones(8, 8, device="cuda") @ torch.ones(8, 8, device="cuda")  # loads cuBLAS, so its version is read
        facts.update(cuda_info())
    facts["versions"] = library_versions()
    return facts


def summarize(dataset: Path) -> dict[str, Any]:
    """Configurations collected, their labels, and how many distinct output classes each model shows."""
    from hspi.dataset import Dataset
    from hspi.equivalence import equivalence_classes

    ds = Dataset(dataset)
    classes = {}
    for model in ds.models:
        try:
            classes[model] = len(equivalence_classes(ds, model))
        except Exception as exc:  # a partial dataset still comes back; say why its classes are missing
            classes[model] = f"not computed: {type(exc).__name__}: {exc}"
    return {
        "configurations": {cid: rec.labels for cid, rec in ds.manifest.configs.items()},
        "classes_per_model": classes,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="where the (at most 8) files go: $OUT on the device")
    parser.add_argument("--work", type=Path, default=Path("/tmp/hspi-gpu"), help="the dataset directory while running")
    parser.add_argument("--models", default="mlp,cnn,lm-small")
    parser.add_argument("--pool", type=int, default=1000)
    parser.add_argument("--fresh", type=int, default=400)
    parser.add_argument("--replay", type=int, default=300)
    parser.add_argument("--parallel", type=int, default=8, help="configurations at once on the one GPU")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=270,
        help="no configuration starts after this (compiles still running then finish)",
    )
    args = parser.parse_args(argv)

    args.out, args.work = args.out.resolve(), args.work.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    # out of the repository: its hspi/ folder would shadow the installed hspi in the workers' `python -m`
    os.chdir(args.work)
    # several workers compile at once: one inductor compile thread each, not a pool per process
    # (compilation only: the kernels it generates are the same)
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")

    from hspi.collector.collect import collect
    from hspi.errors import HspiError

    dataset = args.work / "gpu-h200"
    log_lines: list[str] = []
    started = time.perf_counter()

    def log(line: str) -> None:
        stamped = f"{time.perf_counter() - started:7.1f}s {line}"
        log_lines.append(stamped)
        print(stamped, flush=True)

    summary: dict[str, Any] = {"grid": "gpu-default", "models": args.models, "parallel": args.parallel}
    summary["device"] = device_facts()
    log(f"device: {summary['device'].get('gpu_name')} torch {summary['device']['torch']}")
    error = None
    try:
        collect(
            "gpu-default",
            args.models,
            dataset,
            pool=args.pool,
            fresh=args.fresh,
            replay=args.replay,
            parallel=args.parallel,
            keep_going=True,
            stop_after_s=args.budget_s,
            on_progress=lambda config, done, total: log(f"{done}/{total} {config}"),
        )
    except HspiError as exc:  # failed configurations are named; the finished ones are in the manifest
        error = str(exc)
        log(f"error: {error}")
    summary["collect_error"] = error
    summary["seconds_collecting"] = round(time.perf_counter() - started, 1)
    if (dataset / "dataset.json").exists():
        summary.update(summarize(dataset))
        data = tar_bytes(dataset, dataset.name)
        try:
            summary["parts"] = [p.name for p in write_parts(data, args.out)]
        except ValueError as exc:
            summary["parts"] = []
            summary["packing_error"] = str(exc)
        summary["tar_bytes"] = len(data)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    (args.out / "gpu-grid-summary.json").write_text(json.dumps(summary, indent=1, default=str), encoding="utf-8")
    (args.out / "gpu-grid.log").write_text("\n".join(log_lines) + "\n", encoding="utf-8")
    return 0 if error is None and summary.get("parts") else 1


if __name__ == "__main__":
    sys.exit(main())
