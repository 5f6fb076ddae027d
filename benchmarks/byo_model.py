"""Bring your own model, end to end on loopback: register -> collect -> train -> serve -> audit.

    python benchmarks/byo_model.py            # writes results/byo-model.json and results/byo-model.png

The model family is one no test tuned on, made here from a seed and shape named in the JSON
(`model_family`): a Qwen2ForCausalLM with an untied output layer, random weights, and a byte-level
BPE tokenizer trained on generated text; its output layer is sharpened as `tests/tiny_models`
does (the rows of tokens no server can name unambiguously zeroed, the rest scaled), so next-token
distributions spread like a trained model's.  Nothing is downloaded.

It is registered under a temporary HSPI_HOME, collected with `hspi collect`'s code on a grid file
(GRID below: dtypes, an ISA cap, an attention implementation, a batch size) in fresh processes,
its heads trained on that collection, and each class's first member served by `hspi target serve`
(the Hugging Face-based server: transformers in torch) on 127.0.0.1.  Audits at the topk20, topk5,
top1 and text tiers (the text tier's vote on pool probes only: no border prompts are searched for a
registered model) ask only pool probes the heads never saw (`avoid_probes`), with SEEDS probe orders
per class and tier; accuracy within a budget is the decision held after at most that many queries.

Wrong model: the same audits of endpoints serving another model (the same tokenizer with other
weights; another tokenizer), `"head": "model"` rows: right when the audit ends `wrong-model`
within 2 queries.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # tests.tiny_models: the model makers the tests use

from tests.tiny_models import llama_dir, qwen2_dir, sharpen_output_layer  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
FAMILY = {"architecture": "Qwen2ForCausalLM", "hidden": 96, "layers": 3, "vocab_size": 500, "seed": 20261129}
FAMILY_TOKENIZER_SEED = 3
GRID = [
    "cpu:native/fp32/torch-eager",
    "cpu:native/bf16/torch-eager",
    "cpu:native/fp16/torch-eager",
    "cpu:avx2/fp32/torch-eager",
    "cpu:native/fp32/torch-eager/attn=manual",
    "cpu:native/fp32/torch-eager/bs=8",
]
POOL, FRESH, REPLAY = 300, 100, 150
SEEDS = 4
TIERS = ("topk20", "topk5", "top1", "text")
WRONG_MODEL_AUDITS = 8


def make_models(root: Path) -> dict[str, Path]:
    family = qwen2_dir(
        root / "family",
        seed=FAMILY["seed"],
        vocab_size=FAMILY["vocab_size"],
        hidden=FAMILY["hidden"],
        layers=FAMILY["layers"],
        tied=False,
        tokenizer_seed=FAMILY_TOKENIZER_SEED,
    )
    other_weights = qwen2_dir(
        root / "other-weights",
        seed=FAMILY["seed"] + 1,
        vocab_size=FAMILY["vocab_size"],
        hidden=FAMILY["hidden"],
        layers=FAMILY["layers"],
        tied=False,
        tokenizer_seed=FAMILY_TOKENIZER_SEED,
    )
    other_tokenizer = llama_dir(root / "other-tokenizer", seed=FAMILY["seed"] + 2)
    return {
        "bench-qwen": sharpen_output_layer(family),
        "bench-qwen-other-weights": sharpen_output_layer(other_weights),
        "bench-llama-other-tokenizer": sharpen_output_layer(other_tokenizer),
    }


def score_wrong_model(
    reports: list, *, model: str, served: str, target: str, tier: str, api: str = "completions"
) -> tuple[list[dict], dict]:
    """`"head": "model"` rows at budgets 1, 2, 16 (right: ended `wrong-model` within the budget) and a summary
    of the audits of one endpoint serving another model than `model`."""
    from hspi.terms import StopReason, Verdict

    right = [r.verdict == Verdict.WRONG_MODEL and r.stop == StopReason.WRONG_MODEL for r in reports]
    rows = []
    for budget in (1, 2, 16):
        within = [ok and r.queries <= budget for ok, r in zip(right, reports, strict=True)]
        rows.append(
            {
                "split": "endpoint",
                "model_kind": "byo",
                "model": model,
                "served": served,
                "target": target,
                "api": api,
                "tier": tier,
                "head": "model",
                "method": "model-check",
                "queries": budget,
                "accuracy": round(sum(within) / len(within), 4),
                "n_test": len(within),
                "batching": False,
            }
        )
    summary = {
        "served": served,
        "api": api,
        "tier": tier,
        "verdicts": sorted({str(r.verdict) for r in reports}),
        "queries": [r.queries for r in reports],
        "reasons": sorted({r.reason for r in reports})[:3],
    }
    return rows, summary


def main() -> None:
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="hspi-byo-bench-"))
    os.environ["HSPI_HOME"] = str(work / "home")  # the workers and servers inherit it
    from hspi.audit import AuditSettings, run_audit
    from hspi.audit.endpoint_evaluation import evaluate_endpoints, plot_endpoint_accuracy, served_target
    from hspi.classifier.training import train
    from hspi.collector.collect import collect
    from hspi.collector.registry import ModelRegistry
    from hspi.dataset import Dataset
    from hspi.terms import Tier

    registry = ModelRegistry()
    cards = {name: registry.add(name, hf=path)[0] for name, path in make_models(work / "models").items()}
    grid = work / "grid.yaml"
    grid.write_text("platforms:\n" + "".join(f"  - {p}\n" for p in GRID))
    dataset, classifier = work / "dataset", work / "classifier"
    t0 = time.perf_counter()
    collect(str(grid), "bench-qwen", dataset, pool=POOL, fresh=FRESH, replay=REPLAY, on_progress=_progress)
    collect_seconds = time.perf_counter() - t0
    train(Dataset(dataset), classifier, tiers=list(TIERS), log=print)
    measured = evaluate_endpoints(
        dataset,
        classifier,
        "bench-qwen",
        tiers=TIERS,
        batching=(False,),
        seeds=SEEDS,
        budgets=(1, 2, 4, 16, 64),
        log=print,
    )
    rows = [{**r, "model_kind": "byo", "target": "hf-server", "api": "completions"} for r in measured["rows"]]
    wrong: list[dict] = []
    for served in ("bench-qwen-other-weights", "bench-llama-other-tokenizer"):
        with served_target(served, "cpu:native/fp32/torch-eager") as url:
            for tier in ("topk20", "topk5"):
                reports = [
                    run_audit(
                        AuditSettings(
                            endpoint=url,
                            model="bench-qwen",
                            budget_queries=16,
                            max_tier=Tier(tier),
                            seed=seed,
                            dataset=dataset,
                            classifier=classifier,
                            timeout_s=30.0,
                        )
                    )
                    for seed in range(WRONG_MODEL_AUDITS)
                ]
                scored, summary = score_wrong_model(
                    reports, model="bench-qwen", served=served, target="hf-server", tier=tier
                )
                rows += scored
                wrong.append(summary)
    classes = Dataset(dataset).manifest
    result = {
        "benchmark": "byo-model",
        "machine": "this 2-core development machine (AMD EPYC, AVX2, no AVX-512)",
        "model_family": {
            **FAMILY,
            "untied_output": True,
            "tokenizer": f"byte-level BPE trained on generated text (seed {FAMILY_TOKENIZER_SEED})",
            "output_layer": "sharpened (tests/tiny_models.sharpen_output_layer, scale 25)",
            "parameters": cards["bench-qwen"].parameter_count,
            "weights_sha256": cards["bench-qwen"].weights_sha256,
        },
        "wrong_models": {
            name: {"weights_sha256": card.weights_sha256, "tokenizer_sha256": card.tokenizer_sha256}
            for name, card in cards.items()
            if name != "bench-qwen"
        },
        "grid": GRID,
        "collected_configurations": len(classes.configs),
        "pool": POOL,
        "fresh": FRESH,
        "replay": REPLAY,
        "collect_seconds": round(collect_seconds, 1),
        "results": rows,
        "endpoint_timing": measured["timing"],
        "endpoint_failures": measured["failures"],
        "wrong_model_audits": wrong,
        "not_measured": {
            "chat api": "not asked of the HF-based server here; chat is measured on llama.cpp (byo-llama-cpp.json)",
            "llama.cpp target": "benchmarks/byo_llama_cpp.py (results/byo-llama-cpp.json)",
        },
        "seconds": round(time.perf_counter() - started, 1),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "byo-model.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    plot_endpoint_accuracy(result, RESULTS / "byo-model.png")
    for row in rows:
        if row["head"] in ("dtype", "full", "model") and row["queries"] in (2, 16):
            print(row["tier"], row["head"], row.get("served", ""), row["queries"], row["accuracy"], row["n_test"])


def _progress(config: str, done: int, total: int) -> None:
    print(f"collect [{done}/{total}] {config}", flush=True)


if __name__ == "__main__":
    main()
