"""Identify the platform while the endpoint batches: `hspi target serve --dynamic-batching` under load.

    python benchmarks/batching.py [--work DIR] [--seeds 3]   # writes results/batching.json and .png

References must come from the machine the audited servers run on (fp32 through MKL gives other bits
on another CPU), so the script builds them here, each step resumable, in --work (default
/tmp/hspi-batching; never in the repository):

1. `hspi collect --grid benchmarks/batching-grid.yaml --models lm-small` (the `cpu-default`
   configurations that run on any x86-64 CPU: the native profile, AVX2 and SSE4.2 caps);
2. `hspi dataset collect-batched` (200 pool probes outside the replay run, in batches of 1..8);
3. `hspi train` at the top-20 tier.

Then every class is served by `hspi target serve` in its own process, statically and with dynamic
batching while 3 background clients send strangers' prompts (fresh probes), and audited with seeds
0..seeds-1 at `topk20`, each audit with and without the answers under batching (the same server, so
the two readings see the same load).  Budgets 1, 4, 16: the decision an audit held after at most b
queries.  Under batching the full head is scored up to the static batch size: a dynamic batcher has
none, so `bs=8` and its batch-size-1 twin are one server (`audit.endpoint_evaluation.head_right`).

Also measured from the dataset: how many distinct answers a probe has across batch sizes, per
platform, and what the answers under batching cost in storage.
"""

from __future__ import annotations

import argparse
import json
import platform as pyplatform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
GRID = ROOT / "benchmarks" / "batching-grid.yaml"
MODEL = "lm-small"
BUDGETS = (1, 4, 16)


def hspi(*args: str) -> None:
    started = time.perf_counter()
    print("hspi", *args, flush=True)
    subprocess.run([sys.executable, "-m", "hspi", *args], check=True)
    print(f"  {time.perf_counter() - started:.0f} s", flush=True)


