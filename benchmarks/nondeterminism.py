"""Endpoints whose answers vary from call to call: what the default audit says (audit.repeat_check).

    python benchmarks/nondeterminism.py [--seeds 10]   # writes results/nondeterminism.json

Every server is a real `hspi target serve` process on loopback, audited with the shipped dataset
and classifier (`lm-small`, default settings, budget 64) at each tier listed, once per seed:

- stable, collected: an fp32 platform whose answers on this machine are a collected configuration's
  (found by the reproduction check, as the tests find it);
- stable, never collected: the same platform with its logits divided by 1.5 before the softmax
  (a post-processing server), or rounded through torch's float8 e4m3 (a server with fp8 logits);
- a sampler: the same platform sampling at temperature 1.0 whatever the request asks (fresh
  entropy per server), as is, and with its logits divided by 1.5 (flatter) or 0.5 (sharper) so that
  no value fits;
- batch-mates: dynamic int8 (its activation scale is the whole batch's) and fp32 under
  `--dynamic-batching` with 3 background clients sending strangers' prompts, audited with the dataset's
  answers under batching (`hspi dataset collect-batched`, where it has them) and without
  (`batched_references: false`: the stored answers only).

Reported per row: the verdicts, the repeat check's readings, how many audits asked it, queries
spent (mean, max), and how many audits named a platform (identified, or a matched class).
"""

from __future__ import annotations

import argparse
import json
import platform as pyplatform
import time
from collections import Counter
from contextlib import nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MODEL = "lm-small"
BUDGET = 64


