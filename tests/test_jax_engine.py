"""Engine `jax`: the built-in reference models under JAX/XLA on the same weights as torch.

The port is checked to compute torch's function (the differences are rounding: a few float32 ulps
at fp32, the working dtype's rounding at bf16/fp16), the platform rules refuse what XLA has no knob
for, and a collection runs it in fresh worker processes like every engine, reproducibly.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hspi.collector.grid import grid_platforms
from hspi.collector.models import build_model, model_spec
from hspi.collector.probes import ProbeSet
from hspi.collector.targets.local import LocalTarget, check_supported
from hspi.dataset import Dataset
from hspi.errors import ConfigError
from hspi.platform import Platform

pytest.importorskip("jax")

# the largest |JAX - torch fp32| over 32 pool probes, relative to the largest |output|: rounding, not a bug
TOLERANCE = {"fp32": 1e-5, "bf16": 3e-2, "fp16": 4e-3}


@pytest.mark.parametrize("model", ["mlp", "cnn", "lm-small", "lm-gpt2"])
def test_the_jax_port_computes_the_torch_models_function(model: str) -> None:
    import torch

    spec = model_spec(model)
    inputs = ProbeSet(spec, "pool", 64).inputs(np.arange(32))
    with torch.inference_mode():
        reference = build_model(model)(torch.from_numpy(inputs)).numpy()
    scale = float(np.abs(reference).max())
    for dtype, tolerance in TOLERANCE.items():
        target = LocalTarget(model, Platform(dtype=dtype, engine="jax"))
        out = target.answer(ProbeSet(spec, "pool", 64), np.arange(32)).as_float32()
        assert out.shape == reference.shape
        assert np.abs(out - reference).max() <= tolerance * scale, (model, dtype)
        assert (out.argmax(1) == reference.argmax(1)).mean() >= 0.9
    # bf16 answers are stored as bf16 bits, as torch's are
    assert LocalTarget(model, Platform(dtype="bf16", engine="jax")).native_dtype == "bfloat16"


@pytest.mark.parametrize(
    ("platform", "named"),
    [
        (Platform(dtype="int8-dyn", engine="jax", quant_engine="x86"), "int8-dyn"),
        (Platform(engine="jax", profile="avx2"), "avx2"),
        (Platform(engine="jax", attention="manual"), "attn=manual"),
        (Platform(engine="jax", mkl_cbwr="COMPATIBLE"), "mkl-cbwr"),
        (Platform(engine="jax", matmul_precision="medium"), "mm=medium"),
        (Platform(engine="jax", threads=1), "threads"),
    ],
)
def test_knobs_xla_does_not_have_are_refused_by_name(platform: Platform, named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace("=", ".")):
        check_supported(platform, "lm-small")


def test_jax_runs_the_built_in_models_only_and_parses_as_an_engine() -> None:
    parsed = Platform.parse("cpu:native/bf16/jax/bs=8")
    assert parsed.engine == "jax" and parsed.batch_size == 8 and parsed.id == "cpu:native/bf16/jax/bs=8"
    assert parsed.kernel == "bs=8"  # none of torch's attention or matmul knobs
    assert {p.engine for p in grid_platforms("cpu-jax")} == {"jax"}
    jax_on_gpu = [p for p in grid_platforms("gpu-default") if p.engine == "jax"]
    assert {(p.device, p.dtype) for p in jax_on_gpu} == {("cuda", "fp32"), ("cuda", "bf16"), ("cuda", "fp16")}


@pytest.mark.slow
def test_a_jax_collection_runs_in_fresh_workers_and_repeats_bit_for_bit(tmp_path: Path) -> None:
    def collect(out: Path) -> Dataset:
        subprocess.run(
            [sys.executable, "-m", "hspi", "collect", "--grid", "cpu-jax", "--models", "mlp", "--out", str(out)],
            check=True,
            capture_output=True,
        )
        return Dataset(out)

    first, second = collect(tmp_path / "a"), collect(tmp_path / "b")
    ids = sorted(first.manifest.configs)
    assert ids == sorted(second.manifest.configs) == sorted(p.id for p in grid_platforms("cpu-jax"))
    for cid in ids:
        record = first.manifest.configs[cid]
        assert record.labels["engine"] == "jax"
        assert record.runs.keys() == second.manifest.configs[cid].runs.keys()
        for run, shards in record.runs.items():
            # content-addressed shards: the same name is the same bytes
            assert shards.shards["mlp"].shard == second.manifest.configs[cid].runs[run].shards["mlp"].shard, (cid, run)
