"""`hspi train` before and after its data module, side by side on one machine at one moment.

    python benchmarks/train_time.py --before DIR [--dataset datasets/cpu-amd-epyc]

DIR holds the source tree of the earlier commit (`git archive <commit> | tar -x -C DIR`).  First the
loading alone: what `hspi train` calls (`hspi.classifier.training.load_model_data`) for every model,
one process per version, before and after in turn, `--repeats` times.  Then the whole command, one
tier at a time: each version runs `hspi train --dataset ... --out <tmp> --tiers <tier>` in its own
process, both at once (same machine, same moment, same contention), with its `load_model_data` timed;
`fitting` is the rest.  Then the classifiers both wrote are compared: the LightGBM text of every head
byte for byte, the threshold exactly.  Writes `benchmarks/results/train-time.json`, again after each
tier, so a run stopped early keeps the tiers it finished (and lists the others as not measured).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# the package layout of pyproject.toml: hspi.<stage> lives in <stage>/ at the top level
STAGES = ("audit", "collector", "features", "classifier", "api")

DRIVER = r"""
import json, sys, time
t0 = time.perf_counter()
import hspi.classifier.training as training
from hspi.cli import main
loading = []
events = []  # (seconds, what): the start of each model's loading and of each tier's fitting, in order
original = training.load_model_data
def timed(*args, **kwargs):
    start = time.perf_counter()
    events.append((start, "load"))
    try:
        return original(*args, **kwargs)
    finally:
        loading.append(time.perf_counter() - start)
training.load_model_data = timed
original_train = training.train
def train_logged(*args, log=lambda _: None, **kwargs):
    def logged(message):
        if message.startswith("training "):
            events.append((time.perf_counter(), message[len("training "):].replace(" / ", "/")))
        log(message)
    return original_train(*args, log=logged, **kwargs)
training.train = train_logged
sys.argv = ["hspi", "train", "--dataset", sys.argv[1], "--out", sys.argv[2], "--tiers", sys.argv[3]]
t1 = time.perf_counter()
try:
    main()
except SystemExit as exc:
    if exc.code:
        raise
t2 = time.perf_counter()
# a tier's fitting runs from its log line to the next event (the next tier, the next model's loading, the end)
ends = [t for t, _ in events[1:]] + [t2]
per_tier = {what: end - t for (t, what), end in zip(events, ends) if what != "load"}
print("RESULT " + json.dumps({"import_s": t1 - t0, "train_s": t2 - t1, "loading_s": sum(loading),
                               "fitting_per_tier_s": per_tier, "module": training.__file__}))
"""


LOAD_ONLY = r"""
import json, sys, time
t0 = time.perf_counter()
import hspi.classifier.training as training
from hspi.dataset import Dataset
t1 = time.perf_counter()
dataset = Dataset(sys.argv[1])
per_model = {}
for model in dataset.models:
    start = time.perf_counter()
    training.load_model_data(dataset, model)
    per_model[model] = time.perf_counter() - start
print("RESULT " + json.dumps({"import_s": t1 - t0, "loading_s": sum(per_model.values()), "per_model_s": per_model,
                               "module": training.__file__}))
