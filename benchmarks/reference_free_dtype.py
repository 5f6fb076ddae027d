"""Reference-free dtype of a registered model with no references collected: audits of live endpoints.

    python benchmarks/reference_free_dtype.py     # writes results/reference-free-dtype.json

The model is the family of `byo_model.py` (made here from the same seed and shape, registered under
a temporary HSPI_HOME, never collected).  Each dtype of the torch grid is served by `hspi target
serve` on 127.0.0.1; AUDITS audits per dtype and tier (other seeds: other fresh probes), budget
BUDGET queries.  An audit is right when its dtype head is decided and names the served dtype;
"undecided" is not right.  Rows follow the evaluation contract with `"head": "dtype"`,
`"method": "logit-precision"` and `"model_kind": "byo"`.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.byo_model import FAMILY, make_models  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
DTYPES = ("fp32", "bf16", "fp16")
TIERS = ("topk20", "topk5")
AUDITS = 24
BUDGET = 4


def main() -> None:
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="hspi-reference-free-"))
    os.environ["HSPI_HOME"] = str(work / "home")
    from hspi.audit import AuditSettings, run_audit
    from hspi.audit.endpoint_evaluation import served_target
    from hspi.collector.registry import ModelRegistry
    from hspi.terms import Tier

    models = make_models(work / "models")
    card, _ = ModelRegistry().add("bench-qwen", hf=models["bench-qwen"])
    rows, confusions = [], {}
    for dtype in DTYPES:
        with served_target("bench-qwen", f"cpu:native/{dtype}/torch-eager") as url:
            for tier in TIERS:
                readings = []
                for seed in range(AUDITS):
                    report = run_audit(
                        AuditSettings(
                            endpoint=url,
                            model="bench-qwen",
                            budget_queries=BUDGET,
                            max_tier=Tier(tier),
                            seed=seed,
                            timeout_s=30.0,
                            dataset=work / "no-dataset",
                        )
                    )
                    head = report.heads["dtype"]
                    readings.append((head.guesses[0].label if head.decided and head.guesses else "undecided", report))
                right = [label == dtype for label, _ in readings]
                confusions[f"{dtype}/{tier}"] = {
                    label: sum(1 for other, _ in readings if other == label) for label in {lbl for lbl, _ in readings}
                }
                rows.append(
                    {
                        "split": "endpoint",
                        "model_kind": "byo",
                        "model": "bench-qwen",
                        "references": "none",
                        "target": "hf-server",
                        "api": "completions",
                        "served_dtype": dtype,
                        "tier": tier,
                        "head": "dtype",
                        "method": "logit-precision",
                        "queries": BUDGET,
                        "accuracy": round(sum(right) / len(right), 4),
                        "n_test": len(right),
                        "queries_mean": round(sum(r.queries for _, r in readings) / len(readings), 2),
                    }
                )
                print(dtype, tier, rows[-1]["accuracy"], confusions[f"{dtype}/{tier}"], flush=True)
    result = {
        "benchmark": "reference-free-dtype",
        "machine": "this 2-core development machine (shared with other sessions while it ran)",
        "model_family": {**FAMILY, "weights_sha256": card.weights_sha256, "made_by": "benchmarks/byo_model.py"},
        "budget": BUDGET,
        "results": rows,
        "confusions": confusions,
        "seconds": round(time.perf_counter() - started, 1),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "reference-free-dtype.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