def distinct_answers(dataset: Path) -> tuple[list[dict], dict]:
    """Per configuration with answers under batching: distinct answers per probe, and the storage."""
    from hspi.dataset import BATCHED_RUN, Dataset

    ds = Dataset(dataset)
    rows, shards, masks = [], set(), 0
    for cid, record in ds.manifest.configs.items():
        run = record.runs.get(BATCHED_RUN)
        if run is None or MODEL not in run.shards:
            continue
        got = ds.responses(cid, BATCHED_RUN, MODEL)
        ids, counts = np.unique(got.probe_ids, return_counts=True)
        single = [m for m in run.answer_sizes[MODEL] if m & 1]
        alone_only = sum(1 for m in single if m == 1)  # probes whose size-1 answer no other size gives
        rows.append(
            {
                "config": cid,
                "probes": int(len(ids)),
                "distinct_mean": round(float(counts.mean()), 3),
                "distinct_max": int(counts.max()),
                "share_varying": round(float((counts > 1).mean()), 4),
                "share_alone_differs": round(alone_only / len(ids), 4),
                # probes answered again beside other batch-mates, and how many answers changed
                "batch_mates": dict(run.batch_mates.get(MODEL, {})),
            }
        )
        shards.add(run.shards[MODEL].shard)
        masks += len(run.answer_sizes[MODEL])
    size = sum((dataset / "shards" / f"{s}.parquet").stat().st_size for s in shards)
    return rows, {"shard_bytes": size, "distinct_shards": len(shards), "mask_entries": masks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/hspi-batching"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--only", nargs="*", default=None, help="class names to serve (default: all)")
    parser.add_argument("--out", type=Path, default=RESULTS / "batching.json")
    args = parser.parse_args()
    dataset, classifier = args.work / "dataset", args.work / "classifier"
    started = time.perf_counter()
    hspi("collect", "--grid", str(GRID), "--models", MODEL, "--out", str(dataset))
    hspi("dataset", "collect-batched", str(dataset), "--model", MODEL, "--probes", "200", "--max-batch", "8")
    if not (classifier / MODEL / "topk20" / "reference.json").is_file():
        hspi("train", "--dataset", str(dataset), "--out", str(classifier), "--tiers", "topk20")
    prepared = time.perf_counter() - started

    from hspi.audit.endpoint_evaluation import evaluate_endpoints, leave_class_out
    from hspi.provenance import cpu_info

    measured = evaluate_endpoints(
        dataset,
        classifier,
        MODEL,
        tiers=("topk20",),
        batching=(False, True),
        batching_tiers=("topk20",),
        seeds=args.seeds,
        budgets=BUDGETS,
        only=args.only,
        background_clients=args.clients,
        reference_modes=(True, False),
        leave_out=lambda cls: leave_class_out(dataset, cls, args.work / "leave-out"),
        log=lambda line: print(line, flush=True),
    )
    distinct, storage = distinct_answers(dataset)
    varying = {d["config"] for d in distinct if d["share_varying"] > 0}
    cpu = cpu_info()
    result = {
        "benchmark": "batching",
        "model": MODEL,
        "machine": {
            "cpu_model": cpu.get("cpu_model"),
            "cpu_vendor": cpu.get("cpu_vendor"),
            "avx512": any("avx512" in f for f in cpu.get("cpu_flags", [])),
            "python": pyplatform.python_version(),
        },
        "grid": GRID.name,
        "budgets": list(BUDGETS),
        "seeds": args.seeds,
        "background_clients": args.clients,
        "results": measured["rows"],
        "batching_readings": measured["batching_readings"],
        "endpoint_timing": measured["timing"],
        "endpoint_failures": measured["failures"],
        "open_set": measured["open_set"],
        "open_set_auroc": open_set_auroc(measured["open_set"]),
        "batching_reading_on_batch_variant_classes": variant_readings(measured["batching_readings"], dataset, varying),
        "distinct_answers": distinct,
        "storage": storage,
        "seconds_prepare": round(prepared, 1),
        "seconds_total": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    plot(result, args.out.with_suffix(".png"))
    print(f"wrote {args.out}")


def open_set_auroc(rows: list[dict]) -> list[dict]:
    """Per mode and left-out class: AUROC of the final log e-value, the class's server audited against
    references without it (unseen) against every audit of a known class in that mode (seen)."""
    from sklearn.metrics import roc_auc_score

    def score(v: float | None) -> float:
        return -1e9 if v is None else v

    out = []
    for batching in (False, True):
        mine = [r for r in rows if r["batching"] == batching]
        known = [score(r["known_log_evalue"]) for r in mine]
        for name in sorted({r["class"] for r in mine}):
            unseen = [score(r["unseen_log_evalue"]) for r in mine if r["class"] == name]
            labels = [1] * len(known) + [0] * len(unseen)
            out.append(
                {
                    "batching": batching,
                    "left_out": name,
                    "auroc": round(float(roc_auc_score(labels, known + unseen)), 4),
                    "unseen_named_a_platform": sum(r["unseen_status"] == "match" for r in mine if r["class"] == name),
                    "n_unseen": len(unseen),
                    "n_known": len(known),
                }
            )
    return out


def variant_readings(rows: list[dict], dataset: Path, varying: set[str]) -> list[dict]:
    """The audits' batching reading, on the classes whose answers change with the batch size only (the
    others cannot show batching): observed under batching, not observed without."""
    from hspi.dataset import Dataset
    from hspi.equivalence import equivalence_classes

    classes = {c.name: c for c in equivalence_classes(Dataset(dataset), MODEL)}
    out = []
    for row in rows:
        if not row["batched_references"]:
            continue
        counts: dict[str, int] = {}
        for name, readings in row["per_class"].items():
            if set(classes[name].members) & varying:
                for state, n in readings.items():
                    counts[state] = counts.get(state, 0) + n
        want = "observed" if row["batching"] else "not observed"
        total = sum(counts.values())
        out.append(
            {
                "batching": row["batching"],
                "readings": counts,
                "accuracy": round(counts.get(want, 0) / total, 4) if total else None,
                "n_test": total,
            }
        )
    return out


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, batching in zip(axes, (False, True)):
        for refs, style in ((True, "-"), (False, ":")):
            for head, marker in (("full", "o"), ("dtype", "s")):
                pts = sorted(
                    (r["queries"], r["accuracy"])
                    for r in result["results"]
                    if r["batching"] == batching and r["batched_references"] == refs and r["head"] == head
                )
                if pts:
                    label = f"{head}, {'with' if refs else 'without'} answers under batching"
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker=marker, label=label)
        ax.set_xscale("log", base=2)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("budget (queries)")
        server = result.get("server", "dynamic batching")  # llama_server_batching.py names its server
        ax.set_title(
            f"{result['model']} {result.get('tier', 'topk20')}, "
            + (f"{server}, {result['background_clients']} background clients" if batching else "no batching"),
            fontsize=9,
        )
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("audits right")
    axes[1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
