"""Logit precision from logprobs (hspi.features.precision) on real model outputs, beside a
re-implementation of the precision-extraction search.

    python benchmarks/precision.py            # writes results/precision.json and results/precision.png

The model is the project's reference LM (`lm-small`, seeded weights), run in torch on this CPU on
random 16-token prompts; each answer is one prompt's next-token distribution.  Logits come out of
the model in the target format:

  fp32       the float32 module as built
  bf16/fp16  the module cast with .to(torch.bfloat16) / .half(): every layer runs in that dtype,
             the logits are that dtype
  fp8-*      the float32 module; the final linear layer's float32 output (the logits) is cast to
             torch.float8_e4m3fn or torch.float8_e5m2 (round to nearest, no scaling) and back to float32
  +T0.7      post-processed: logits (cast to float32) divided by a temperature 0.7 in float32 before
             the log-softmax; bf16/fp16 logits then sit on a grid no format explains, so the right
             reading is "none-of-these"; fp32 logits stay float32 values, so the right reading is "fp32"

Every answer's logits go through two servers' float32 log-softmax: torch's (`torch.log_softmax` on
this CPU) and numpy's max-shifted form (`features.tiers.log_softmax_f32`), then top-k (k = 20, 5).
Accuracy counts a verdict equal to the target ("unknown" is not correct; on fp8 targets the composite
"fp8", e4m3 or e5m2 not told apart, is counted in fp8_group_rate, not as wrong); answers are split into
disjoint groups of 1 or 2 answers.

The precision-extraction baseline follows the anchor's description (Zhang 2025): for each format,
coarsest first (fp8-e5m2, fp8-e4m3, bf16, fp16), enumerate every finite value g of the format as
the top logit (|g| <= 1024: above that float32(lp_i + w) == w), set w = float32(g - lp_0) and accept the format when float32(lp_i + w) is exactly
a value of the format for every i; otherwise fp32.  One answer, no "unknown", no "none-of-these".
This is our own code written from that description, not the anchor's.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from hspi.collector.models import build_model, model_spec
from hspi.features.precision import (
    COMPOSITE_VERDICTS,
    PRECISION_CLASSES,
    fit_answer,
    reading_from_fits,
    validate_answer,
)
from hspi.features.tiers import log_softmax_f32

RESULTS = Path(__file__).parent / "results"
N_PROMPTS = int(sys.argv[1]) if len(sys.argv) > 1 else 240
SEED = 20260117
TIERS = {"topk20": 20, "topk5": 5}
QUERIES = (1, 2)
TEMPERATURE = 0.7
TORCH_DTYPES = {
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp8-e4m3": torch.float8_e4m3fn,
    "fp8-e5m2": torch.float8_e5m2,
}
# (configuration, model dtype, final-layer output cast, temperature, target reading)
CONFIGS = [
    ("fp32", "fp32", None, None, "fp32"),
    ("bf16", "bf16", None, None, "bf16"),
    ("fp16", "fp16", None, None, "fp16"),
    ("fp8-e4m3", "fp32", "fp8-e4m3", None, "fp8-e4m3"),
    ("fp8-e5m2", "fp32", "fp8-e5m2", None, "fp8-e5m2"),
    ("fp32+T0.7", "fp32", None, TEMPERATURE, "fp32"),
    ("bf16+T0.7", "bf16", None, TEMPERATURE, "none-of-these"),
    ("fp16+T0.7", "fp16", None, TEMPERATURE, "none-of-these"),
]


def model_logits(prompts: torch.Tensor, model_dtype: str, output_cast: str | None) -> torch.Tensor:
    """The LM's next-token logits as float32 values (exactly the format's values where one applies)."""
    model = build_model("lm-small")
    if model_dtype != "fp32":
        model = model.to(TORCH_DTYPES[model_dtype])
    with torch.no_grad():
        logits = model(prompts)
    if output_cast is not None:
        logits = logits.to(TORCH_DTYPES[output_cast])
    return logits.float()


def server_logprobs(logits: torch.Tensor, temperature: float | None, server: str) -> np.ndarray:
    z = logits if temperature is None else logits / torch.tensor(temperature, dtype=torch.float32)
    if server == "torch":
        return torch.log_softmax(z, dim=-1).numpy()
    return log_softmax_f32(z.numpy())


# -- the precision-extraction baseline ---------------------------------------------------------------
def _all_values(fmt: str) -> np.ndarray:
    dtype = TORCH_DTYPES[fmt]
    bits = 8 if fmt.startswith("fp8") else 16
    raw = torch.arange(2**bits, dtype=torch.int32)
    as_int = raw.to(torch.uint8) if bits == 8 else raw.to(torch.int16)
    values = as_int.view(dtype).float().numpy()
    return np.unique(values[np.isfinite(values) & (np.abs(values) <= BASELINE_MAX)])


BASELINE_ORDER = ("fp8-e5m2", "fp8-e4m3", "bf16", "fp16")
# beyond this, float32(lp_i + w) == w and every format "fits": the top logit is searched within +-1024
BASELINE_MAX = 1024.0
_BASELINE_VALUES = {fmt: _all_values(fmt) for fmt in BASELINE_ORDER}


def _in_format(x: np.ndarray, fmt: str) -> np.ndarray:
    back = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(TORCH_DTYPES[fmt]).float().numpy()
    return back == x


def precision_extraction(lp: np.ndarray) -> str:
    lp = np.asarray(lp, dtype=np.float32)
    for fmt in BASELINE_ORDER:
        w = (_BASELINE_VALUES[fmt] - lp[0]).astype(np.float32)
        alive = np.ones(w.size, dtype=bool)
        for value in lp[1:]:
            idx = np.nonzero(alive)[0]
            alive[idx] = _in_format((value + w[idx]).astype(np.float32), fmt)
            if not alive.any():
                break
        if alive.any():
            return fmt
    return "fp32"


# -- the run -----------------------------------------------------------------------------------------
def main() -> int:
    start = time.time()
    spec = model_spec("lm-small")
    generator = torch.Generator().manual_seed(SEED)
    prompts = torch.randint(0, spec.n_outputs, (N_PROMPTS, spec.input_shape[0]), generator=generator)
    rows: list[dict] = []
    confusions: dict[str, dict[str, int]] = {}
    logits_cache: dict[tuple[str, str | None], torch.Tensor] = {}
    for name, model_dtype, output_cast, temperature, target in CONFIGS:
        key = (model_dtype, output_cast)
        if key not in logits_cache:
            logits_cache[key] = model_logits(prompts, model_dtype, output_cast)
        logits = logits_cache[key]
        for server in ("torch", "numpy"):
            lp_all = server_logprobs(logits, temperature, server)
            order = np.argsort(-lp_all, axis=1, kind="stable")
            for tier, k in TIERS.items():
                top = np.take_along_axis(lp_all, order[:, :k], axis=1)
                fits = []
                for row in top:
                    values, why = validate_answer(row, k)
                    assert values is not None, why
                    fits.append(fit_answer(values))
                common = {"split": "model-agnostic", "check": "precision", "target": target, "tier": tier}
                extra = {"config": name, "server": server, "model": "lm-small"}
                for queries in QUERIES:
                    groups = [fits[i : i + queries] for i in range(0, len(fits) - queries + 1, queries)]
                    verdicts = [reading_from_fits(g).verdict for g in groups]
                    counts = Counter(verdicts)
                    # "fp8" (e4m3 or e5m2, not told apart) is right but not exact on an fp8 target, wrong elsewhere
                    group = counts["fp8"] if target in COMPOSITE_VERDICTS["fp8"] else 0
                    confusions[f"{name}/{server}/{tier}/q{queries}"] = dict(counts)
                    rows.append(
                        {
                            **common,
                            "queries": queries,
                            "accuracy": round(counts[target] / len(groups), 4),
                            "n_test": len(groups),
                            "method": "hspi",
                            **extra,
                            "unknown_rate": round(counts["unknown"] / len(groups), 4),
                            "fp8_group_rate": round(group / len(groups), 4),
                            "wrong_rate": round(1 - (counts[target] + counts["unknown"] + group) / len(groups), 4),
                        }
                    )
                baseline = [precision_extraction(row) for row in top]
                counts = Counter(baseline)
                confusions[f"{name}/{server}/{tier}/precision-extraction"] = dict(counts)
                rows.append(
                    {
                        **common,
                        "queries": 1,
                        "accuracy": round(counts[target] / len(baseline), 4),
                        "n_test": len(baseline),
                        "method": "precision-extraction",
                        **extra,
                        "unknown_rate": 0.0,
                        "wrong_rate": round(1 - counts[target] / len(baseline), 4),
                    }
                )
        print(f"{name}: done at {time.time() - start:.0f} s", file=sys.stderr)
    out = {
        "what": "logit precision read from top-k logprobs (hspi.features.precision) vs a precision-extraction re-implementation",
        "model": "lm-small (seeded reference LM, collector/models.py), torch CPU",
        "answers_per_config": N_PROMPTS,
        "prompts": f"uniform random 16-token prompts, torch seed {SEED}; one answer = the next-token distribution",
        "formats": {
            "fp32": "float32 module",
            "bf16": "module.to(torch.bfloat16): all layers and the logits in bf16",
            "fp16": "module.half(): all layers and the logits in fp16",
            "fp8-e4m3": "float32 module; final linear output cast .to(torch.float8_e4m3fn).float() (round to nearest, unscaled)",
            "fp8-e5m2": "float32 module; final linear output cast .to(torch.float8_e5m2).float() (round to nearest, unscaled)",
            "+T0.7": "logits.float() / float32(0.7) before the log-softmax (post-processing: target none-of-these for bf16/fp16, fp32 for fp32)",
        },
        "servers": {
            "torch": "torch.log_softmax(z, -1) in float32 on this CPU",
            "numpy": "features.tiers.log_softmax_f32: (z - max) - log(sum(exp(z - max))) in float32",
        },
        "accuracy": "share of groups whose verdict equals the target; 'unknown' counts as not correct (see unknown_rate, "
        "wrong_rate); on fp8 targets fp8_group_rate is the share read 'fp8' (e4m3 or e5m2, not told apart: right, "
        "not exact, not wrong)",
        "baseline": "precision-extraction as the anchor describes it: coarsest format first, every finite value |g| <= 1024 of the "
        "format as top logit, exact float32 fit, single answer, never unknown (our code)",
        "classes": list(PRECISION_CLASSES),
        "rows": rows,
        "confusions": confusions,
        "seconds": round(time.time() - start, 1),
        "torch": torch.__version__,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "precision.json").write_text(json.dumps(out, indent=1) + "\n")
    plot(rows, RESULTS / "precision.png")
    print(f"wrote {RESULTS / 'precision.json'} in {out['seconds']} s", file=sys.stderr)
    return 0


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = [c[0] for c in CONFIGS]
    series = [
        ("hspi", 1, "hspi, 1 answer"),
        ("hspi", 2, "hspi, 2 answers"),
        ("precision-extraction", 1, "precision-extraction, 1 answer"),
    ]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
    width = 0.27
    for ax, tier in zip(axes, TIERS):
        for s, (method, queries, label) in enumerate(series):
            acc = []
            for config in configs:
                sel = [
                    r["accuracy"]
                    for r in rows
                    if r["config"] == config and r["tier"] == tier and r["method"] == method and r["queries"] == queries
                ]
                acc.append(float(np.mean(sel)) if sel else 0.0)
            ax.bar(np.arange(len(configs)) + (s - 1) * width, acc, width, label=label)
        ax.set_xticks(np.arange(len(configs)), configs, rotation=30, ha="right")
        ax.set_title(f"{tier} (mean over torch and numpy log-softmax)")
        ax.set_ylim(0, 1.05)
    axes[0].set_ylabel("accuracy (verdict = target)")
    axes[0].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
