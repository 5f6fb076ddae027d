"""Named collection grids: which platforms a collection runs."""

from __future__ import annotations

from pathlib import Path

from hspi.errors import ConfigError
from hspi.platform import GGUF_TYPES, Platform

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


def _cpu_jax() -> list[Platform]:
    """JAX/XLA on the built-in models' weights (collector.jax_models): each float dtype, and a batch of 8."""
    grid = [Platform(dtype=dtype, engine="jax") for dtype in ("fp32", "bf16", "fp16")]
    return [*grid, Platform(engine="jax", batch_size=8)]


def _cpu_smoke() -> list[Platform]:
    """A four-configuration grid for tests and quick checks (three classes at least)."""
    return [
        Platform(dtype="fp32"),
        Platform(dtype="bf16"),
        Platform(profile="sse42", dtype="fp32"),
        Platform(mkl_cbwr="COMPATIBLE"),
    ]


def _llama(dtype: str, **knobs: object) -> Platform:
    return Platform(dtype=dtype, engine="llama.cpp", **knobs)  # type: ignore[arg-type]


def _llama_cpp() -> list[Platform]:
    """llama.cpp (llama-cpp-python, CPU) on the lm-gpt2 GGUF export.

    Every GGUF type at llama.cpp's defaults (fa off, f16 KV cache, n_batch 1); then each knob against
    that baseline for one float type (F16: flash attention, f32 KV cache, n_batch 8, q8_0 KV cache,
    whose V half needs flash attention) and one quantised type (Q4_0: the same but the f32 cache);
    then combinations measured bit-identical to a listed one (f32 KV under fa, n_batch under fa for
    Q4_0, one thread instead of two): shards are content-addressed, so they cost no storage and show
    which knobs merge.  Every knob for every type would be 60 configurations and 44 distinct
    classes, about 80 MB at these pool sizes: too heavy for a dataset shipped in the repository.
    """
    grid = [_llama(t) for t in GGUF_TYPES]
    grid += [
        _llama("F16", flash_attn=True),
        _llama("F16", kv_type="f32"),
        _llama("F16", batch_size=8),
        _llama("F16", flash_attn=True, kv_type="q8_0"),
    ]
    grid += [
        _llama("Q4_0", flash_attn=True),
        _llama("Q4_0", batch_size=8),
        _llama("Q4_0", flash_attn=True, kv_type="q8_0"),
    ]
    # expected to merge with a configuration above
    grid += [_llama("F16", flash_attn=True, kv_type="f32"), _llama("F16", threads=1)]
    grid += [
        _llama("Q4_0", flash_attn=True, kv_type="f32"),
        _llama("Q4_0", threads=1),
        _llama("Q4_0", batch_size=8, flash_attn=True),
        _llama("Q4_0", batch_size=8, flash_attn=True, kv_type="f32"),
        _llama("Q4_0", batch_size=8, flash_attn=True, kv_type="q8_0"),
    ]
    return grid


def _llama_cpp_smoke() -> list[Platform]:
    """Three llama.cpp configurations for tests: two types and a knob (three classes).  One thread:
    it changes no number, and two threads' spin-waits crawl on a busy two-core machine."""
    return [_llama("F32", threads=1), _llama("Q8_0", threads=1), _llama("F32", batch_size=8, threads=1)]


# llama-server's defaults on CPU: micro-batches of 512, flash attention ("auto" turns it on for the CPU
# backend), an f16 KV cache; 4 slots is a serving setup (`--parallel 4`)
SERVER_SLOTS = 4
SERVER_BATCH = 512


def _server(dtype: str, **knobs: object) -> Platform:
    settings: dict[str, object] = {"batch_size": SERVER_BATCH, "flash_attn": True, "slots": SERVER_SLOTS, **knobs}
    return _llama(dtype, **settings)


def _llama_server() -> list[Platform]:
    """llama.cpp's C++ `llama-server` with 4 slots (continuous batching) on the lm-gpt2 GGUF export: every GGUF
    type at the server's defaults, then the knobs a provider sets: flash attention off and a q8_0 KV cache
    for one float and one quantised type."""
    grid = [_server(t) for t in GGUF_TYPES]
    grid += [_server("F16", flash_attn=False), _server("Q4_0", flash_attn=False)]
    grid += [_server("F16", kv_type="q8_0"), _server("Q4_0", kv_type="q8_0")]
    return grid


