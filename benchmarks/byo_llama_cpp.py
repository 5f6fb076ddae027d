"""Bring your own GGUF, end to end on loopback: register -> llama.cpp grid -> train -> llama.cpp server -> audit.

    python benchmarks/byo_llama_cpp.py        # writes results/byo-llama-cpp.json and results/byo-llama-cpp.png

The model family is one no test tuned on, made here from a seed and shape named in the JSON (`model_family`):
a LlamaForCausalLM with random weights, a SentencePiece tokenizer (BPE with byte fallback) trained on generated
text, and a Llama-2-style chat template that starts with the BOS token.  Its output layer is sharpened as
`tests/tiny_models` does.  It is written to an F32 GGUF with its vocabulary and chat template (gguf-py's own
vocabulary readers) and registered with both its Hugging Face directory and that GGUF.  Nothing is downloaded.

Every type of the `llama-cpp` grid is made from the registered GGUF by llama.cpp's own quantiser, and collected
twice: completions prompts (`MODEL`) and the same kind of probes inside the chat template (`MODEL:chat`).  Each
class's first member is served by the real `python -m llama_cpp.server` on 127.0.0.1 and audited through
`/v1/completions` and `/v1/chat/completions` at the topk5, top1 and text tiers, asking only pool probes the
heads never saw; accuracy within a budget is the decision held after at most that many queries.  The text tier's
vote has pool probes only (no border prompts are searched for a registered model).

Wrong model: servers of two other registered GGUFs (the same tokenizer with other weights; another tokenizer
with these weights' shape), audited as this model: right when the audit ends `wrong-model` within 2 queries.
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

from benchmarks.byo_model import score_wrong_model  # noqa: E402  (the same scoring as the HF-server rows)
from tests.tiny_models import llama_dir, sharpen_output_layer, write_gguf  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
# hidden 128 over 4 heads: head size 32, which the q8_0 KV cache of the grid needs (whole q8_0 blocks)
FAMILY = {"architecture": "LlamaForCausalLM", "hidden": 128, "layers": 3, "vocab_size": 400, "seed": 20261130}
TOKENIZER_SEED, OTHER_TOKENIZER_SEED = 2, 4
CHAT_TEMPLATE = "{{ bos_token }}{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}"
MODEL = "bench-gguf"
POOL, FRESH, REPLAY = 240, 60, 120
PARALLEL = 2  # configurations collected side by side (each in its own processes)
SEEDS = 3
TIERS = ("topk5", "top1", "text")
BUDGETS = (1, 2, 4, 16, 64)
WRONG_MODEL_AUDITS = 8
SERVED_TYPE = "cpu:native/Q8_0/llama.cpp"  # the wrong-model servers' platform


def make_models(root: Path) -> dict[str, tuple[Path, Path]]:
    """name -> (HF directory, F32 GGUF with its tokenizer)."""
    shape = {"vocab_size": FAMILY["vocab_size"], "hidden": FAMILY["hidden"], "layers": FAMILY["layers"]}
    made = {
        MODEL: llama_dir(
            root / "family", seed=FAMILY["seed"], tokenizer_seed=TOKENIZER_SEED, chat_template=CHAT_TEMPLATE, **shape
        ),
        f"{MODEL}-other-weights": llama_dir(
            root / "other-weights",
            seed=FAMILY["seed"] + 1,
            tokenizer_seed=TOKENIZER_SEED,
            chat_template=CHAT_TEMPLATE,
            **shape,
        ),
        f"{MODEL}-other-tokenizer": llama_dir(
            root / "other-tokenizer",
            seed=FAMILY["seed"],
            tokenizer_seed=OTHER_TOKENIZER_SEED,
            chat_template=CHAT_TEMPLATE,
            **shape,
        ),
    }
    return {
        name: (sharpen_output_layer(hf), write_gguf(hf, root / f"{name}-F32.gguf", tokenizer=True))
        for name, hf in made.items()
    }


def main() -> None:
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="hspi-byo-gguf-bench-"))
    os.environ["HSPI_HOME"] = str(work / "home")  # the workers and servers inherit it
    os.environ["HSPI_CACHE_DIR"] = str(work / "cache")
    from hspi.audit import AuditSettings, run_audit
    from hspi.audit.endpoint_evaluation import evaluate_endpoints, plot_endpoint_accuracy
    from hspi.classifier.training import train
    from hspi.collector.collect import collect
    from hspi.collector.grid import grid_platforms
    from hspi.collector.llama_cpp_server import llama_cpp_server
    from hspi.collector.registry import ModelRegistry
    from hspi.dataset import Dataset
    from hspi.platform import Platform
    from hspi.terms import Tier

    registry = ModelRegistry()
    cards = {name: registry.add(name, hf=hf, gguf=gguf)[0] for name, (hf, gguf) in make_models(work / "models").items()}
    dataset, classifier = work / "dataset", work / "classifier"
    t0 = time.perf_counter()
    collect(
        "llama-cpp",
        f"{MODEL},{MODEL}:chat",
        dataset,
        pool=POOL,
        fresh=FRESH,
        replay=REPLAY,
        parallel=PARALLEL,
        on_progress=_progress,
    )
    collect_seconds = time.perf_counter() - t0
    train(Dataset(dataset), classifier, tiers=list(TIERS), log=print)
    rows: list[dict] = []
    timing, failures = [], []
    for api in ("completions", "chat"):
        measured = evaluate_endpoints(
            dataset,
            classifier,
            MODEL,
            tiers=TIERS,
            batching=(False,),
            seeds=SEEDS,
            budgets=BUDGETS,
            target="llama.cpp",
            api=api,
            log=print,
        )
        rows += [{**r, "model_kind": "byo"} for r in measured["rows"]]
        timing += [{**t, "api": api} for t in measured["timing"]]
        failures += measured["failures"]
    wrong: list[dict] = []
    for served in (f"{MODEL}-other-weights", f"{MODEL}-other-tokenizer"):
        with llama_cpp_server(Platform.parse(SERVED_TYPE), served) as url:
            for api, tier in (("completions", "topk5"), ("chat", "topk5"), ("completions", "top1")):
                reports = [
                    run_audit(
                        AuditSettings(
                            endpoint=url,
                            model=MODEL,
                            api=api,  # type: ignore[arg-type]  # completions or chat
                            served_model=served,
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
                    reports, model=MODEL, served=served, target="llama.cpp", tier=tier, api=api
                )
                rows += scored
                wrong.append(summary)
    manifest = Dataset(dataset).manifest
    card = cards[MODEL]
    result = {
        "benchmark": "byo-llama-cpp",
        "machine": "this 2-core development machine (AMD EPYC, AVX2, no AVX-512)",
        "model_family": {
            **FAMILY,
            "tokenizer": f"SentencePiece BPE with byte fallback trained on generated text (seed {TOKENIZER_SEED})",
            "chat_template": CHAT_TEMPLATE,
            "output_layer": "sharpened (tests/tiny_models.sharpen_output_layer, scale 25)",
            "gguf": "F32, written by tests/tiny_models.write_gguf with gguf-py's SentencePieceVocab and SpecialVocab",
            "parameters": card.parameter_count,
            "weights_sha256": card.weights_sha256,
            "gguf_sha256": card.gguf.file_sha256 if card.gguf else None,
        },
        "wrong_models": {
            name: {"weights_sha256": c.weights_sha256, "tokenizer_sha256": c.tokenizer_sha256}
            for name, c in cards.items()
            if name != MODEL
        },
        "grid": [p.id for p in grid_platforms("llama-cpp")],
        "collected_configurations": len(manifest.configs),
        "probe_sets": sorted(manifest.probe_sets),
        "pool": POOL,
        "fresh": FRESH,
        "replay": REPLAY,
        "collect_seconds": round(collect_seconds, 1),
        "results": rows,
        "endpoint_timing": timing,
        "endpoint_failures": failures,
        "wrong_model_audits": wrong,
        "not_measured": {
            "topk20": "not asked of this server here (topk5 is the issue's tier for llama.cpp)",
            "batching": "llama_cpp.server serialises requests (benchmarks/results/llama-cpp-batching.json)",
        },
        "seconds": round(time.perf_counter() - started, 1),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "byo-llama-cpp.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    plot_endpoint_accuracy(result, RESULTS / "byo-llama-cpp.png")
    for row in rows:
        if row["head"] in ("dtype", "full", "model") and row["queries"] in (2, 16):
            print(row["api"], row["tier"], row["head"], row.get("served", ""), row["queries"], row["accuracy"])


def _progress(config: str, done: int, total: int) -> None:
    print(f"collect [{done}/{total}] {config}", flush=True)


if __name__ == "__main__":
    main()
