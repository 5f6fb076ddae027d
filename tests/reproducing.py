"""Platforms whose shipped references this machine reproduces, measured once per test session.

The shipped references come from one machine.  On another CPU some configurations give other bits
(fp32 through MKL differs between AMD and Intel; ONNX Runtime and the capped bf16/fp16 oneDNN paths
do not), so a test that expects an audit to match a known class serves a platform chosen here, by
measurement (`first_reproducing`: a fresh worker answers the check probes, compared bit for bit),
never one assumed to reproduce.  Each candidate list starts with the usual platform of its kind.
"""

from __future__ import annotations

from functools import cache

from hspi.collector.reproduction import first_reproducing
from hspi.dataset import Dataset
from hspi.equivalence import equivalence_classes
from hspi.platform import Platform
from hspi.shipped import CPU_DATASET

# fp32 platforms a test can run inside its own process (no load-time environment variables)
FP32_IN_PROCESS = (
    "cpu:native/fp32/torch-eager",
    "cpu:native/fp32/onnxruntime-basic",
    "cpu:native/fp32/onnxruntime-all",
)
# bf16 platforms (ISA caps: served from a fresh `hspi target serve` process)
BF16 = (
    "cpu:avx2/bf16/torch-eager",
    "cpu:sse42/bf16/torch-eager",
    "cpu:avx512/bf16/torch-eager",
    "cpu:avx512_bf16/bf16/torch-eager",
    "cpu:native/bf16/torch-eager",
)


@cache
def reproducing(models: str | tuple[str, ...], candidates: tuple[str, ...]) -> str:
    """The configuration id of the first candidate this machine reproduces for `models` (one or several)."""
    return first_reproducing(Dataset(CPU_DATASET), (models,) if isinstance(models, str) else models, candidates)


def reproducing_platform(model: str, candidates: tuple[str, ...] = FP32_IN_PROCESS) -> Platform:
    return Dataset(CPU_DATASET).manifest.configs[reproducing(model, candidates)].platform


@cache
def class_name(model: str, config_id: str) -> str:
    """The name of the equivalence class (what an audit reports) that `config_id` belongs to."""
    return next(c.name for c in equivalence_classes(Dataset(CPU_DATASET), model) if config_id in c.members)
