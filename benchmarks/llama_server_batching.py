"""Identify the GGUF type while llama.cpp's C++ `llama-server` batches: continuous batching under load.

    python benchmarks/llama_server_batching.py [--work DIR] [--seeds 5]   # writes results/llama-server-batching.json

`llama-server --parallel 4` decodes the requests of its busy slots together, so a probe's numbers
depend on what it shared a batch with (benchmarks/results/llama-cpp-batching.json: 2 of 16 F32
answers changed in bursts).  References come from this machine (`make setup` builds llama-server and
the llama-cpp-python libraries from one llama.cpp tree), each step resumable, in --work (default
/tmp/hspi-llama-server; never in the repository):

1. `hspi collect --grid llama-server --models lm-gpt2` (every GGUF type at llama-server's defaults,
   4 slots; flash attention off and a q8_0 KV cache for F16 and Q4_0);
2. `hspi dataset collect-batched` (200 pool probes outside the replay run, each in the 27 batch
   compositions of `collector.llama_cpp_compositions`);
3. `hspi train` at the top-5 tier.

Then every class is served by a real `llama-server` on loopback and audited with seeds 0..seeds-1 at
`topk5`, without load and while 3 background clients send strangers' prompts asking 1..8 tokens
each, with and without the answers under batching (the same server), and against the dataset
without the class (open set).  Budgets 1, 4, 16: the decision an audit held after at most b queries.

Also measured: whether the answers the loaded server really gives fall in the collected sets
(`coverage`: the 200 probes asked `--repeats` times each under load), how many distinct answers a
probe has across compositions per configuration, and what they cost in storage.
"""

from __future__ import annotations

import argparse
import json
import platform as pyplatform
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# the same steps, AUROC and figure as the dynamic-batching benchmark
from benchmarks.batching import hspi, open_set_auroc, plot  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
MODEL = "lm-gpt2"
TIER = "topk5"
BUDGETS = (1, 4, 16)


def distinct_answers(dataset: Path) -> tuple[list[dict], dict]:
    """Per configuration: distinct answers per probe over the compositions, which compositions part from
    the alone answer, and the storage of the answers under batching."""
    from hspi.dataset import BATCHED_RUN, Dataset

    ds = Dataset(dataset)
    rows, shards, masks = [], set(), 0
    for cid, record in ds.manifest.configs.items():
        run = record.runs.get(BATCHED_RUN)
        if run is None or MODEL not in run.shards:
            continue
        got = ds.responses(cid, BATCHED_RUN, MODEL)
        ids, counts = np.unique(got.probe_ids, return_counts=True)
        parting: dict[str, int] = {}
        for mask in run.answer_sizes[MODEL]:
            if not mask & 1:  # an answer the probe does not give alone: which compositions gave it
                for bit, name in enumerate(run.compositions):
                    if mask >> bit & 1:
                        parting[name] = parting.get(name, 0) + 1
        rows.append(
            {
                "config": cid,
                "probes": int(len(ids)),
                "compositions": len(run.compositions),
                "distinct_mean": round(float(counts.mean()), 3),
                "distinct_max": int(counts.max()),
                "share_varying": round(float((counts > 1).mean()), 4),
                "compositions_parting_from_alone": dict(sorted(parting.items())),
            }
        )
        shards.add(run.shards[MODEL].shard)
        masks += len(run.answer_sizes[MODEL])
    size = sum((dataset / "shards" / f"{s}.parquet").stat().st_size for s in shards)
    return rows, {"shard_bytes": size, "distinct_shards": len(shards), "mask_entries": masks}


