"""JAX/XLA beside torch on this CPU: same weights, other kernels (engine `jax`, collector/jax_models.py).

    python benchmarks/jax_engine.py [--work DIR]   # writes results/jax-cpu.json

1. `hspi collect` (fresh worker processes, as every collection) of the `cpu-jax` grid and torch
   eager's fp32 / bf16 / fp16 on this machine, for mlp, cnn and lm-small, into --work (default
   /tmp/hspi-jax; never in the repository).
2. Per model and dtype, JAX against torch on the 1,000 pool probes: the share of probes whose
   outputs are bit-identical, the largest difference relative to the largest output, and the share
   whose top output agrees; and the equivalence classes (does JAX form classes of its own?).
3. `hspi target serve --platform cpu:native/fp32/jax` audited with the shipped references and
   classifier (lm-small, topk20, default settings, 5 seeds): JAX was never collected there, so the
   honest verdict is `unknown-platform`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MODELS = ("mlp", "cnn", "lm-small")
DTYPES = ("fp32", "bf16", "fp16")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/hspi-jax"))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS / "jax-cpu.json")
    args = parser.parse_args()

    from hspi.audit import AuditSettings, run_audit
    from hspi.audit.endpoint_evaluation import served_target, warm_up
    from hspi.collector.grid import grid_platforms
    from hspi.dataset import Dataset
    from hspi.equivalence import equivalence_classes
    from hspi.provenance import cpu_info

    started = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    grid = args.work / "grid.yaml"
    torch_ids = [f"cpu:native/{d}/torch-eager" for d in DTYPES]
    jax_ids = [p.id for p in grid_platforms("cpu-jax")]
    grid.write_text("platforms:\n" + "".join(f"  - {i}\n" for i in torch_ids + jax_ids), encoding="utf-8")
    dataset_dir = args.work / "dataset"
    collect_started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "hspi", "collect", "--grid", str(grid), "--models", ",".join(MODELS)]
        + ["--out", str(dataset_dir)],
        check=True,
    )
    collect_seconds = time.perf_counter() - collect_started
    ds = Dataset(dataset_dir)

    comparisons = []
    for model in MODELS:
        for dtype in DTYPES:
            a = ds.responses(f"cpu:native/{dtype}/torch-eager", "reference", model)
            b = ds.responses(f"cpu:native/{dtype}/jax", "reference", model)
            assert (a.probe_ids == b.probe_ids).all()
            x, y = a.as_float32(), b.as_float32()
            comparisons.append(
                {
                    "model": model,
                    "dtype": dtype,
                    "probes": int(len(a.probe_ids)),
                    "bit_identical_share": round(float((x == y).all(axis=1).mean()), 4),
                    "max_abs_diff_relative": float(np.abs(x - y).max() / np.abs(x).max()),
                    "top_output_agrees_share": round(float((x.argmax(1) == y.argmax(1)).mean()), 4),
                }
            )
            print(json.dumps(comparisons[-1]), flush=True)
        bs8 = ds.responses("cpu:native/fp32/jax/bs=8", "reference", model).as_float32()
        bs1 = ds.responses("cpu:native/fp32/jax", "reference", model).as_float32()
        comparisons.append(
            {
                "model": model,
                "dtype": "fp32",
                "versus": "jax bs=8 against jax bs=1",
                "bit_identical_share": round(float((bs8 == bs1).all(axis=1).mean()), 4),
            }
        )
    classes = {
        model: [{"name": c.name, "members": list(c.members)} for c in equivalence_classes(ds, model)]
        for model in MODELS
    }

    audits = []
    with served_target("lm-small", "cpu:native/fp32/jax") as url:
        warm_up(url, "lm-small")
        for seed in range(args.seeds):
            report = run_audit(AuditSettings(endpoint=url, model="lm-small", max_tier="topk20", seed=seed))
            audits.append(
                {
                    "seed": seed,
                    "verdict": str(report.verdict),
                    "stop": str(report.stop),
                    "queries": report.queries,
                    "determinism": None if report.determinism is None else report.determinism.verdict,
                }
            )
    cpu = cpu_info()
    result = {
        "benchmark": "jax-cpu",
        "machine": {
            "cpu_model": cpu.get("cpu_model"),
            "avx512": any("avx512" in f for f in cpu.get("cpu_flags", [])),
        },
        "versions": {k: v for k, v in _versions().items()},
        "configurations": torch_ids + jax_ids,
        "collect_seconds": round(collect_seconds, 1),
        "jax_against_torch": comparisons,
        "classes": classes,
        "audit_of_jax_fp32_with_the_shipped_references": {
            "tier": "topk20",
            "audits": len(audits),
            "verdicts": dict(Counter(a["verdict"] for a in audits)),
            "rows": audits,
        },
        "seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


def _versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name in ("torch", "jax", "jaxlib", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


if __name__ == "__main__":
    main()
