"""Two real CPUs, one dataset: the hardware head across vendors on datasets/cpu-amd-epyc merged with
../shared/datasets/cpu-intel-xeon (the same grid, models and probe ids, collected on an Intel Xeon).

    python benchmarks/two_vendors.py [--merged DIR]   # writes results/cpu-two-vendors.json and .png

The merge (`hspi dataset merge`, ~150 MB of shards) goes to --merged (default: a temporary directory,
deleted afterwards); it is never written into the repository.  Hardware labels in the merge come from
each configuration's measured provenance (vendor, model, ISA): 'amd-epyc-x86-...', 'intel-xeon-x86-...';
a class whose outputs are identical on both CPUs carries both.

Method (restricted on purpose: 2 shared cores): reference matching by bit identity, the evaluation's
`exact-match` rule.  Targets are every configuration's `replay` run (an independent process) on the
held-out test probes of the evaluation's replay split (`split_replay`: never used to train or calibrate
anything); an audit of q probes picks the classes whose stored pool answer is bit-identical to the
target's on the most of its q probes, and answers the vendors those classes were measured on and the
hardware label of the first of them.  Audits are consecutive groups of q probes of
AUDIT_ORDERS seeded permutations of the test probes.  Tiers: `logits` (the full vector) and `topk20`
(what an OpenAI-style API returns).  No LightGBM head is trained here: on these classes bit identity is
what any reference-match head sees first, and the trained heads are measured by `hspi evaluate`.

Per configuration family (fp32 torch, bf16, fp16, int8-dyn, ONNX Runtime) and q = 1, 4, 16:
- vendor_separated: among audits of configurations whose class is vendor-specific, the share whose
  answer is exactly the true vendor;
- vendor_wrong: the share naming only the other vendor (or nothing);
- hardware_accuracy: over every configuration's audits, the share whose hardware label equals the truth
  (for a shared class the truth carries both vendors).
"""

from __future__ import annotations

import argparse
import json
import platform as pyplatform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
AMD = ROOT / "datasets" / "cpu-amd-epyc"
INTEL = ROOT.parent / "shared" / "datasets" / "cpu-intel-xeon"
RESULTS = ROOT / "benchmarks" / "results"
QUERIES = (1, 4, 16)
TIERS = ("logits", "topk20")
AUDIT_ORDERS = 20  # seeded permutations of the test probes; each cut into audits of q probes
FAMILIES = ("fp32", "bf16", "fp16", "int8", "onnx")


def family(platform: Any) -> str:
    engine, dtype = platform.engine, platform.dtype
    if engine.startswith("onnxruntime"):
        return "onnx"
    return "int8" if dtype == "int8-dyn" else str(dtype)


def bare_id(cid: str) -> str:
    """The configuration id without the merge's source prefix ('cpu-intel-xeon:cpu:amx/...' -> 'cpu:amx/...')."""
    head, _, rest = cid.partition(":")
    return rest if rest.startswith("cpu:") else cid


def hits_per_probe(data: Any, tier: str, cid: str, rows: np.ndarray) -> np.ndarray:
    """(len(rows), C): whether the config's replayed answer is bit-identical to each class's reference."""
    from hspi.features.tiers import tier_view

    view = tier_view(data.replay[cid][rows], tier)
    probe_ids = data.replay_ids[rows]
    hits = np.zeros((len(rows), len(data.classes)), dtype=bool)
    for c in range(len(data.classes)):
        ref = tier_view(data.reference[c][data.rows(probe_ids)], tier)
        hits[:, c] = (view.ids == ref.ids).all(axis=1) & (
            view.values.view(np.uint32) == ref.values.view(np.uint32)
        ).all(axis=1)
    return hits


