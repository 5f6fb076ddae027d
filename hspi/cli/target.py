"""`hspi target serve`: a reference model on one platform of the grid, as an OpenAI-compatible endpoint."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from hspi.cli.app import err, target_app
from hspi.errors import ConfigError


@target_app.command("serve")
def target_serve(
    model: Annotated[str, typer.Option(help="model to serve: built-in or registered (hspi model add)")] = "lm-small",
    platform: Annotated[
        str, typer.Option(help="platform id, e.g. cpu:avx2/bf16/torch-eager")
    ] = "cpu:native/fp32/torch-eager",
    host: Annotated[str, typer.Option(help="address to bind (loopback by default)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8801,
    top_logprobs: Annotated[int, typer.Option(help="tier cap: 20, 5, 1 (sampled token only) or 0 (text only)")] = 20,
    dynamic_batching: Annotated[bool, typer.Option(help="run requests that arrive together as one batch")] = False,
    max_batch: Annotated[int, typer.Option(help="largest dynamic batch")] = 8,
    batch_window_ms: Annotated[float, typer.Option(help="how long a dynamic batch waits for company")] = 5.0,
    logits_dtype: Annotated[
        Optional[str],
        typer.Option(help="round the logits through a torch float8 dtype before the log-softmax: fp8-e4m3 or fp8-e5m2"),
    ] = None,
    temperature_before_softmax: Annotated[
        Optional[float], typer.Option(help="divide the logits by this temperature before the log-softmax")
    ] = None,
    sampling_temperature: Annotated[
        Optional[float],
        typer.Option(help="sample every token at this temperature, ignoring the request's (and its seed)"),
    ] = None,
    sampling_seed: Annotated[
        Optional[int], typer.Option(help="seed the sampler's one generator (default: fresh entropy)")
    ] = None,
) -> None:
    """An OpenAI-compatible endpoint running a reference model on one platform of the grid."""
    import os

    from hspi.collector.models import model_spec
    from hspi.collector.target_server import TIER_CAPS
    from hspi.platform import Platform

    parsed = Platform.parse(platform)
    model_spec(model)
    if top_logprobs not in TIER_CAPS:
        raise ConfigError(f"--top-logprobs {top_logprobs}: allowed {', '.join(map(str, TIER_CAPS))}")
    if not 1 <= port <= 65535:
        raise ConfigError(f"--port {port} is not a TCP port")
    wanted = parsed.environment()
    if any(os.environ.get(k) != v for k, v in wanted.items()):
        # ISA caps are read when torch loads: start again in a process that has them from the start
        from hspi.collector.local_run import LOAD_TIME_VARIABLES

        env = {k: v for k, v in os.environ.items() if k not in LOAD_TIME_VARIABLES}
        env.update(wanted)
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, "-m", "hspi", *sys.argv[1:]], env)
    import uvicorn

    from hspi.collector.target_server import create_target_app

    app_ = create_target_app(
        model,
        parsed,
        top_logprobs=top_logprobs,
        dynamic_batching=dynamic_batching,
        max_batch=max_batch,
        batch_window_ms=batch_window_ms,
        logits_cast=logits_dtype,
        temperature_before_softmax=temperature_before_softmax,
        sampling_temperature=sampling_temperature,
        sampling_seed=sampling_seed,
    )
    post = (
        (f", logits as {logits_dtype}" if logits_dtype else "")
        + (f", logits / {temperature_before_softmax:g} before the softmax" if temperature_before_softmax else "")
        + (f", sampling at temperature {sampling_temperature:g} whatever is asked" if sampling_temperature else "")
    )
    err.print(
        f"serving {model} on {parsed.id} at http://{host}:{port}/v1 (logprobs cap {top_logprobs}"
        f"{', dynamic batching' if dynamic_batching else ''}{post})"
    )
    uvicorn.run(app_, host=host, port=port, log_level="warning")
