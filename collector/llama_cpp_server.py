"""Start the real llama.cpp OpenAI-compatible server (`python -m llama_cpp.server`) for a platform.

    with llama_cpp_server(Platform.parse("cpu:native/Q8_0/llama.cpp/bs=8")) as base_url:
        httpx.post(f"{base_url}/completions", json={...})      # base_url: http://127.0.0.1:PORT/v1

The server loads the platform's GGUF export with the context settings `LlamaCppTarget` uses
(`llama_kwargs`: n_ctx, n_batch = n_ubatch, flash attention, KV-cache types, threads,
logits_all), so its logprobs are `features.logprob_conventions.llama_cpp_python_logprobs` of the
target's logits whenever it evaluates a prompt from an empty cache.

It does not always evaluate from an empty cache.  llama-cpp-python keeps the previous request's
KV cache and evaluates only what follows the longest common prefix of the two token lists; there
is no server setting that turns this off (`cache`, off by default, is another, state-saving cache:
keep it off).  Measured with F16 at n_batch 8 (tests/test_llama_cpp.py):
- an identical repeat after a one-token completion is not evaluated: the stored logits are
  reused, so the numbers are the previous answer's;
- after a longer completion, an identical repeat re-evaluates its last token alone: other numbers;
- a prompt sharing its first 7 or 15 tokens with the previous one leaves its last token alone in a
  micro-batch: other numbers; sharing 1, 4 or 8 tokens keeps the fresh numbers (only a one-token
  micro-batch changed the numbers here).  At n_batch 1 every token is alone anyway: no effect.
A client that never sends two consecutive prompts sharing a first token, and asks one token at a
time, always gets fresh evaluations.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

from hspi.collector.gguf_export import export_gguf, import_llama_cpp
from hspi.collector.targets.llama_cpp import check_llama_cpp_supported, llama_kwargs
from hspi.errors import ConfigError
from hspi.loopback import free_port, serving_process
from hspi.platform import Platform

STARTUP_TIMEOUT_S = 60.0  # loading a 4 MB GGUF takes about a second; a busy 2-core machine much longer


def server_command(gguf: Path, platform: Platform, port: int, model: str = "lm-gpt2") -> list[str]:
    """`python -m llama_cpp.server` with the platform's knobs as its command-line settings."""
    args = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(gguf),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--model_alias",
        gguf.stem,
        "--verbose",
        "False",
    ]
    for key, value in llama_kwargs(platform, model).items():
        args += [f"--{key}", str(value)]
    return args


@contextlib.contextmanager
def llama_cpp_server(
    platform: Platform,
    model: str = "lm-gpt2",
    *,
    export_dir: Path | None = None,
    startup_timeout_s: float = STARTUP_TIMEOUT_S,
) -> Iterator[str]:
    """Run the server for `platform` while the block runs; yield its base URL; always stop it."""
    check_llama_cpp_supported(platform, model)
    if platform.slots:  # another server, with its own batching and logprob arithmetic
        raise ConfigError(f"{platform.id}: a platform with slots is llama.cpp's llama-server (collector.llama_server)")
    import_llama_cpp()  # a missing install fails here with the install hint, not in the child
    gguf = export_gguf(model, platform.dtype, export_dir)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}/v1"
    command = server_command(gguf, platform, port, model)
    with serving_process(command, f"{base_url}/models", timeout_s=startup_timeout_s, what="llama.cpp server"):
        yield base_url
