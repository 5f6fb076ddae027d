"""Named collection grids: which platforms a collection runs."""

from __future__ import annotations

from hspi.errors import ConfigError
from hspi.platform import Platform

CPU_PROFILES = ("sse42", "avx2", "avx512", "avx512_bf16", "amx", "native")


def _cpu_default() -> list[Platform]:
    grid = [Platform(profile=profile, dtype=dtype) for profile in CPU_PROFILES for dtype in ("fp32", "bf16", "fp16")]
    grid += [Platform(dtype="int8-dyn", quant_engine=engine) for engine in ("x86", "onednn", "qnnpack")]
    grid += [Platform(engine=engine) for engine in ("torch-compile", "onnxruntime-basic", "onnxruntime-all")]
    grid += [Platform(dtype="bf16", engine="torch-compile")]
    grid += [Platform(attention=attention) for attention in ("sdpa-math", "manual")]
    grid += [Platform(dtype="bf16", attention="manual")]
    grid += [Platform(batch_size=8), Platform(dtype="bf16", batch_size=8)]
    grid += [Platform(matmul_precision="medium"), Platform(mkl_cbwr="COMPATIBLE")]
    return grid


def _cpu_smoke() -> list[Platform]:
    """A four-configuration grid for tests and quick checks (three classes at least)."""
    return [Platform(dtype="fp32"), Platform(dtype="bf16"), Platform(profile="sse42", dtype="fp32"),
            Platform(mkl_cbwr="COMPATIBLE")]


GRIDS = {"cpu-default": _cpu_default, "cpu-smoke": _cpu_smoke}


def grid_platforms(name: str) -> list[Platform]:
    if name not in GRIDS:
        raise ConfigError(f"unknown grid {name!r}; known: {', '.join(GRIDS)}")
    return GRIDS[name]()
