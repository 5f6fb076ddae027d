"""Collection cost of a model of realistic size: a random-initialised model with the configuration of a
~0.5B-parameter open model (Qwen2.5-0.5B's shape: hidden 896, 24 layers, 14 heads, 2 KV heads, MLP 4864,
vocabulary 151,936, tied embeddings), registered and run through the collector's own worker.

    python benchmarks/byo_realistic.py [N_PROBES]      # writes results/byo-realistic.json

Its tokenizer is the small byte-level BPE of the tests (trained on generated text; its ids are a
subset of the configured vocabulary), so prompts are 16 word tokens, as for every registered model.
Each configuration below runs in a fresh worker process (`hspi.collector.worker`, as `hspi collect`
does) over N_PROBES pool probes (default 200); the JSON gives the worker's seconds (loading the
2 GB model included: the worker does not time it apart), probes per second on that basis, and the
worker's peak resident memory (measured in the worker).  A second, short run of SHORT_RUN probes per
configuration gives, by difference, the time one more probe costs (`probes_per_second`) and the load
(`load_seconds`).  The wall time of the whole `cpu-default` grid is only *bounded* from these (see
`grid_upper_bound_s`); `byo_realistic_grid.py` measures it.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.tiny_models import byte_level_bpe  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
SHORT_RUN = 8  # a second, short run per configuration: the two apart give the per-probe time and the load
CONFIG = {
    "hidden_size": 896,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "intermediate_size": 4864,
    "vocab_size": 151936,
    "max_position_embeddings": 32768,
    "tie_word_embeddings": True,
}
SEED = 20261130
PLATFORMS = [
    "cpu:native/fp32/torch-eager",
    "cpu:native/bf16/torch-eager",
    "cpu:native/fp16/torch-eager",
    "cpu:native/int8-dyn/torch-eager/qengine=x86",
    "cpu:native/fp32/torch-eager/attn=manual",
    "cpu:native/fp32/torch-eager/bs=8",
]


def grid_upper_bound_s(rows: list[dict], configurations: int, pool: int = 200) -> float:
    per_probe = sum(r["worker_seconds_including_load"] / r["probes"] for r in rows) / len(rows)
    per_load = sum(r["worker_seconds_including_load"] for r in rows) / len(rows)  # a whole short run, as a bound
    return configurations * (1.7 * pool * per_probe + per_load)


def make_model(directory: Path) -> Path:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    directory.mkdir(parents=True, exist_ok=True)
    byte_level_bpe(500, seed=5).save_pretrained(directory)
    torch.manual_seed(SEED)
    Qwen2ForCausalLM(Qwen2Config(**CONFIG)).save_pretrained(directory, safe_serialization=True)
    return directory


def main() -> None:
    n_probes = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="hspi-byo-realistic-"))
    os.environ["HSPI_HOME"] = str(work / "home")
    from hspi.collector.grid import grid_platforms
    from hspi.collector.local_run import run_worker
    from hspi.collector.registry import ModelRegistry
    from hspi.collector.worker import RunPlan, WorkerJob
    from hspi.platform import Platform

    t0 = time.perf_counter()
    card, _ = ModelRegistry().add("realistic-0.5b", hf=make_model(work / "model"))
    make_seconds = time.perf_counter() - t0
    rows = []
    load_before = os.getloadavg()

    def worker_seconds(platform: Platform, probes: int) -> tuple[float, float, int]:
        """(worker seconds, wall seconds, peak RSS bytes) of one fresh worker answering `probes` pool probes."""
        job = WorkerJob(
            platform=platform,
            models=["realistic-0.5b"],
            runs=[RunPlan(name="reference", probe_set="pool", size=probes)],
            dataset_dir=str(work / f"dataset-{probes}"),
            export_dir=str(work / "exports"),
        )
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            record = run_worker(job, Path(tmp)).runs["reference"]
        return record.seconds, time.perf_counter() - t0, int(record.provenance["peak_rss_bytes"])

    for platform_id in PLATFORMS:
        platform = Platform.parse(platform_id)
        short, _, _ = worker_seconds(platform, SHORT_RUN)
        full, wall, peak = worker_seconds(platform, n_probes)
        per_probe = (full - short) / (n_probes - SHORT_RUN)  # two runs apart: what one more probe costs
        rows.append(
            {
                "platform": platform_id,
                "probes": n_probes,
                # the worker's own time: loading the model, one batch under verbose dispatch output, the probes
                "worker_seconds_including_load": round(full, 1),
                "wall_seconds": round(wall, 1),
                "probes_per_second_including_load": round(n_probes / full, 3),
                "probes_per_second": round(1 / per_probe, 3) if per_probe > 0 else None,
                "load_seconds": round(full - n_probes * per_probe, 1),
                "short_run": {"probes": SHORT_RUN, "worker_seconds": round(short, 1)},
                "peak_rss_mb": round(peak / 2**20),
            }
        )
        print(rows[-1], flush=True)
    grid = [p for p in grid_platforms("cpu-default") if not p.engine.startswith("onnxruntime")]
    estimate = grid_upper_bound_s(rows, len(grid))
    result = {
        "benchmark": "byo-realistic",
        **machine_and_model(card, load_before, make_seconds),
        "configurations": rows,
        "cpu_default_grid": {
            "configurations_for_a_registered_model": len(grid),
            "estimated_upper_bound_wall_seconds": round(estimate),
            "how": "estimated, not measured: an upper bound that charges every probe of a 200-probe pool, its "
            "replay subset (30%) and fresh probes (40%) at the mean per-probe time of the runs above, model "
            "loading included, plus one more load for the second process of each configuration",
        },
        "seconds": round(time.perf_counter() - started, 1),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "byo-realistic.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


def machine_and_model(card: Any, load_before: tuple[float, float, float], make_seconds: float) -> dict:
    """The JSON's machine (load average before and now) and model fields, shared with byo_realistic_grid.py."""
    from hspi.provenance import cpu_info

    return {
        "machine": {
            "cpu": cpu_info()["cpu_model"],
            "cores": os.cpu_count(),
            "load_average_1_5_15_before": [round(x, 2) for x in load_before],
            "load_average_1_5_15_after": [round(x, 2) for x in os.getloadavg()],
        },
        "model": {**CONFIG, "architecture": "Qwen2ForCausalLM", "seed": SEED, "parameters": card.parameter_count},
        "weights_bytes": card.weight_bytes,
        "make_and_register_seconds": round(make_seconds, 1),
    }


if __name__ == "__main__":
    main()