"""


def package_farm(source: Path, into: Path) -> Path:
    """A directory whose `hspi/` package maps the stage folders as the installed layout does."""
    pkg = into / "hspi"
    pkg.mkdir(parents=True)
    for item in (source / "hspi").iterdir():
        (pkg / item.name).symlink_to(item.resolve())
    for stage in STAGES:
        (pkg / stage).symlink_to((source / stage).resolve())
    return into


def start(farm: Path, *args: str) -> subprocess.Popen:
    """Run a driver with `farm` first on sys.path.  The working directory is the farm's parent: from the
    repository root, `python -c` would import the root's own `hspi/` (and through the editable
    install, this tree's stages) whatever PYTHONPATH says."""
    env = {**os.environ, "PYTHONPATH": str(farm), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", *args],
        env=env,
        cwd=farm.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(version: str, proc: subprocess.Popen, started: float) -> dict:
    out, err = proc.communicate()
    wall = time.perf_counter() - started
    if proc.returncode:
        raise SystemExit(f"{version} failed:\n{err[-3000:]}")
    result = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
    result["process_s"] = wall
    if "train_s" in result:
        result["fitting_s"] = result["train_s"] - result["loading_s"]
    return result


def compare(before: Path, after: Path) -> dict:
    """Per classifier directory: identical head texts and thresholds?"""
    rows, same = {}, True
    for meta_path in sorted(before.glob("*/*/reference.json")):
        rel = meta_path.parent.relative_to(before)
        a = json.loads(meta_path.read_text())
        b = json.loads((after / rel / "reference.json").read_text())
        heads_same = a["heads"] == b["heads"] and all(
            name is None or (meta_path.parent / name).read_bytes() == (after / rel / name).read_bytes()
            for name in a["heads"].values()
        )
        threshold_same = a["threshold"] == b["threshold"]
        params_same = all(b["params"].get(k) == v for k, v in a["params"].items())
        rows[str(rel)] = {
            "heads_identical": heads_same,
            "threshold_identical": threshold_same,
            "params_identical": params_same,
        }
        same &= heads_same and threshold_same and params_same
    return {"identical": same, "classifiers": len(rows), "per_classifier": rows}


def after_commit() -> str:
    """This tree's HEAD, marked when the working tree differs from it."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True)
    return head.stdout.strip() + (" + uncommitted changes" if dirty.stdout.strip() else "") or "unknown"


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def loading_summary(runs: list[dict]) -> dict:
    load = sorted(x["loading_s"] for x in runs)
    return {
        "median_s": round(load[len(load) // 2], 2),
        "runs_s": [round(x, 2) for x in load],
        "per_model_s": {
            m: round(float(np.median([x["per_model_s"][m] for x in runs])), 2) for m in runs[0]["per_model_s"]
        },
    }


def command_summary(r: dict) -> dict:
    return {
        "train_s": round(r["train_s"], 1),
        "loading_s": round(r["loading_s"], 2),
        "fitting_s": round(r["fitting_s"], 1),
        "process_s": round(r["process_s"], 1),
        "fitting_per_model_s": {k.split("/")[0]: round(v, 1) for k, v in r["fitting_per_tier_s"].items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="source tree of the earlier commit")
    parser.add_argument("--before-commit", default="8ff8404")
    parser.add_argument("--dataset", type=Path, default=ROOT / "datasets" / "cpu-amd-epyc")
    parser.add_argument("--repeats", type=int, default=3, help="loading-alone runs per version")
    parser.add_argument("--tiers", default="logits,topk20,topk5,top1", help="tiers, one `hspi train` each, in order")
    parser.add_argument("--after-commit", default=after_commit(), help="label of this tree (default: its HEAD)")
    parser.add_argument("--note", default="", help="stored as 'note' in the JSON: the conditions of this run")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "train-time.json")
    args = parser.parse_args()
    dataset = args.dataset.resolve()
    tiers = [t.strip() for t in args.tiers.split(",") if t.strip()]
    result: dict = {
        "command": f"hspi train --dataset {args.dataset} --out <tmp> --tiers <tier>, once per tier: {', '.join(tiers)}",
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "method": "per tier: train_s/loading_s/fitting_s of the whole command, before and after run at once in two "
        "processes (same machine, same moment; a machine shared with other work, so absolute seconds are slow and "
        "noisy); loading_s = its load_model_data calls, fitting_s = the rest (fitting_per_model_s: from each "
        "model's 'training' log line to the next model's loading or the end); loading_alone: load_model_data for "
        "every model alone, before and after in turn, one process each, --repeats times, once before the tiers. "
        "The JSON is rewritten after each tier: tiers_not_measured lists those a stopped run did not reach",
        "before_commit": args.before_commit,
        "after_commit": args.after_commit,
        "note": args.note,
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average_at_start": Path("/proc/loadavg").read_text().split()[:3],
        "tiers_measured": [],
        "tiers_not_measured": list(tiers),
        "tiers": {},
    }

    def write() -> None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")

    with tempfile.TemporaryDirectory(prefix="hspi-train-time-") as tmp_name:
        tmp = Path(tmp_name)
        farms = {
            "before": package_farm(args.before, tmp / "farm-before"),
            "after": package_farm(ROOT, tmp / "farm-after"),
        }

        def check_module(version: str, r: dict) -> None:  # each version ran its own code
            if not r["module"].startswith(str(farms[version])):
                raise SystemExit(f"{version} imported {r['module']}, not its tree under {farms[version]}")

        loading: dict[str, list[dict]] = {"before": [], "after": []}
        for _ in range(args.repeats):
            for version, farm in farms.items():
                started = time.perf_counter()
                loading[version].append(finish(version, start(farm, LOAD_ONLY, str(dataset)), started))
                check_module(version, loading[version][-1])
                print("loading", version, round(loading[version][-1]["loading_s"], 2), flush=True)
        result["loading_alone"] = {v: loading_summary(runs) for v, runs in loading.items() if runs}
        write()
        for tier in tiers:
            load_average = Path("/proc/loadavg").read_text().split()[:3]
            tier_started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            started = time.perf_counter()
            procs = {
                v: start(farm, DRIVER, str(dataset), str(tmp / f"out-{v}-{tier}"), tier) for v, farm in farms.items()
            }
            runs = {v: finish(v, p, started) for v, p in procs.items()}
            for version, r in runs.items():
                check_module(version, r)
                print(tier, version, {k: round(v, 2) for k, v in r.items() if isinstance(v, float)}, flush=True)
            result["tiers"][tier] = {
                "started_utc": tier_started,
                "load_average_at_start": load_average,
                "before": command_summary(runs["before"]),
                "after": command_summary(runs["after"]),
                "classifiers": compare(tmp / f"out-before-{tier}", tmp / f"out-after-{tier}"),
            }
            result["tiers_measured"].append(tier)
            result["tiers_not_measured"].remove(tier)
            write()
            print(tier, "classifiers identical:", result["tiers"][tier]["classifiers"]["identical"], flush=True)


if __name__ == "__main__":
    main()
