"""Start llama.cpp's own C++ `llama-server` for a platform with slots, on loopback.

    with llama_server(Platform.parse("cpu:native/Q8_0/llama.cpp/bs=512/fa=on/slots=4")) as base_url:
        httpx.post(f"{base_url}/completions", json={...})      # base_url: http://127.0.0.1:PORT/v1

`llama-server --parallel N` serves N requests at once and decodes them together (continuous
batching), unlike `python -m llama_cpp.server`, which runs one request at a time behind a lock
(benchmarks/results/llama-cpp-batching.json).  The server is started with exactly the platform's
settings: N slots of the model's context each, its batch size as the micro-batch (--ubatch-size; the
logical batch stays at the server's default 2048), flash attention, KV-cache type,
threads; everything else at llama-server's defaults, prompt cache included, as a provider runs it.

`make setup` builds `llama-server` and llama-cpp-python's libraries from one llama.cpp tree (the
one the pinned llama-cpp-python sdist vendors) and puts the binary beside those libraries, so the
in-process references (`collector.llama_cpp_slots`) run the server's own kernels.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from hspi.collector.gguf_export import export_gguf
from hspi.collector.llama_cpp_slots import SERVER_N_BATCH
from hspi.collector.targets.llama_cpp import check_llama_cpp_supported, slot_context_length
from hspi.errors import ConfigError
from hspi.loopback import free_port, serving_process
from hspi.platform import Platform

LLAMA_SERVER_ENV = "HSPI_LLAMA_SERVER"
STARTUP_TIMEOUT_S = 60.0


def llama_server_binary() -> Path:
    """`$HSPI_LLAMA_SERVER`, else the `llama-server` that `make setup` put beside llama-cpp-python's libraries,
    else one on PATH; a clear error naming how to get it otherwise."""
    named = os.environ.get(LLAMA_SERVER_ENV)
    if named:
        path = Path(named)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ConfigError(f"{LLAMA_SERVER_ENV}={named} is not an executable file")
        return path
    spec = importlib.util.find_spec("llama_cpp")
    if spec is not None and spec.origin is not None:
        beside = Path(spec.origin).parent / "lib" / "llama-server"
        if beside.is_file():
            return beside
    found = shutil.which("llama-server")
    if found:
        return Path(found)
    raise ConfigError(
        "llama.cpp's llama-server is not installed: `make setup` builds it with llama-cpp-python's libraries "
        f"from the pinned sdist's llama.cpp tree; or set {LLAMA_SERVER_ENV} to a llama-server binary"
    )


def llama_server_command(binary: Path, gguf: Path, platform: Platform, port: int, model: str) -> list[str]:
    """`llama-server` with the platform's settings as its command-line flags."""
    if not platform.slots:
        raise ConfigError(f"{platform.id}: llama-server serves a platform with slots (e.g. /slots=4)")
    kv = platform.kv_type or "f16"
    return [
        str(binary),
        "--model",
        str(gguf),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--alias",
        gguf.stem,
        "--parallel",
        str(platform.slots),
        "--ctx-size",
        str(slot_context_length(model) * platform.slots),
        "--batch-size",
        str(max(SERVER_N_BATCH, platform.batch_size)),
        "--ubatch-size",
        str(platform.batch_size),
        "--flash-attn",
        "on" if platform.flash_attn else "off",
        "--cache-type-k",
        kv,
        "--cache-type-v",
        kv,
        "--threads",
        str(platform.threads),
        "--threads-batch",
        str(platform.threads),
        "--no-webui",
    ]


@contextlib.contextmanager
def llama_server(
    platform: Platform,
    model: str = "lm-gpt2",
    *,
    export_dir: Path | None = None,
    startup_timeout_s: float = STARTUP_TIMEOUT_S,
) -> Iterator[str]:
    """Run llama-server for `platform` while the block runs; yield its base URL; always stop it."""
    check_llama_cpp_supported(platform, model)
    binary = llama_server_binary()
    gguf = export_gguf(model, platform.dtype, export_dir)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = llama_server_command(binary, gguf, platform, port, model)
    with serving_process(command, f"{base}/health", timeout_s=startup_timeout_s, what="llama-server"):
        yield f"{base}/v1"
