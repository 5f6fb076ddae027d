"""`hspi target serve`: a loopback OpenAI-compatible server running a reference model on one platform.

It is a *known* target for audits: the same seeded model under any platform of the grid, with the
tier it exposes capped (`top_logprobs` 20, 5, 1 = sampled token only, 0 = text only).  Batching is
either static (every forward pass has exactly the platform's batch size, padded with a fixed filler
probe, as a fixed-shape server runs) or dynamic (requests that arrive within a short window run
together, as production servers do, so a request's batch-mates change from call to call).

Two options change what the server does to the model's logits before its float32 log-softmax, to be
known targets of the model-agnostic precision check: `logits_cast` rounds them through one of torch's
float8 dtypes on this CPU (a server whose logits are fp8 values), `temperature_before_softmax` divides
them by a temperature in float32 (a post-processing server: the values then fit no format's grid).
`sampling_temperature` makes the server sample every token at its own temperature whatever the request
asks, from one generator for the server's life (`sampling_seed` makes a run repeatable) (a provider that overrides the client's temperature): a known target whose answers vary from
call to call, for the audit's repeat check (audit.repeat_check).

The platform's load-time knobs (ISA caps) must be in this process's environment before torch loads:
the CLI re-executes itself with them.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from hspi.collector.models import CHAT_SUFFIX, model_spec
from hspi.collector.probes import ProbeSet
from hspi.collector.prompt_codec import ChatCodec, codec_for
from hspi.collector.targets.local import LocalTarget
from hspi.errors import ConfigError, HspiError
from hspi.features.tiers import log_softmax_f32, top_ids
from hspi.platform import Platform
from hspi.responses import bfloat16_bits_to_float32

MAX_NEW_TOKENS = 16
REGISTERED_MAX_PROMPT = 64  # tokens of a prompt to a registered model (its probes have 16)
TIER_CAPS = (0, 1, 5, 20)
LOGITS_CASTS = {"fp8-e4m3": "float8_e4m3fn", "fp8-e5m2": "float8_e5m2"}  # format name: torch dtype


def served_logits(logits: np.ndarray, cast: str | None, temperature: float | None) -> np.ndarray:
    """The float32 logits the log-softmax and the sampler see: the model's, rounded through a torch float8
    dtype (round-to-nearest-even, as torch casts) and back, then divided by a temperature in float32."""
    if cast is not None:
        import torch

        rows = torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32))
        logits = rows.to(getattr(torch, LOGITS_CASTS[cast])).to(torch.float32).numpy()
    if temperature is not None:
        logits = np.asarray(logits, dtype=np.float32) / np.float32(temperature)
    return logits


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI clients send fields a reference server ignores
    model: str | None = None
    prompt: str | list[int]
    max_tokens: int = Field(default=16, ge=1, le=MAX_NEW_TOKENS)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    logprobs: int | None = Field(default=None, ge=0, le=20)
    seed: int | None = None


class ChatMessage(BaseModel):
    role: str
    content: str


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int = Field(default=16, ge=1, le=MAX_NEW_TOKENS)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    seed: int | None = None


class LogitsRequest(BaseModel):
    inputs: list[Any] = Field(min_length=1, max_length=64)


class BadRequest(Exception):
    """A client's mistake: answered as HTTP 400 with OpenAI's error shape."""


class ForwardRunner:
    """Runs the model in one thread, in static (padded) or dynamic batches."""

    def __init__(
        self, target: LocalTarget, *, dynamic: bool, max_batch: int, window_s: float, filler: np.ndarray
    ) -> None:
        self.target, self.dynamic, self.max_batch, self.window_s = target, dynamic, max_batch, window_s
        self.filler = filler
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forward")
        self.queue: asyncio.Queue | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._batcher_task: asyncio.Task | None = None  # referenced, so it is not garbage-collected
        self.batch_sizes: list[int] = []  # what ran, for tests and the evaluation

    def _forward(self, rows: np.ndarray) -> np.ndarray:
        native = self.target.run_inputs(rows)
        if self.target.native_dtype == "bfloat16":
            return bfloat16_bits_to_float32(native)
        return native.astype(np.float32)

    async def run(self, row: np.ndarray) -> np.ndarray:
        loop = asyncio.get_running_loop()
        if not self.dynamic:
            size = self.target.platform.batch_size
            # a prompt of another length gets a filler of its length (cut, or repeated for a longer one)
            filler = self.filler if row.shape == self.filler.shape else np.resize(self.filler, row.shape)
            batch = np.concatenate([row[None], np.repeat(filler[None], size - 1, axis=0)])
            self.batch_sizes.append(size)
            return (await loop.run_in_executor(self.executor, self._forward, batch))[0]
        if self.queue is None or self._loop is not loop:  # one batcher per event loop
            self.queue, self._loop = asyncio.Queue(), loop
            self._batcher_task = asyncio.create_task(self._batcher())
        future: asyncio.Future = loop.create_future()
        await self.queue.put((row, future))
        return await future

    async def _batcher(self) -> None:
        assert self.queue is not None
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            deadline = loop.time() + self.window_s
            while len(items) < self.max_batch:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    items.append(await asyncio.wait_for(self.queue.get(), timeout))
                except TimeoutError:
                    break
            groups: dict[tuple, list] = {}
            for item in items:  # prompts of different lengths cannot share a forward pass
                groups.setdefault(item[0].shape, []).append(item)
            for group in groups.values():
                self.batch_sizes.append(len(group))
                try:
                    out = await loop.run_in_executor(self.executor, self._forward, np.stack([r for r, _ in group]))
                except Exception as exc:  # every waiting request learns of the failure
                    for _, future in group:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for i, (_, future) in enumerate(group):
                    if not future.done():  # a request cancelled meanwhile must not stop the batcher
                        future.set_result(out[i])


def create_target_app(
    model: str,
    platform: Platform,
    *,
    top_logprobs: int = 20,
    dynamic_batching: bool = False,
    max_batch: int = 8,
    batch_window_ms: float = 5.0,
    logits_cast: str | None = None,
    temperature_before_softmax: float | None = None,
    sampling_temperature: float | None = None,
    sampling_seed: int | None = None,
) -> FastAPI:
    spec = model_spec(model)
    if top_logprobs not in TIER_CAPS:
        raise ConfigError(f"top_logprobs cap {top_logprobs} is not one of {TIER_CAPS}")
    if logits_cast is not None and logits_cast not in LOGITS_CASTS:
        raise ConfigError(f"logits cast {logits_cast!r} is not one of {', '.join(LOGITS_CASTS)}")
    if temperature_before_softmax is not None and not 0.05 <= temperature_before_softmax <= 20:
        raise ConfigError(f"temperature before the softmax {temperature_before_softmax:g} is not in 0.05..20")
    if sampling_temperature is not None and not 0.05 <= sampling_temperature <= 2:
        raise ConfigError(f"sampling temperature {sampling_temperature:g} is not in 0.05..2")
    target = LocalTarget(model, platform)
    # one generator for the server's life: draws differ from call to call, and a seed makes a run repeatable
    server_rng = np.random.default_rng(sampling_seed)
    codec = codec_for(model) if spec.input_kind == "tokens" else None
    max_prompt = REGISTERED_MAX_PROMPT if spec.source == "registered" else spec.input_shape[0]
    filler = ProbeSet(spec, "pool", 1).inputs(np.array([0]))[0]
    if codec is not None:
        filler = codec.model_input(filler)
    runner = ForwardRunner(
        target, dynamic=dynamic_batching, max_batch=max_batch, window_s=batch_window_ms / 1000, filler=filler
    )
    counter = itertools.count(1)
    app = FastAPI(
        title="hspi reference target",
        version="1",
        description=f"{model} on {platform.id}; logprobs capped at {top_logprobs}",
    )
    app.state.runner = runner

    @app.exception_handler(BadRequest)
    async def _bad(_: Request, exc: BadRequest) -> JSONResponse:
        return JSONResponse({"error": {"message": str(exc), "type": "invalid_request_error"}}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return JSONResponse(
            {"error": {"message": f"{where}: {first.get('msg')}", "type": "invalid_request_error"}}, status_code=400
        )

    @app.exception_handler(HspiError)
    async def _hspi(_: Request, exc: HspiError) -> JSONResponse:
        return JSONResponse({"error": {"message": str(exc), "type": "server_error"}}, status_code=500)

    def prompt_ids(prompt: str | list[int]) -> np.ndarray:
        assert codec is not None
        try:
            ids = codec.encode(prompt) if isinstance(prompt, str) else np.asarray(prompt, dtype=np.int64)
        except HspiError as exc:
            raise BadRequest(str(exc)) from None
        if not 1 <= len(ids) <= max_prompt:
            raise BadRequest(f"a prompt has 1 to {max_prompt} tokens, this one has {len(ids)}")
        if platform.engine.startswith("onnxruntime") and len(ids) != spec.input_shape[0]:
            # the ONNX export's sequence length is fixed (a dynamic one would change ONNX Runtime's kernels)
            raise BadRequest(f"{platform.id} runs the ONNX export: a prompt has exactly {spec.input_shape[0]} tokens")
        if ((ids < 0) | (ids >= spec.n_outputs)).any():
            raise BadRequest(f"token ids must be in 0..{spec.n_outputs - 1}")
        return ids

    def completion_input(window: list[int]) -> np.ndarray:
        assert codec is not None
        return codec.model_input(np.asarray(window[-max_prompt:], dtype=np.int64))

    def chat_prompt(messages: list[ChatMessage]) -> tuple[np.ndarray, Callable[[list[int]], np.ndarray]]:
        """A registered model's chat request: its chat template around one user message, the rendered ids being
        what the model runs on (`NAME:chat`'s references are computed on the same ids)."""
        if len(messages) != 1 or messages[0].role != "user":
            raise BadRequest(f"{model}: chat is served for one user message")
        if dynamic_batching:  # chat ids have another length than the batcher's completion-sized filler
            raise BadRequest(f"{model}: chat is not served under --dynamic-batching; use /v1/completions")
        try:
            chat = codec_for(f"{model}{CHAT_SUFFIX}")
        except ConfigError as exc:  # no chat template: the client's request cannot be served as asked
            raise BadRequest(str(exc)) from None
        assert isinstance(chat, ChatCodec)  # a chat view's codec (prompt_codec.codec_for)
        prompt_ids(messages[0].content)  # the same checks as a completion's prompt
        return chat.chat_ids(messages[0].content), lambda window: np.asarray(window, dtype=np.int64)

    async def generate(
        ids: np.ndarray,
        max_tokens: int,
        temperature: float,
        seed: int | None,
        as_input: Callable[[list[int]], np.ndarray] = completion_input,
    ) -> list[tuple[int, np.ndarray]]:
        """(token, float32 log-probabilities it was drawn from) per generated token; `as_input` turns the
        window (the prompt and the tokens so far) into the ids the model runs on (default: a 16-token window)."""
        rng = np.random.default_rng(seed)
        if sampling_temperature is not None:  # the server's own temperature and draws, whatever was asked
            temperature, rng = sampling_temperature, server_rng
        window, out = list(ids), []
        for _ in range(max_tokens):
            logits = await runner.run(as_input(window))
            logits = served_logits(logits, logits_cast, temperature_before_softmax)
            logprobs = log_softmax_f32(logits[None])[0]
            if temperature == 0:
                token = int(top_ids(logprobs[None], 1)[0, 0])
            else:
                p = np.exp((logits.astype(np.float64) - logits.max()) / temperature)
                token = int(rng.choice(len(p), p=p / p.sum()))
            out.append((token, logprobs))
            window.append(token)
        return out

    def check_logprobs(asked: int | None) -> None:
        if asked is None:
            return
        if top_logprobs == 0:
            raise BadRequest("this endpoint returns no logprobs")
        if asked > top_logprobs:
            raise BadRequest(f"logprobs must be at most {top_logprobs}")

    def alternatives(logprobs: np.ndarray, k: int) -> list[tuple[str, float]]:
        ids = top_ids(logprobs[None], k)[0]
        assert codec is not None
        return [(codec.token_text(int(i)), float(logprobs[i])) for i in ids]

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": model, "object": "model", "owned_by": "hspi"}]}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest) -> dict:
        if spec.input_kind != "tokens":
            raise BadRequest(f"{model} is not a language model: POST /v1/logits")
        check_logprobs(body.logprobs)
        ids = prompt_ids(body.prompt)
        generated = await generate(ids, body.max_tokens, body.temperature, body.seed)
        texts = [codec.token_text(t) for t, _ in generated]  # type: ignore[union-attr]  # an LM has a codec
        logprobs = None
        if body.logprobs is not None:
            k = body.logprobs
            logprobs = {
                "tokens": texts,
                "token_logprobs": [float(lp[t]) for t, lp in generated],
                "top_logprobs": [dict(alternatives(lp, k)) for _, lp in generated]
                if k > 0 and top_logprobs > 1
                else None,
                "text_offset": [len(ids) + i for i in range(len(texts))],
            }
        return {
            "id": f"cmpl-{next(counter)}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "text": "".join(texts), "logprobs": logprobs, "finish_reason": "length"}],
            "usage": {
                "prompt_tokens": len(ids),
                "completion_tokens": len(texts),
                "total_tokens": len(ids) + len(texts),
            },
        }

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest) -> dict:
        if spec.input_kind != "tokens":
            raise BadRequest(f"{model} is not a language model: POST /v1/logits")
        if spec.source == "registered":
            ids, as_input = chat_prompt(body.messages)
        else:  # no chat template: the messages' text is the prompt, so pool probes stay pool probes
            ids, as_input = prompt_ids("".join(m.content for m in body.messages)), completion_input
        if body.logprobs:
            check_logprobs(body.top_logprobs or 0)
        generated = await generate(ids, body.max_tokens, body.temperature, body.seed, as_input)
        texts = [codec.token_text(t) for t, _ in generated]  # type: ignore[union-attr]  # an LM has a codec
        logprobs = None
        if body.logprobs:
            k = body.top_logprobs or 0
            logprobs = {
                "content": [
                    {
                        "token": text,
                        "logprob": float(lp[t]),
                        "bytes": list(text.encode()),
                        "top_logprobs": [
                            {"token": a, "logprob": v, "bytes": list(a.encode())} for a, v in alternatives(lp, k)
                        ]
                        if k > 0 and top_logprobs > 1
                        else [],
                    }
                    for text, (t, lp) in zip(texts, generated)
                ]
            }
        return {
            "id": f"chatcmpl-{next(counter)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(texts)},
                    "logprobs": logprobs,
                    "finish_reason": "length",
                }
            ],
            "usage": {
                "prompt_tokens": len(ids),
                "completion_tokens": len(texts),
                "total_tokens": len(ids) + len(texts),
            },
        }

    @app.post("/v1/logits")
    async def logits(body: LogitsRequest) -> dict:
        """Plain inputs in, logits out (vision-style endpoints): the `logits` tier."""
        try:
            raw = np.asarray(body.inputs, dtype=np.float64)
        except (ValueError, TypeError):
            raise BadRequest("inputs must be a nested list of numbers") from None
        if raw.shape[1:] != spec.input_shape:
            raise BadRequest(f"each input must have shape {list(spec.input_shape)}, got {list(raw.shape[1:])}")
        # checked before the model runs: a bad row must not fail the batch-mates it would run with
        if spec.input_kind == "tokens":
            if not (np.isfinite(raw) & (raw == np.round(raw)) & (raw >= 0) & (raw < spec.n_outputs)).all():
                raise BadRequest(f"token ids must be integers in 0..{spec.n_outputs - 1}")
            inputs = raw.astype(np.int64)
        else:
            with np.errstate(over="ignore"):
                inputs = raw.astype(np.float32)  # each JSON number rounds once, float64 -> float32
            if not np.isfinite(inputs).all():
                raise BadRequest("inputs must be finite float32 numbers (no NaN, Infinity or overflow)")
        rows = [await runner.run(x) for x in inputs]
        return {"model": model, "logits": [[float(v) for v in r] for r in rows]}

    return app
