"""Compare an `hspi evaluate` rerun with the committed results file, row for row.

    python benchmarks/evaluate_rerun.py --rerun OUT/cpu-amd-epyc.json [--committed benchmarks/results/cpu-amd-epyc.json]

A row is identified by what it measures (model, split, tier, head, method, queries, ...; for the open
set also the class left out) and compared on every other field, exactly.  Rows of the `endpoint`
split are left out: `hspi evaluate` does not measure them (they come from `--endpoints` runs and are
carried over when the command writes over the committed file).  Timings (seconds, stage_seconds,
throughput) are listed side by side, not compared.  With `--subset` the rerun measured part of the
grid (`hspi evaluate --models ... --tiers ...`): only the committed rows of the (model, split, tier)
it measured are compared, which holds because every stage draws from fixed seeds, not from a stream
shared across models and tiers.  Writes benchmarks/results/evaluate-rerun-comparison.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULT_KEY = ("model", "split", "tier", "head", "method", "queries", "target", "batching", "encoding")
OPEN_SET_KEY = ("model", "split", "tier", "method", "queries", "held_out_class")
TIMINGS = ("seconds", "stage_seconds", "throughput")
NOT_MEASURED_SPLITS = ("endpoint",)


def row_key(row: dict, fields: tuple[str, ...]) -> tuple:
    return tuple(row.get(f) for f in fields)


def compare_rows(committed: list[dict], rerun: list[dict], fields: tuple[str, ...]) -> dict:
    def index(rows: list[dict]) -> dict[tuple, dict]:
        out: dict[tuple, dict] = {}
        for row in rows:
            key = row_key(row, fields)
            if key in out:
                raise SystemExit(f"two rows measure {dict(zip(fields, key))}: the key does not identify a row")
            out[key] = row
        return out

    a, b = index(committed), index(rerun)
    differing = []
    for key in a.keys() & b.keys():
        changed = sorted(f for f in a[key].keys() | b[key].keys() if a[key].get(f) != b[key].get(f))
        if changed:
            differing.append(
                {
                    "row": {f: v for f, v in zip(fields, key) if v is not None},
                    "fields": changed,
                    "committed": {f: a[key].get(f) for f in changed},
                    "rerun": {f: b[key].get(f) for f in changed},
                }
            )
    differing.sort(key=lambda d: json.dumps(d["row"], sort_keys=True))

    def describe(key: tuple) -> dict:
        return {f: v for f, v in zip(fields, key) if v is not None}

    return {
        "committed_rows": len(a),
        "rerun_rows": len(b),
        "identical": len(a.keys() & b.keys()) - len(differing),
        "differing": len(differing),
        "only_committed": sorted((describe(k) for k in a.keys() - b.keys()), key=json.dumps),
        "only_rerun": sorted((describe(k) for k in b.keys() - a.keys()), key=json.dumps),
        "differing_rows": differing,
    }


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rerun", type=Path, required=True, help="the results JSON the rerun wrote")
    parser.add_argument("--committed", type=Path, default=ROOT / "benchmarks" / "results" / "cpu-amd-epyc.json")
    parser.add_argument("--command", default="", help="the command that wrote --rerun")
    parser.add_argument("--note", default="", help="stored as 'note': the conditions of the rerun")
    parser.add_argument("--subset", action="store_true", help="the rerun measured part of the grid")
    parser.add_argument("--explanation", default="", help="stored as 'explanation': why rows differ")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "evaluate-rerun-comparison.json")
    args = parser.parse_args()
    committed = json.loads(args.committed.read_text(encoding="utf-8"))
    rerun = json.loads(args.rerun.read_text(encoding="utf-8"))
    if args.subset:  # compare only what the rerun measured
        measured = {
            (r.get("model"), r.get("split"), r.get("tier")) for r in rerun["results"] + rerun.get("open_set", [])
        }
        for part in ("results", "open_set"):
            committed[part] = [
                r for r in committed.get(part, []) if (r.get("model"), r.get("split"), r.get("tier")) in measured
            ]
        committed["models"] = {m: v for m, v in committed.get("models", {}).items() if m in rerun.get("models", {})}
    results = compare_rows(
        *([r for r in d["results"] if r.get("split") not in NOT_MEASURED_SPLITS] for d in (committed, rerun)),
        RESULT_KEY,
    )
    open_set = compare_rows(committed.get("open_set", []), rerun.get("open_set", []), OPEN_SET_KEY)
    other = sorted(k for k in committed.keys() | rerun.keys() if k not in ("results", "open_set", *TIMINGS))
    same_elsewhere = {k: committed.get(k) == rerun.get(k) for k in other if not k.startswith("endpoint_")}
    rel = args.committed.resolve().relative_to(ROOT) if args.committed.resolve().is_relative_to(ROOT) else None
    comparison = {
        "committed": str(rel or args.committed),
        "committed_at_commit": git("log", "-1", "--format=%h %s", "--", str(rel)) if rel else None,
        "rerun_command": args.command,
        "rerun_commit": git("rev-parse", "--short", "HEAD"),
        "subset": sorted({f"{r['model']}/{r['split']}/{r['tier']}" for r in rerun["results"]}) if args.subset else None,
        "note": args.note,
        "rows_identical": results["differing"] == 0
        and open_set["differing"] == 0
        and not (results["only_committed"] or results["only_rerun"])
        and not (open_set["only_committed"] or open_set["only_rerun"]),
        "left_out": {
            "endpoint rows": sum(1 for r in committed["results"] if r.get("split") in NOT_MEASURED_SPLITS),
            "why": "the `endpoint` split comes from `hspi evaluate --endpoints` runs, not from this command",
        },
        "results": results,
        "open_set": open_set,
        "other_fields_identical": same_elsewhere,
        "timings": {k: {"committed": committed.get(k), "rerun": rerun.get(k)} for k in TIMINGS},
        "explanation": args.explanation,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(comparison, indent=1) + "\n", encoding="utf-8")
    for name, part in (("results", results), ("open_set", open_set)):
        print(
            f"{name}: {part['identical']} identical, {part['differing']} differing, "
            f"{len(part['only_committed'])} only committed, {len(part['only_rerun'])} only rerun"
        )
    print("other fields identical:", same_elsewhere)


if __name__ == "__main__":
    main()