def evaluate_model(ds: Any, model: str) -> tuple[list[dict], dict]:
    from hspi.classifier.training_data import load_model_data, split_replay
    from hspi.equivalence import measured_vendors

    data = load_model_data(ds, model)
    class_vendors = [set(measured_vendors(ds, cls.members)) for cls in data.classes]
    classes = [
        {
            "class": cls.name,
            "members": list(cls.members),
            "hardware": cls.labels["hardware"],
            "vendors": sorted(class_vendors[i]),
            "shared_across_vendors": len(class_vendors[i]) > 1,
        }
        for i, cls in enumerate(data.classes)
    ]
    _, _, test = split_replay(len(data.replay_ids))
    rows = []
    for tier in TIERS:
        # per config: its vendor, family, class and the (test probes, classes) bit-identity table
        per_config = {}
        for cid in data.replay:
            provenance = ds.manifest.configs[cid].runs["reference"].provenance
            per_config[cid] = (
                str(provenance.get("cpu_vendor")),
                family(ds.manifest.configs[cid].platform),
                data.class_of[cid],
                hits_per_probe(data, tier, cid, test),
            )
        for q in QUERIES:
            tally: dict[str, dict[str, float]] = {
                f: dict.fromkeys(("audits", "specific_audits", "separated", "wrong", "both", "hw_correct"), 0)
                for f in FAMILIES
            }
            configs: dict[str, set[str]] = {f: set() for f in FAMILIES}
            for cid, (vendor, fam, own, hits) in per_config.items():
                configs[fam].add(cid)
                truth_hw = data.classes[own].labels["hardware"]
                specific = len(class_vendors[own]) == 1
                for order in range(AUDIT_ORDERS if q > 1 else 1):  # single probes: one order covers them
                    perm = np.random.default_rng(1000 * order + q).permutation(len(test))
                    for start in range(0, len(test) - q + 1, q):
                        votes = hits[perm[start : start + q]].sum(axis=0)
                        t = tally[fam]
                        t["audits"] += 1
                        best = np.flatnonzero(votes == votes.max()) if votes.max() > 0 else np.zeros(0, dtype=int)
                        answered = set().union(*(class_vendors[c] for c in best)) if len(best) else set()
                        if len(best) and data.classes[int(best[0])].labels["hardware"] == truth_hw:
                            t["hw_correct"] += 1
                        if specific:
                            t["specific_audits"] += 1
                            t["separated"] += answered == {vendor}
                            t["wrong"] += vendor not in answered
                            t["both"] += len(answered) > 1
            for fam in FAMILIES:
                t = tally[fam]
                if not t["audits"]:
                    continue
                specific_configs = sorted(c for c in configs[fam] if len(class_vendors[per_config[c][2]]) == 1)
                rows.append(
                    {
                        "model": model,
                        "tier": tier,
                        "family": fam,
                        "queries": q,
                        "configs": len(configs[fam]),
                        "vendor_specific_configs": len(specific_configs),
                        "audits": int(t["audits"]),
                        "vendor_separated": round(t["separated"] / t["specific_audits"], 4)
                        if t["specific_audits"]
                        else None,
                        "vendor_both": round(t["both"] / t["specific_audits"], 4) if t["specific_audits"] else None,
                        "vendor_wrong": round(t["wrong"] / t["specific_audits"], 4) if t["specific_audits"] else None,
                        "hardware_accuracy": round(t["hw_correct"] / t["audits"], 4),
                    }
                )
    return rows, {"classes": classes, "test_probes": len(test), "replay_probes": len(data.replay_ids)}