def servers(stable: str) -> list[dict]:
    return [
        {"server": "stable, collected", "platform": stable, "args": [], "tiers": ["topk20", "top1", "text"]},
        {
            "server": "stable, never collected (logits / 1.5)",
            "platform": stable,
            "args": ["--temperature-before-softmax", "1.5"],
            "tiers": ["topk20", "top1"],
        },
        {
            "server": "stable, never collected (logits rounded to fp8-e4m3)",
            "platform": stable,
            "args": ["--logits-dtype", "fp8-e4m3"],
            "tiers": ["topk20"],
        },
        {
            "server": "sampler, temperature 1.0",
            "platform": stable,
            "args": ["--sampling-temperature", "1.0"],
            "tiers": ["topk20", "top1", "text"],
        },
        {
            "server": "sampler, temperature 1.0, logits / 1.5",
            "platform": stable,
            "args": ["--sampling-temperature", "1.0", "--temperature-before-softmax", "1.5"],
            "tiers": ["top1", "text"],
        },
        {
            "server": "sampler, temperature 1.0, logits / 0.5",
            "platform": stable,
            "args": ["--sampling-temperature", "1.0", "--temperature-before-softmax", "0.5"],
            "tiers": ["top1"],
        },
        {
            "server": "dynamic int8 under dynamic batching, 3 background clients",
            "platform": "cpu:native/int8-dyn/torch-eager/qengine=x86",
            "args": [],
            "dynamic": True,
            "tiers": ["topk20"],
        },
        {
            "server": "fp32 under dynamic batching, 3 background clients",
            "platform": "cpu:native/fp32/torch-eager",
            "args": [],
            "dynamic": True,
            "tiers": ["topk20"],
        },
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--out", type=Path, default=RESULTS / "nondeterminism.json")
    args = parser.parse_args()

    from hspi.audit import AuditSettings, run_audit
    from hspi.audit.determinism import GREEDY_SLACK
    from hspi.audit.endpoint_evaluation import background_load, served_target, warm_up
    from hspi.audit.references import ReferenceStore
    from hspi.audit.repeat_check import REPEATS
    from hspi.collector.reproduction import first_identified
    from hspi.dataset import BATCHED_RUN, Dataset
    from hspi.provenance import cpu_info
    from hspi.shipped import CPU_DATASET

    started = time.perf_counter()
    stable, stable_as = first_identified(
        Dataset(CPU_DATASET), (MODEL,), ("cpu:native/fp32/torch-eager", "cpu:native/fp32/torch-eager/attn=manual")
    )
    store = ReferenceStore()
    rows = []
    for spec in servers(stable):
        dynamic = bool(spec.get("dynamic"))
        with served_target(MODEL, spec["platform"], dynamic_batching=dynamic, extra_args=tuple(spec["args"])) as url:
            warm_up(url, MODEL)
            with background_load(url, MODEL, 3) if dynamic else nullcontext():
                # under batching, also without the dataset's answers under batching: what the sets change
                for tier, batched_refs in [
                    (t, b) for t in spec["tiers"] for b in ((True, False) if dynamic else (True,))
                ]:
                    reports = []
                    for seed in range(args.seeds):
                        settings = AuditSettings(
                            endpoint=url,
                            model=MODEL,
                            max_tier=tier,
                            budget_queries=BUDGET,
                            seed=seed,
                            batched_references=batched_refs,
                        )
                        reports.append(run_audit(settings, references=store))
                    queries = [r.queries for r in reports]
                    row = {
                        "server": spec["server"],
                        "platform": spec["platform"],
                        "server_options": spec["args"] + (["--dynamic-batching"] if dynamic else []),
                        "batching": dynamic,
                        "background_clients": 3 if dynamic else 0,
                        "tier": tier,
                        "batched_references": batched_refs,
                        "audits": len(reports),
                        "verdicts": dict(Counter(str(r.verdict) for r in reports)),
                        "stops": dict(Counter(str(r.stop) for r in reports)),
                        "repeat_check_asked": sum(any(e.repeat for e in r.evidence) for r in reports),
                        "determinism": dict(
                            Counter(r.determinism.verdict for r in reports if r.determinism is not None)
                        ),
                        "named_a_platform": sum(
                            r.verdict == "identified" or r.matched_class is not None for r in reports
                        ),
                        "queries_mean": round(sum(queries) / len(queries), 2),
                        "queries_max": max(queries),
                        "budget": BUDGET,
                    }
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    cpu = cpu_info()
    result = {
        "benchmark": "nondeterminism",
        "model": MODEL,
        "dataset": Path(CPU_DATASET).name,
        "dataset_has_answers_under_batching": any(
            BATCHED_RUN in config.runs for config in Dataset(CPU_DATASET).manifest.configs.values()
        ),
        "stable_platform": stable,
        "stable_platform_answers_as": stable_as,
        "machine": {
            "cpu_model": cpu.get("cpu_model"),
            "avx512": any("avx512" in f for f in cpu.get("cpu_flags", [])),
            "python": pyplatform.python_version(),
        },
        "seeds": args.seeds,
        "repeats": REPEATS,
        "greedy_slack_nats": GREEDY_SLACK,
        "rows": rows,
        "seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    plot(result, args.out.with_suffix(".png"))
    print(f"wrote {args.out}")


VERDICT_COLOURS = {
    "identified": "tab:green",
    "consistent": "tab:green",
    "inconclusive": "tab:gray",
    "unknown-platform": "tab:orange",
    "nondeterministic": "tab:purple",
    "inconsistent": "tab:red",
    "wrong-model": "tab:brown",
}


def plot(result: dict, path: Path) -> None:
    """The verdicts per server and tier, as shares of the audits."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    labels = [
        f"{r['server']} @ {r['tier']}" + ("" if r.get("batched_references", True) else ", stored answers only")
        for r in rows
    ]
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(rows) + 1.5))
    left = [0.0] * len(rows)
    for verdict, colour in VERDICT_COLOURS.items():
        shares = [r["verdicts"].get(verdict, 0) / r["audits"] for r in rows]
        if any(shares):
            ax.barh(labels, shares, left=left, color=colour, label=verdict)
            left = [a + b for a, b in zip(left, shares, strict=True)]
    ax.invert_yaxis()
    ax.set_xlabel(f"share of {result['seeds']} audits per row (lm-small, shipped references, budget 64)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=4, fontsize=8)
    ax.set_title("Default audit verdicts per server and tier")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
