"""The trained heads on two real CPUs: `hspi evaluate` on datasets/cpu-amd-epyc merged with
../shared/datasets/cpu-intel-xeon (the same grid, models and probe ids, collected on an Intel Xeon).

    python benchmarks/two_vendors_evaluate.py [--merged DIR]   # writes results/cpu-two-vendors-evaluate.json

`benchmarks/two_vendors.py` reads the merge by bit identity; this runs the evaluation every dataset gets
(`hspi evaluate`: LightGBM and the other methods, every split, the logits and top-k tiers, without the
open-set pass, which the 2 shared cores cannot afford beside it), so its hardware head is trained on
labels that carry the vendor and the measured model ('amd-epyc-x86-...', 'intel-xeon-x86-...'; a class
identical on both CPUs carries both).  The merge (~150 MB) goes to --merged (default: a temporary
directory), never into the repository.  The JSON keeps the evaluation's rows and, apart, its
hardware-head rows, with the hardware labels the merge holds per model.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
AMD = ROOT / "datasets" / "cpu-amd-epyc"
INTEL = ROOT.parent / "shared" / "datasets" / "cpu-intel-xeon"
RESULTS = ROOT / "benchmarks" / "results"
TIERS = "logits,topk20,topk5,top1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--merged", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS / "cpu-two-vendors-evaluate.json")
    args = parser.parse_args()
    temporary = args.merged is None
    merged = Path(tempfile.mkdtemp(prefix="hspi-merged-")) / "merged" if temporary else args.merged
    started = time.perf_counter()
    try:
        if not (merged / "dataset.json").is_file():
            subprocess.run(
                [sys.executable, "-m", "hspi", "dataset", "merge", str(merged), str(AMD), str(INTEL)], check=True
            )
        evaluation = merged.parent / "evaluate.json"
        subprocess.run(
            [sys.executable, "-m", "hspi", "evaluate", "--dataset", str(merged), "--json", str(evaluation)]
            + ["--tiers", TIERS, "--no-open-set"],
            check=True,
        )
        measured = json.loads(evaluation.read_text(encoding="utf-8"))
        labels = hardware_labels(merged)
    finally:
        if temporary:
            shutil.rmtree(merged.parent, ignore_errors=True)
    rows = measured["results"]
    result = {
        "benchmark": "cpu-two-vendors-evaluate",
        "datasets": [str(AMD.relative_to(ROOT)), "../shared/datasets/cpu-intel-xeon"],
        "tiers": TIERS.split(","),
        "open_set": False,
        "n_classes": measured.get("n_classes"),
        "hardware_labels": labels,
        "hardware_rows": [r for r in rows if r.get("head") == "hardware"],
        "results": rows,
        "evaluate_seconds": measured.get("seconds"),
        "seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


def hardware_labels(merged: Path) -> dict[str, dict[str, int]]:
    """Per model: each hardware label in the merge and how many configurations carry it."""
    from collections import Counter

    from hspi.dataset import Dataset

    ds = Dataset(merged)
    out: dict[str, dict[str, int]] = {}
    for model in ("mlp", "cnn", "lm-small"):
        counts = Counter(
            record.labels.get("hardware", "")
            for record in ds.manifest.configs.values()
            if any(model in run.shards for run in record.runs.values())
        )
        out[model] = dict(sorted(counts.items()))
    return out


if __name__ == "__main__":
    main()