def separating_configs(ds: Any, models: list[str]) -> dict[str, dict[str, bool]]:
    """Per configuration id (as named on both CPUs), per model: whether AMD and Intel fall in different classes."""
    from hspi.equivalence import equivalence_classes

    out: dict[str, dict[str, bool]] = {}
    for model in models:
        class_of = {c: cls.name for cls in equivalence_classes(ds, model) for c in cls.members}
        by_bare: dict[str, list[str]] = {}
        for cid in class_of:
            by_bare.setdefault(bare_id(cid), []).append(cid)
        for bare, cids in by_bare.items():
            if len(cids) == 2:
                out.setdefault(bare, {})[model] = class_of[cids[0]] != class_of[cids[1]]
    return dict(sorted(out.items()))


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = result["models"]
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.4), sharey=True)
    for ax, model in zip(np.atleast_1d(axes), models):
        width = 0.26
        for k, q in enumerate(QUERIES):
            values = []
            for fam in FAMILIES:
                row = next(
                    (
                        r
                        for r in result["results"]
                        if r["model"] == model and r["tier"] == "logits" and r["family"] == fam and r["queries"] == q
                    ),
                    None,
                )
                values.append(row["vendor_separated"] if row and row["vendor_separated"] is not None else np.nan)
            x = np.arange(len(FAMILIES)) + (k - 1) * width
            ax.bar(x, values, width, label=f"{q} quer{'y' if q == 1 else 'ies'}")
            for xi, v in zip(x, values):
                if v == 0:
                    ax.text(xi, 0.01, "0", ha="center", fontsize=6)
        for i, fam in enumerate(FAMILIES):
            if not any(
                r["vendor_specific_configs"] for r in result["results"] if r["model"] == model and r["family"] == fam
            ):
                ax.text(i, 0.05, "all\nshared", ha="center", fontsize=7)
        ax.set_xticks(np.arange(len(FAMILIES)), FAMILIES)
        ax.set_title(model)
        ax.set_ylim(0, 1.05)
    np.atleast_1d(axes)[0].set_ylabel("vendor separated (logits tier)")
    handles, labels = np.atleast_1d(axes)[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="upper right", ncol=3)
    fig.suptitle(
        "AMD EPYC vs Intel Xeon: audits naming the true vendor only (vendor-specific classes)", fontsize=9, x=0.3
    )
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--merged", type=Path, help="where to merge (outside the repository); reused if present")
    parser.add_argument("--out", type=Path, default=RESULTS / "cpu-two-vendors.json")
    args = parser.parse_args(argv)
    if not (INTEL / "dataset.json").is_file():
        print(f"two_vendors: the Intel Xeon dataset is absent: {INTEL} has no dataset.json", file=sys.stderr)
        return 2
    from hspi.dataset import Dataset
    from hspi.dataset_merge import merge
    from hspi.equivalence import joint_classes, measured_on, measured_vendors

    started = time.perf_counter()
    scratch = None
    merged = args.merged
    if merged is None:
        scratch = Path(tempfile.mkdtemp(prefix="hspi-two-vendors-"))
        merged = scratch / "cpu-two-vendors"
    try:
        if not (merged / "dataset.json").is_file():
            merge(merged, [AMD, INTEL])
        ds = Dataset(merged)
        models = list(ds.models)
        joint = [
            {
                "class": cls.name,
                "members": list(cls.members),
                "hardware": cls.labels["hardware"],
                "measured_on": measured_on(ds, cls.members),
                "shared_across_vendors": len(measured_vendors(ds, cls.members)) > 1,
            }
            for cls in joint_classes(ds)
        ]
        results, per_model = [], {}
        for model in models:
            rows, info = evaluate_model(ds, model)
            results += rows
            per_model[model] = {
                **info,
                "classes_total": len(info["classes"]),
                "classes_shared": sum(c["shared_across_vendors"] for c in info["classes"]),
            }
            print(f"{model}: {len(info['classes'])} classes, {per_model[model]['classes_shared']} shared", flush=True)
        separating = separating_configs(ds, models)
        result = {
            "benchmark": "two-vendors",
            "datasets": ["datasets/cpu-amd-epyc", "../shared/datasets/cpu-intel-xeon"],
            "merged_configurations": len(ds.manifest.configs),
            "measured_cpus": sorted({m for c in ds.manifest.configs for m in measured_on(ds, [c])}),
            "method": "exact-match (bit identity against the stored pool answers of each class), replay targets",
            "restricted": "no trained LightGBM head; tiers logits and topk20 only (2 shared CPU cores)",
            "split": "test probes of split_replay (seed 11), never trained or calibrated on",
            "audit_orders": AUDIT_ORDERS,
            "queries": list(QUERIES),
            "tiers": list(TIERS),
            "families": list(FAMILIES),
            "models": models,
            "per_model": per_model,
            "joint_classes": {
                "total": len(joint),
                "shared_across_vendors": sum(c["shared_across_vendors"] for c in joint),
                "classes": joint,
            },
            "separates_vendors": separating,
            "results": results,
            "host": {"machine": pyplatform.machine(), "python": pyplatform.python_version()},
            "wall_seconds": round(time.perf_counter() - started, 1),
        }
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    plot(result, args.out.with_suffix(".png"))
    print(f"written {args.out} and {args.out.with_suffix('.png')} in {result['wall_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
