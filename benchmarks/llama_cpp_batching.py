"""Which llama.cpp server batches concurrent requests, and does batching change its answers?

    python benchmarks/llama_cpp_batching.py [--llama-server PATH]   # writes results/llama-cpp-batching.json

Two servers on loopback, each serving hspi's `lm-gpt2` GGUF exports (F32, Q8_0):
- `python -m llama_cpp.server` (llama-cpp-python, as `hspi` audits it): one model behind a lock, so
  concurrent requests run one after another;
- llama.cpp's own C++ `llama-server` with 4 parallel slots (continuous batching): the one `make setup`
  builds from the llama.cpp tree that the pinned llama-cpp-python sdist vendors (found by
  `hspi.collector.llama_server.llama_server_binary`), or the binary --llama-server names.

Per server and GGUF type: 16 pool prompts asked alone, again alone, then in bursts of 4 concurrent
requests (max_tokens 1, temperature 0, top-5 logprobs, no prompt cache); how many answers (the whole
logprobs object, compared exactly) differ from the first alone answers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODEL = "lm-gpt2"
PROMPTS = 16
BURST = 4


@contextlib.contextmanager
def cpp_server(binary: Path, gguf: Path, log: Path) -> Iterator[str]:
    from hspi.loopback import free_port

    port = free_port()
    with open(log, "w") as sink:
        proc = subprocess.Popen(
            [str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "--parallel", str(BURST)]
            + ["-c", "1024", "-t", "2", "--no-webui"],
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            for _ in range(240):
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(base + "/health", timeout=1).status_code == 200:
                        break
                time.sleep(0.5)
            yield base + "/v1"
        finally:
            proc.terminate()
            proc.wait(30)


def measure(url: str, prompts: list[str]) -> dict:
    def ask(prompt: str) -> str:
        body = {"prompt": prompt, "max_tokens": 1, "temperature": 0, "logprobs": 5, "cache_prompt": False}
        reply = httpx.post(url + "/completions", json=body, timeout=120).json()
        return json.dumps(reply["choices"][0].get("logprobs"), sort_keys=True)

    ask(prompts[-1])  # warm
    started = time.perf_counter()
    alone = [ask(p) for p in prompts[:PROMPTS]]
    seconds_alone = time.perf_counter() - started
    again = [ask(p) for p in prompts[:PROMPTS]]
    burst: list[str | None] = [None] * PROMPTS

    def one(i: int) -> None:
        burst[i] = ask(prompts[i])

    started = time.perf_counter()
    for start in range(0, PROMPTS, BURST):
        threads = [threading.Thread(target=one, args=(i,)) for i in range(start, start + BURST)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    seconds_burst = time.perf_counter() - started
    return {
        "prompts": PROMPTS,
        "alone_again_differs": sum(a != b for a, b in zip(alone, again)),
        "in_bursts_differs_from_alone": sum(a != b for a, b in zip(alone, burst)),
        "seconds_alone": round(seconds_alone, 2),
        "seconds_in_bursts": round(seconds_burst, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama-server", type=Path, default=None, help="llama.cpp's C++ llama-server binary")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "llama-cpp-batching.json")
    args = parser.parse_args()

    from hspi.collector.gguf_export import export_gguf
    from hspi.collector.llama_cpp_server import llama_cpp_server
    from hspi.collector.models import model_spec
    from hspi.collector.probes import ProbeSet
    from hspi.collector.prompt_codec import codec_for
    from hspi.platform import Platform
    from hspi.provenance import cpu_info

    codec = codec_for(MODEL)
    pool = ProbeSet(model_spec(MODEL), "pool", 1000)
    prompts = [codec.decode(pool.inputs(np.array([i]))[0]) for i in range(PROMPTS + 1)]
    servers: dict[str, Callable[[str], contextlib.AbstractContextManager[str]]] = {
        "llama_cpp.server": lambda t: llama_cpp_server(Platform.parse(f"cpu:native/{t}/llama.cpp"), MODEL)
    }
    if args.llama_server is None:
        from hspi.collector.llama_server import llama_server_binary
        from hspi.errors import ConfigError

        with contextlib.suppress(ConfigError):
            args.llama_server = llama_server_binary()
    if args.llama_server is not None:
        exports = Path("/tmp/hspi-llama-cpp-batching")
        servers["llama-server"] = lambda t: cpp_server(
            args.llama_server, export_gguf(MODEL, t, exports), exports / f"llama-server-{t}.log"
        )
    rows = []
    for name, serve in servers.items():
        for gguf_type in ("F32", "Q8_0"):
            with serve(gguf_type) as url:
                row = {"server": name, "gguf_type": gguf_type, "parallel": BURST if name == "llama-server" else 1}
                row.update(measure(url, prompts))
            print(row, flush=True)
            rows.append(row)
    cpu = cpu_info()
    result = {
        "benchmark": "llama-cpp-batching",
        "model": MODEL,
        "machine": {"cpu_model": cpu.get("cpu_model"), "cpu_vendor": cpu.get("cpu_vendor")},
        "rows": rows,
    }
    args.out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
