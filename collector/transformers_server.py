"""Start the real transformers OpenAI-compatible server (`transformers serve`) on a local model directory.

    with transformers_server(Path("my-model-dir")) as base_url:      # http://127.0.0.1:PORT/v1
        httpx.post(f"{base_url}/completions", json={"model": str(model_dir), ...})

A known engine for the model-agnostic audit's engine tells.  Offline (HF_HUB_OFFLINE=1): it loads
only the directory given, on the CPU.  It needs transformers' serving extras (fastapi, uvicorn, openai)
and accelerate; `transformers_serve_available()` says whether they are installed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from hspi.errors import ConfigError
from hspi.loopback import free_port, serving_process

STARTUP_TIMEOUT_S = 120.0  # torch and transformers imports on a busy 2-core machine


def transformers_serve_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("transformers", "openai", "accelerate", "uvicorn"))


@contextlib.contextmanager
def transformers_server(model_dir: Path, *, startup_timeout_s: float = STARTUP_TIMEOUT_S) -> Iterator[str]:
    """Run `transformers serve MODEL_DIR` on a free loopback port while the block runs; yield its /v1 URL."""
    if not transformers_serve_available():
        raise ConfigError("transformers serve needs transformers, openai and accelerate: pip install -e '.[dev]'")
    if not (model_dir / "config.json").is_file():
        raise ConfigError(f"{model_dir} is not a Hugging Face model directory (no config.json)")
    port = free_port()
    base_url = f"http://127.0.0.1:{port}/v1"
    command = [
        sys.executable,
        "-c",
        "import sys; from transformers.cli.transformers import main; sys.argv[0] = 'transformers'; main()",
        "serve",
        str(model_dir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--device",
        "cpu",
    ]
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the child inherits them: nothing is fetched from a hub
    try:
        with serving_process(command, f"{base_url}/models", timeout_s=startup_timeout_s, what="transformers serve"):
            yield base_url
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
