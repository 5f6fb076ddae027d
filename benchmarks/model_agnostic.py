"""The model-agnostic audit (`hspi audit --agnostic`) against live loopback endpoints whose truth is known.

    python benchmarks/model_agnostic.py [AUDITS_PER_TARGET]     # writes results/model-agnostic.json
    python benchmarks/model_agnostic.py 10 --only fp8 --only T0.7  # those targets only, merged into it

Each target is a real server started here: `hspi target serve` (lm-small on this CPU in fp32, bf16,
fp16; static batching; bf16 also capped at 5 logprobs; fp32 also with --dynamic-batching while three
background clients keep it busy) the real llama.cpp server (`python -m llama_cpp.server`, lm-gpt2
GGUF exports F16 and Q8_0) and `transformers serve` (transformers 5); a model with a real tokenizer (a tiny Llama with a SentencePiece
tokenizer trained here, registered with its GGUF) served by `hspi target serve` in bf16 and by llama.cpp in Q4_0.
Every audit is a full default audit (at most 8 queries) with no model
given and its own seeded prompts (two random strings of U+4E00..U+4FFF characters); its three checks
are scored against the truth:

    precision    the logits' format: the server's dtype for hspi target serve; fp32 for llama.cpp (its
                 logits are float32 whatever the GGUF type)
    determinism  deterministic for static batching and llama.cpp (one request at a time; an identical
                 repeat reuses the stored logits), batch-variant for dynamic batching
    engine       hspi-target, llama.cpp or transformers

With dynamic batching the background clients' prompts (16 tokens) never share a batch with the audit's
(6-12 tokens): the server batches prompts of one length together, so what varies is the batch the
burst's copies form among themselves (2 or 3 rows) against a copy alone.
Two `hspi target serve` targets post-process the logits before the float32 log-softmax: lm-small in fp32
with its logits rounded through torch.float8_e4m3fn / torch.float8_e5m2 on this CPU (`--logits-dtype`: real
torch fp8 casts of fp32 logits, not an fp8 model: truth fp8-e4m3 / fp8-e5m2), and lm-small in bf16 with
its logits divided by 0.7 in float32 (`--temperature-before-softmax`: the values fit no format's grid;
truth none-of-these).  Precision rows of such a run count `confident_wrong`: audits that named a format
other than the truth (unknown names none; the composite "fp8", e4m3 or e5m2 not told apart, is wrong only
on a truth outside fp8); on fp8 truths `accuracy_with_fp8_group` counts the truth or "fp8" as right
(`accuracy` counts the exact format only).
With `--only SUBSTRING` (repeatable) only the targets whose name contains one are run; their rows
replace rows of the same target and check in the existing JSON, every other row is kept as it was,
and each row names its run (`run`, described under `runs`; rows without one are from the first run).
`transformers serve` (a tiny GPT-2 made here) ignores `logprobs` on its completions route: its
precision and determinism truth is "unknown" (text only).  Elsewhere "unknown" counts as wrong.  Rows: split "model-agnostic", check, target, tier, queries (the most any
audit of that target spent), accuracy, n_test, plus the verdicts seen.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path

from hspi.audit.agnostic import AgnosticSettings, run_agnostic_audit
from hspi.audit.endpoint_evaluation import background_load, served_target, warm_up
from hspi.collector.llama_cpp_server import llama_cpp_server
from hspi.collector.transformers_server import transformers_server
from hspi.platform import Platform

RESULTS = Path(__file__).parent / "results"
FORMATS = ("fp32", "bf16", "fp16", "fp8-e4m3", "fp8-e5m2")  # a precision verdict that names one
FP8_GROUP = {"fp8": ("fp8-e4m3", "fp8-e5m2")}  # a composite verdict: right when the truth is one of them
# more options of `hspi target serve` per target (what it does to the logits before the log-softmax)
SERVE_ARGS: dict[str, tuple[str, ...]] = {
    "hspi-target fp32 logits cast to fp8-e4m3": ("--logits-dtype", "fp8-e4m3"),
    "hspi-target fp32 logits cast to fp8-e5m2": ("--logits-dtype", "fp8-e5m2"),
    "hspi-target bf16 logits / T0.7 before the log-softmax": ("--temperature-before-softmax", "0.7"),
}

# name: (kind, platform, top_logprobs cap, dynamic batching, truth per check)
TARGETS: dict[str, tuple[str, str, int, bool, dict[str, str]]] = {
    "hspi-target fp32 static": (
        "hspi",
        "cpu:native/fp32/torch-eager",
        20,
        False,
        {"precision": "fp32", "determinism": "deterministic", "engine": "hspi-target"},
    ),
    "hspi-target bf16 static": (
        "hspi",
        "cpu:native/bf16/torch-eager",
        20,
        False,
        {"precision": "bf16", "determinism": "deterministic", "engine": "hspi-target"},
    ),
    "hspi-target fp16 static": (
        "hspi",
        "cpu:native/fp16/torch-eager",
        20,
        False,
        {"precision": "fp16", "determinism": "deterministic", "engine": "hspi-target"},
    ),
    "hspi-target bf16 static top5": (
        "hspi",
        "cpu:native/bf16/torch-eager",
        5,
        False,
        {"precision": "bf16", "determinism": "deterministic", "engine": "hspi-target"},
    ),
    "hspi-target fp32 dynamic-batching under load": (
        "hspi",
        "cpu:native/fp32/torch-eager",
        20,
        True,
        {"precision": "fp32", "determinism": "batch-variant", "engine": "hspi-target"},
    ),
    "llama.cpp F16": (
        "llama.cpp",
        "cpu:native/F16/llama.cpp/bs=8/threads=1",
        20,
        False,
        {"precision": "fp32", "determinism": "deterministic", "engine": "llama.cpp"},
    ),
    "transformers serve (tiny GPT-2, byte-level BPE)": (
        "transformers",
        "gpt2",
        20,
        False,
        # its completions route ignores `logprobs`: text only, so the right reading of both is "unknown"
        {"precision": "unknown", "determinism": "unknown", "engine": "transformers"},
    ),
    "llama.cpp Q8_0": (
        "llama.cpp",
        "cpu:native/Q8_0/llama.cpp/bs=8/threads=1",
        20,
        False,
        {"precision": "fp32", "determinism": "deterministic", "engine": "llama.cpp"},
    ),
    "hspi-target fp32 logits cast to fp8-e4m3": (
        "hspi",
        "cpu:native/fp32/torch-eager",
        20,
        False,
        {"precision": "fp8-e4m3", "determinism": "deterministic", "engine": "hspi-target"},
    ),
    "hspi-target fp32 logits cast to fp8-e5m2": (
        "hspi",
        "cpu:native/fp32/torch-eager",
        20,
        False,
        {"precision": "fp8-e5m2", "determinism": "deterministic", "engine": "hspi-target"},
    ),
    "hspi-target bf16 logits / T0.7 before the log-softmax": (
        "hspi",
        "cpu:native/bf16/torch-eager",
        20,
        False,
        {"precision": "none-of-these", "determinism": "deterministic", "engine": "hspi-target"},
    ),
    # a model with a real tokenizer: a tiny Llama with a SentencePiece tokenizer trained here, registered
    # (`hspi model add --hf --gguf`), served by hspi target serve and by llama.cpp from its own GGUF
    "hspi-target bf16, registered Llama (SentencePiece)": (
        "hspi-registered",
        "cpu:native/bf16/torch-eager",
        20,
        False,
        {"precision": "bf16", "determinism": "deterministic", "engine": "hspi-target"},
    ),
    "llama.cpp Q4_0, registered Llama GGUF (SentencePiece)": (
        "llama.cpp-registered",
        "cpu:native/Q4_0/llama.cpp/threads=1",
        20,
        False,
        {"precision": "fp32", "determinism": "deterministic", "engine": "llama.cpp"},
    ),
}
REGISTERED = "agnostic-llama"  # the registered model's name (under a temporary HSPI_HOME)


def register_llama(directory: Path) -> str:
    """A tiny Llama made here (random weights, a SentencePiece tokenizer trained here), registered with its GGUF."""
    import os

    sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
    from tiny_models import llama_dir, sharpen_output_layer, write_gguf

    from hspi.collector.registry import ModelRegistry

    os.environ["HSPI_HOME"] = str(directory / "home")  # never the user's registry; the servers inherit it
    hf = sharpen_output_layer(llama_dir(directory / "llama", seed=20261201))
    ModelRegistry().add(REGISTERED, hf=hf, gguf=write_gguf(hf, directory / "llama-F32.gguf", tokenizer=True))
    return REGISTERED


@contextmanager
def serve(kind: str, platform: str, cap: int, dynamic: bool, export_dir: Path, extra: tuple[str, ...]) -> Iterator[str]:
    if kind in ("llama.cpp", "llama.cpp-registered"):
        model = register_llama(export_dir) if kind == "llama.cpp-registered" else "lm-gpt2"
        with llama_cpp_server(Platform.parse(platform), model, export_dir=export_dir) as url:
            yield url
        return
    if kind == "transformers":
        sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
        from tiny_models import gpt2_dir  # a tiny model made here: random weights, a trained tokenizer

        with transformers_server(gpt2_dir(export_dir / "gpt2")) as url:
            yield url
        return
    model = register_llama(export_dir) if kind == "hspi-registered" else "lm-small"
    with served_target(model, platform, top_logprobs=cap, dynamic_batching=dynamic, extra_args=extra) as url:
        warm_up(url, model)
        load: AbstractContextManager = background_load(url, model) if dynamic else nullcontext()
        with load:
            yield url


def arguments() -> tuple[int, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("audits", nargs="?", type=int, default=10, help="audits per target")
    parser.add_argument("--only", action="append", default=[], help="run the targets whose name contains this")
    args = parser.parse_args()
    return args.audits, args.only


def main() -> int:
    audits, only = arguments()
    chosen = {n: t for n, t in TARGETS.items() if not only or any(o in n for o in only)}
    if not chosen:
        print(f"no target matches {only}: the targets are {', '.join(TARGETS)}", file=sys.stderr)
        return 2
    run_id = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    rows, started = [], time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name, (kind, platform, cap, dynamic, truth) in chosen.items():
            t0 = time.perf_counter()
            verdicts: dict[str, list[str]] = {check: [] for check in truth}
            queries, tiers = [], set()
            with serve(kind, platform, cap, dynamic, Path(tmp), SERVE_ARGS.get(name, ())) as url:
                for seed in range(audits):  # each audit its own two prompts: independent answers
                    report = run_agnostic_audit(AgnosticSettings(endpoint=url, timeout_s=60.0, seed=seed))
                    queries.append(report.queries)
                    tiers.add(report.tier or "none")
                    for check in truth:
                        verdicts[check].append(report.checks[check].verdict)
            for check, want in truth.items():
                seen = verdicts[check]
                rows.append(
                    {
                        "split": "model-agnostic",
                        "check": check,
                        "target": name,
                        "tier": "/".join(sorted(tiers)),
                        "queries": max(queries),
                        "accuracy": round(sum(v == want for v in seen) / len(seen), 4),
                        "n_test": len(seen),
                        "truth": want,
                        "verdicts": dict(Counter(seen)),
                        **({"run": run_id} if only else {}),
                        # a format named that is not the truth (unknown is no claim at all; "fp8" is wrong
                        # only when the truth is not an fp8 format); fp8 truths: how often the verdict
                        # is the truth or the composite "fp8" (right, but not telling e4m3 from e5m2)
                        **(
                            {
                                "confident_wrong": sum(
                                    (v in FORMATS and v != want) or (v in FP8_GROUP and want not in FP8_GROUP[v])
                                    for v in seen
                                )
                            }
                            if check == "precision" and only
                            else {}
                        ),
                        **(
                            {"accuracy_with_fp8_group": round(sum(v in (want, "fp8") for v in seen) / len(seen), 4)}
                            if check == "precision" and want in FP8_GROUP["fp8"]
                            else {}
                        ),
                    }
                )
            print(
                f"{name}: {dict((c, dict(Counter(v))) for c, v in verdicts.items())} ({time.perf_counter() - t0:.0f} s)"
            )
    seconds = round(time.perf_counter() - started, 1)
    if only:
        merge(rows, run_id, audits, sorted(chosen), seconds)
        return 0
    out = {
        "benchmark": "model-agnostic audit of live loopback endpoints, no model given (hspi audit --agnostic)",
        "audits_per_target": audits,
        "default_budget_queries": AgnosticSettings(endpoint="http://127.0.0.1:1/v1").budget_queries,
        "seconds": seconds,
        "not_covered": [
            "a transformers server that returns logprobs (transformers serve's completions route ignores them)",
            "a server computing its logits in fp8, and a registered model with a real tokenizer, served live "
            "(benchmarks/precision.py reads fp8 and temperature-scaled logits offline)",
            "a truly nondeterministic server (no such real server here; the verdict is unit-tested only)",
            "the side-by-side with the precision-extraction re-implementation (benchmarks/precision.py, offline)",
        ],
        "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "model-agnostic.json").write_text(json.dumps(out, indent=1) + "\n")
    return 0


def merge(rows: list[dict], run_id: str, audits: int, targets: list[str], seconds: float) -> None:
    """Put this run's rows into the committed JSON: its targets' rows replaced, every other row kept as it was."""
    path = RESULTS / "model-agnostic.json"
    out = json.loads(path.read_text())
    fresh = {(r["target"], r["check"]) for r in rows}
    out["rows"] = [r for r in out["rows"] if (r["target"], r["check"]) not in fresh] + rows
    runs = out.setdefault(
        "runs",
        [{"run": "first", "note": "rows without a `run` field", "audits_per_target": out["audits_per_target"]}],
    )
    runs.append(
        {
            "run": run_id,
            "command": "python benchmarks/model_agnostic.py " + " ".join(sys.argv[1:]),
            "targets": targets,
            "audits_per_target": audits,
            "seconds": seconds,
            "note": "these targets alone, merged into the rows of earlier runs (not_covered above names what the first run lacked)",
        }
    )
    path.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
