"""Where the shipped datasets and classifiers live, per reference model (paths from the repository root)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CPU_DATASET = ROOT / "datasets" / "cpu-amd-epyc"
CPU_CLASSIFIER = ROOT / "models" / "cpu-amd-epyc"
LLAMA_CPP_DATASET = ROOT / "datasets" / "llama-cpp-amd-epyc"
LLAMA_CPP_CLASSIFIER = ROOT / "models" / "llama-cpp-amd-epyc"
RESULTS_DIR = ROOT / "benchmarks" / "results"  # measured results, committed

# lm-gpt2 exists for llama.cpp (GGUF's gpt2 layout): its references come from llama.cpp runs
_BY_MODEL = {"lm-gpt2": (LLAMA_CPP_DATASET, LLAMA_CPP_CLASSIFIER)}


def shipped_dataset(model: str) -> Path:
    return _BY_MODEL.get(model, (CPU_DATASET, CPU_CLASSIFIER))[0]


def shipped_classifier(model: str) -> Path:
    return _BY_MODEL.get(model, (CPU_DATASET, CPU_CLASSIFIER))[1]
