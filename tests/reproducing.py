"""Platforms to serve in tests, chosen once per session by what this machine measures.

The shipped references come from one machine.  On another CPU a configuration can give other bits
(fp32 through MKL differs between vendors and between ISAs; ONNX Runtime and the capped bf16/fp16
oneDNN paths do not), so a test never assumes that a platform reproduces its stored references:

- `identified(models, candidates)`: the first candidate whose answers here are identical to *some*
  collected configuration's (a fresh worker answers the check probes, compared bit for bit), with
  that configuration: an audit of it must name that configuration's class.  (On a CPU without
  AVX-512, for example, fp32 through MKL gives what the collecting machine gave under an AVX2 cap.)
- `reproducing(models, candidates)`: the first candidate that reproduces its own references (what a
  run that extends the dataset, such as a border collection, checks before it writes anything).
"""

from __future__ import annotations

from functools import cache

import numpy as np

from hspi.collector.models import model_spec
from hspi.collector.probes import ProbeSet
from hspi.collector.reproduction import first_identified, first_reproducing
from hspi.collector.vocabulary import decode
from hspi.dataset import Dataset
from hspi.equivalence import equivalence_classes
from hspi.platform import Platform
from hspi.shipped import CPU_DATASET

# fp32 platforms a test can serve inside its own process (no load-time ISA caps); ONNX Runtime last:
# its export takes full-length prompts only
FP32_IN_PROCESS = (
    "cpu:native/fp32/torch-eager",
    "cpu:native/fp32/torch-eager/attn=manual",
    "cpu:native/fp32/torch-eager/attn=sdpa-math",
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


def _models(models: str | tuple[str, ...]) -> tuple[str, ...]:
    return (models,) if isinstance(models, str) else models


@cache
def identified(models: str | tuple[str, ...], candidates: tuple[str, ...] = FP32_IN_PROCESS) -> tuple[str, str]:
    """(platform id to serve, the collected configuration whose answers it gives on this machine)."""
    return first_identified(Dataset(CPU_DATASET), _models(models), candidates)


@cache
def reproducing(models: str | tuple[str, ...], candidates: tuple[str, ...]) -> str:
    """The configuration id of the first candidate that reproduces its own references here."""
    return first_reproducing(Dataset(CPU_DATASET), _models(models), candidates)


def serving_platform(model: str, candidates: tuple[str, ...] = FP32_IN_PROCESS) -> Platform:
    return Platform.parse(identified(model, candidates)[0])


def expected_class(model: str, candidates: tuple[str, ...] = FP32_IN_PROCESS) -> str:
    """The class an audit of `serving_platform(model, candidates)` must report."""
    return class_name(model, identified(model, candidates)[1])


@cache
def class_name(model: str, config_id: str) -> str:
    """The name of the equivalence class (what an audit reports) that `config_id` belongs to."""
    return next(c.name for c in equivalence_classes(Dataset(CPU_DATASET), model) if config_id in c.members)


def full_prompt(model: str = "lm-small") -> str:
    """A full-length prompt (pool probe 0): what every served platform answers, ONNX Runtime included."""
    spec = model_spec(model)
    return decode(ProbeSet(spec, "pool", 1).inputs(np.array([0]))[0], spec.n_outputs)