def _llama_server_smoke() -> list[Platform]:
    """Three llama-server configurations for tests (one thread, as `_llama_cpp_smoke`)."""
    return [_server("F32", threads=1), _server("Q8_0", threads=1), _server("F32", flash_attn=False, threads=1)]


def _cuda(dtype: str = "fp32", **knobs: object) -> Platform:
    return Platform(device="cuda", dtype=dtype, **knobs)  # type: ignore[arg-type]


# (dtype, tf32): fp32 in IEEE arithmetic and on TF32 tensor cores, then the half types
GPU_PRECISIONS: tuple[tuple[str, bool], ...] = (("fp32", False), ("fp32", True), ("bf16", False), ("fp16", False))
# flash and cuDNN attention take half types only; math and memory-efficient take fp32 too
GPU_SDPA_DTYPES = {
    "sdpa-math": ("fp32", "bf16", "fp16"),
    "sdpa-efficient": ("fp32", "bf16", "fp16"),
    "sdpa-flash": ("bf16", "fp16"),
    "sdpa-cudnn": ("bf16", "fp16"),
}


def _gpu_default() -> list[Platform]:
    """One CUDA GPU: every precision at PyTorch's defaults (batch 1, SDPA picking its backend, eager);
    then each knob against that baseline per precision: batch 8 and 32, each SDPA backend the
    precision admits, torch.compile; then JAX/XLA on the same weights in each dtype.  31 configurations;
    a knob for every combination would be hundreds, mostly bit-identical to one listed (shards are
    content-addressed: those cost nothing)."""
    grid = [_cuda(dtype, tf32=tf32) for dtype, tf32 in GPU_PRECISIONS]
    grid += [_cuda(dtype, tf32=tf32, batch_size=bs) for bs in (8, 32) for dtype, tf32 in GPU_PRECISIONS]
    grid += [
        _cuda(dtype, tf32=tf32, attention=attention)
        for attention, dtypes in GPU_SDPA_DTYPES.items()
        for dtype, tf32 in GPU_PRECISIONS
        if dtype in dtypes
    ]
    grid += [_cuda(dtype, tf32=tf32, engine="torch-compile") for dtype, tf32 in GPU_PRECISIONS]
    grid += [_cuda(dtype, engine="jax") for dtype in ("fp32", "bf16", "fp16")]  # XLA has no TF32 knob here
    return grid


GRIDS = {
    "cpu-default": _cpu_default,
    "cpu-smoke": _cpu_smoke,
    "cpu-jax": _cpu_jax,
    "llama-cpp": _llama_cpp,
    "llama-cpp-smoke": _llama_cpp_smoke,
    "llama-server": _llama_server,
    "llama-server-smoke": _llama_server_smoke,
    "gpu-default": _gpu_default,
}


def grid_platforms(name: str) -> list[Platform]:
    """A named grid, or a grid file (`*.yaml`: `platforms:` followed by a list of platform ids)."""
    if name in GRIDS:
        return GRIDS[name]()
    if name.endswith((".yaml", ".yml")):
        return grid_file_platforms(Path(name))
    raise ConfigError(f"unknown grid {name!r}; known: {', '.join(GRIDS)}, or a grid file (*.yaml)")


def grid_file_platforms(path: Path) -> list[Platform]:
    """The platforms a user's grid file lists, e.g.

    platforms:
      - cpu:native/fp32/torch-eager
      - cpu:avx2/bf16/torch-eager/attn=manual
    """
    import yaml

    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"grid file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        reason = " ".join(str(exc).split())[:160]
        raise ConfigError(f"grid file {path} is not readable YAML ({reason})") from None
    entries = document.get("platforms") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"grid file {path}: expected 'platforms:' followed by a list of platform ids")
    platforms: list[Platform] = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, str):
            raise ConfigError(f"grid file {path}: platforms[{index}] is {entry!r}, not a platform id")
        try:
            platform = Platform.parse(entry)
        except ConfigError as exc:
            raise ConfigError(f"grid file {path}: platforms[{index}]: {exc}") from None
        if any(p.id == platform.id for p in platforms):
            raise ConfigError(f"grid file {path}: platform {platform.id} is listed twice")
        platforms.append(platform)
    return platforms
