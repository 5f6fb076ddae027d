"""Why fp8-e4m3 and fp8-e5m2 logits of lm-small are hard to tell apart from their logprobs (measured).

    python benchmarks/fp8_ambiguity.py [PROMPT_SEEDS]   # writes results/fp8-ambiguity.json (default 20 seeds)

For each fp8 cast, `hspi target serve --logits-dtype fp8-e4m3|fp8-e5m2` (lm-small in fp32 on this CPU, its
logits rounded through torch's float8 dtype) runs on a loopback port; each seed's two model-agnostic prompts
(audit.agnostic.audit_prompts) are asked with 20 logprobs (a model-agnostic audit of budget 3: /models and
the two answers).  Recorded:

  logits         lm-small's own fp32 logits on the same prompts: the top logit and the 20th, which place
                 the top-20 values on the formats' binades
  log_bf         per answer, each grid's own log Bayes factor of fp8-e4m3 against fp8-e5m2
                 (features.precision.fit_answer's grid_log_bf, before the reading pools undecided answers)
  decisive       answers that split the two fp8 grids by themselves (one fits and the other does not, or one
                 explains them more coarsely: AnswerFit.fp8_decisive), by the side their factors favour
  readings       read_precision on the first n distinct answers, n = 1, 2, 4, 8, 16, 32, 40: the verdict,
                 the two fp8 posteriors and their sum (n = 2 is what a default audit has: its two prompts)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from hspi.audit.agnostic import AgnosticSettings, audit_prompts, run_agnostic_audit
from hspi.audit.endpoint_evaluation import served_target
from hspi.collector.prompt_codec import codec_for
from hspi.collector.targets.local import LocalTarget
from hspi.features.precision import fit_answer, read_precision, verdict_probability
from hspi.platform import Platform

RESULTS = Path(__file__).parent / "results"
PLATFORM = "cpu:native/fp32/torch-eager"
CASTS = ("fp8-e4m3", "fp8-e5m2")
COUNTS = (1, 2, 4, 8, 16, 32, 40)


def top_logits(seeds: int) -> list[dict[str, float]]:
    """lm-small's fp32 logits on the audit prompts: the top one and the 20th."""
    target, codec = LocalTarget("lm-small", Platform.parse(PLATFORM)), codec_for("lm-small")
    out = []
    for seed in range(seeds):
        for prompt in audit_prompts(seed):
            logits = np.asarray(target.run_inputs(np.asarray([codec.model_input(codec.encode(prompt))]))[0])
            last = np.sort((logits[-1] if logits.ndim == 2 else logits).astype(np.float32))[::-1]
            out.append({"seed": seed, "top": round(float(last[0]), 4), "20th": round(float(last[19]), 4)})
    return out


def answers(cast: str, seeds: int) -> list[list[float]]:
    rows: list[list[float]] = []
    with served_target("lm-small", PLATFORM, extra_args=("--logits-dtype", cast)) as url:
        for seed in range(seeds):
            report = run_agnostic_audit(AgnosticSettings(endpoint=url, timeout_s=60.0, seed=seed, budget_queries=3))
            rows += [r.values[1:21] for r in report.evidence if r.step in ("first", "second") and len(r.values) > 20]
    return rows


def main() -> int:
    seeds = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    started = time.perf_counter()
    logits = top_logits(seeds)
    per_cast = {}
    for cast in CASTS:
        rows = answers(cast, seeds)
        fits = [fit_answer(np.asarray(r, dtype=np.float32)) for r in rows]
        log_bf = [round(float(f.grid_log_bf["fp8-e4m3"] - f.grid_log_bf["fp8-e5m2"]), 3) for f in fits]
        decisive = {  # answers whose grids alone split the two, by the side their own factors favour
            "fp8-e4m3": sum(f.fp8_decisive and b > 0 for f, b in zip(fits, log_bf, strict=True)),
            "fp8-e5m2": sum(f.fp8_decisive and b < 0 for f, b in zip(fits, log_bf, strict=True)),
        }
        readings = []
        for n in COUNTS:
            if n > len(rows):
                break
            reading = read_precision(rows[:n], "topk20")
            readings.append(
                {
                    "answers": n,
                    "verdict": reading.verdict,
                    "fp8-e4m3": round(reading.posterior.get("fp8-e4m3", 0.0), 4),
                    "fp8-e5m2": round(reading.posterior.get("fp8-e5m2", 0.0), 4),
                    "fp8_group": round(verdict_probability("fp8", reading.posterior), 4),
                }
            )
        per_cast[cast] = {
            "answers": len(rows),
            "log_bf_e4m3_vs_e5m2": {
                "min": min(log_bf),
                "median": float(np.median(log_bf)),
                "max": max(log_bf),
                "favours_e4m3": sum(v > 0 for v in log_bf),
            },
            "decisive_answers": decisive,
            "readings": readings,
            "log_bf": log_bf,
        }
    tops, twentieths = [x["top"] for x in logits], [x["20th"] for x in logits]
    result = {
        "benchmark": "fp8-ambiguity",
        "platform": PLATFORM,
        "prompt_seeds": seeds,
        "logits": {
            "top_range": [min(tops), max(tops)],
            "20th_range": [min(twentieths), max(twentieths)],
            "per_prompt": logits,
        },
        "casts": per_cast,
        "seconds": round(time.perf_counter() - started, 1),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fp8-ambiguity.json").write_text(json.dumps(result, indent=1) + "\n")
    print(
        json.dumps({k: v for k, v in result.items() if k != "logits"} | {"logits": result["logits"]["top_range"]})[
            :3000
        ]
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