def coverage(dataset: Path, repeats: int, clients: int, log) -> list[dict]:
    """Per class: its batched probes asked `repeats` times of a real llama-server under load; how many answers
    are the stored (alone) answer, another of the collected answers under batching, or none of them."""
    from hspi.audit.endpoint_evaluation import background_load, llama_server_target
    from hspi.classifier.batched import BatchedAnswers
    from hspi.collector.models import model_spec
    from hspi.collector.probes import ProbeSet
    from hspi.collector.prompt_codec import codec_for
    from hspi.dataset import Dataset
    from hspi.equivalence import equivalence_classes
    from hspi.features.tiers import TIERS, tier_view

    ds = Dataset(dataset)
    classes = equivalence_classes(ds, MODEL)
    references = [ds.pool_references(c.members[0], MODEL) for c in classes]
    pool_ids = references[0].probe_ids
    batched = BatchedAnswers.load(ds, MODEL, classes, pool_ids)
    assert batched is not None
    pool, codec, k = ProbeSet(model_spec(MODEL), "pool", len(pool_ids)), codec_for(MODEL), int(TIERS[TIER] or 0)
    row_of = {int(p): i for i, p in enumerate(pool_ids)}
    serve = llama_server_target(MODEL)
    out = []
    for c, (cls, ref) in enumerate(zip(classes, references)):
        probes = [int(p) for p in batched.probe_ids]
        stored = tier_view(ref.select(np.asarray(probes)).as_float32(), TIER, cls.convention)
        counts = {"alone": 0, "batched": 0, "none": 0}
        distinct: dict[int, set[bytes]] = {}
        with serve(cls.members[0], True) as url, background_load(url, MODEL, clients, generate=8):
            with httpx.Client(timeout=60.0) as http:
                for _ in range(repeats):
                    for j, probe in enumerate(probes):
                        prompt = codec.decode(pool.inputs(np.array([probe]))[0])
                        body = {"prompt": prompt, "max_tokens": 1, "temperature": 0, "logprobs": k}
                        entry = http.post(url + "/completions", json=body).json()["choices"][0]["logprobs"]["content"][
                            0
                        ]
                        tops = entry["top_logprobs"]
                        key = (
                            np.array([t["id"] for t in tops], np.int64).tobytes()
                            + np.array([t["logprob"] for t in tops], np.float32).tobytes()
                        )
                        distinct.setdefault(probe, set()).add(key)
                        if key == stored.ids[j].astype(np.int64).tobytes() + stored.values[j].tobytes():
                            counts["alone"] += 1
                            continue
                        alternates = batched.per_class[c].get(row_of[probe])
                        views = tier_view(alternates[0], TIER, cls.convention) if alternates else None
                        hit = views is not None and any(
                            key == views.ids[a].astype(np.int64).tobytes() + views.values[a].tobytes()
                            for a in range(len(views.ids))
                        )
                        counts["batched" if hit else "none"] += 1
        total = sum(counts.values())
        row = {
            "class": cls.name,
            "answers": total,
            **counts,
            "share_in_sets": round((counts["alone"] + counts["batched"]) / total, 4),
            "probes_with_several_answers": sum(len(v) > 1 for v in distinct.values()),
            "probes": len(probes),
        }
        log(f"coverage {row}")
        out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/hspi-llama-server"))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="times each batched probe is asked for coverage")
    parser.add_argument("--out", type=Path, default=RESULTS / "llama-server-batching.json")
    args = parser.parse_args()
    dataset, classifier = args.work / "dataset", args.work / "classifier"
    started = time.perf_counter()
    hspi("collect", "--grid", "llama-server", "--models", MODEL, "--out", str(dataset))
    hspi("dataset", "collect-batched", str(dataset), "--model", MODEL, "--probes", "200")
    if not (classifier / MODEL / TIER / "reference.json").is_file():
        hspi("train", "--dataset", str(dataset), "--out", str(classifier), "--tiers", TIER)
    prepared = time.perf_counter() - started

    from hspi.audit.endpoint_evaluation import evaluate_endpoints, leave_class_out
    from hspi.collector.llama_server import llama_server_binary
    from hspi.provenance import cpu_info

    log = lambda line: print(line, flush=True)  # noqa: E731
    saved = args.work / "coverage.json"  # resumable: the coverage run is kept in --work
    if saved.is_file():
        covered, seconds_coverage = json.loads(saved.read_text(encoding="utf-8"))
    else:
        t0 = time.perf_counter()
        covered = coverage(dataset, args.repeats, args.clients, log)
        seconds_coverage = time.perf_counter() - t0
        saved.write_text(json.dumps([covered, seconds_coverage]), encoding="utf-8")
    measured = evaluate_endpoints(
        dataset,
        classifier,
        MODEL,
        tiers=(TIER,),
        batching=(False, True),
        batching_tiers=(TIER,),
        seeds=args.seeds,
        budgets=BUDGETS,
        target="llama-server",
        background_clients=args.clients,
        reference_modes=(True, False),
        leave_out=lambda cls: leave_class_out(dataset, cls, args.work / "leave-out"),
        log=log,
    )

    distinct, storage = distinct_answers(dataset)
    cpu = cpu_info()
    version = subprocess.run([str(llama_server_binary()), "--version"], capture_output=True, text=True)
    result = {
        "benchmark": "llama-server-batching",
        "model": MODEL,
        "tier": TIER,
        "server": "llama-server with 4 slots",
        "machine": {
            "cpu_model": cpu.get("cpu_model"),
            "cpu_vendor": cpu.get("cpu_vendor"),
            "avx512": any("avx512" in f for f in cpu.get("cpu_flags", [])),
            "python": pyplatform.python_version(),
        },
        "llama_server_version": (version.stdout + version.stderr).strip().splitlines()[-2:],
        "grid": "llama-server",
        "budgets": list(BUDGETS),
        "seeds": args.seeds,
        "background_clients": args.clients,
        "background_tokens": "1..8 per request",
        "results": measured["rows"],
        "batching_readings": measured["batching_readings"],
        "endpoint_timing": measured["timing"],
        "endpoint_failures": measured["failures"],
        "open_set": measured["open_set"],
        "open_set_auroc": open_set_auroc(measured["open_set"]),
        "coverage": covered,
        "distinct_answers": distinct,
        "storage": storage,
        "seconds_prepare": round(prepared, 1),
        "seconds_coverage": round(seconds_coverage, 1),
        "seconds_total": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    plot(result, args.out.with_suffix(".png"))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
