"""The built-in reference models in JAX/XLA, on the same weights as torch (engine `jax`).

    jax_runner(module, model, dtype, device) -> run(batch: np.ndarray) -> np.ndarray

The weights are the seeded torch module's (`collector.models.build_model`), read once from its state
dict and cast to the platform's dtype, so the two engines compute the same function and differ only
in how XLA compiles and rounds it (its own matmul, convolution and reduction kernels, its own fusion).
Each model is written from its torch definition, op for op: `mlp` (exact-erf GELU), `cnn` (NCHW
convolutions, a mean over the spatial axes), and the decoder LMs (`lm-small`, `lm-gpt2`: pre-norm
blocks, causal attention with the softmax in the working dtype, the last position's logits).  One
`jax.jit` per model; XLA compiles once per batch shape.

JAX picks its backend when first imported: the worker is a fresh process per configuration, and
`jax_runner` sets `JAX_PLATFORMS` (cpu or cuda) before that import, so a CPU platform never touches a
GPU and a CUDA one never silently falls back to the CPU.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from hspi.errors import ConfigError

JAX_MODELS = ("mlp", "cnn", "lm-small", "lm-gpt2")
LM_HEADS = 4  # collector.models' decoder LMs


def _params(module: Any) -> dict[str, np.ndarray]:
    return {name: t.detach().cpu().numpy().astype(np.float32) for name, t in module.state_dict().items()}


def _mlp(p: dict[str, Any], jnp: Any, jax: Any) -> Callable[[Any], Any]:
    def linear(x: Any, i: int) -> Any:
        return x @ p[f"{i}.weight"].T + p[f"{i}.bias"]

    def forward(x: Any) -> Any:
        x = jax.nn.gelu(linear(x, 0), approximate=False)
        x = jax.nn.gelu(linear(x, 2), approximate=False)
        return linear(x, 4)

    return forward


def _cnn(p: dict[str, Any], jnp: Any, jax: Any) -> Callable[[Any], Any]:
    def conv(x: Any, i: int, stride: int) -> Any:
        y = jax.lax.conv_general_dilated(
            x, p[f"{i}.weight"], (stride, stride), ((1, 1), (1, 1)), dimension_numbers=("NCHW", "OIHW", "NCHW")
        )
        return y + p[f"{i}.bias"][None, :, None, None]

    def forward(x: Any) -> Any:
        x = jax.nn.relu(conv(x, 0, 1))
        x = jax.nn.relu(conv(x, 2, 2))
        x = jax.nn.relu(conv(x, 4, 2))
        x = jnp.mean(x, axis=(2, 3))
        return x @ p["8.weight"].T + p["8.bias"]

    return forward


def _lm(p: dict[str, Any], jnp: Any, jax: Any, *, gpt2_layout: bool) -> Callable[[Any], Any]:
    layers = len({k.split(".")[1] for k in p if k.startswith("blocks.")})

    def layer_norm(x: Any, name: str) -> Any:  # torch's LayerNorm: biased variance, eps 1e-5
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
        return (x - mean) / jnp.sqrt(var + 1e-5) * p[f"{name}.weight"] + p[f"{name}.bias"]

    def linear(x: Any, name: str) -> Any:
        y = x @ p[f"{name}.weight"].T
        return y + p[f"{name}.bias"] if f"{name}.bias" in p else y

    def block(x: Any, i: int) -> Any:
        b, t, d = x.shape
        head = d // LM_HEADS
        qkv = linear(layer_norm(x, f"blocks.{i}.norm1"), f"blocks.{i}.qkv").reshape(b, t, 3, LM_HEADS, head)
        q, k, v = (qkv[:, :, j].transpose(0, 2, 1, 3) for j in range(3))
        scores = (q @ k.transpose(0, 1, 3, 2)) / jnp.asarray(math.sqrt(head), dtype=x.dtype)
        causal = jnp.triu(jnp.ones((t, t), dtype=bool), 1)
        scores = jnp.where(causal, jnp.asarray(-jnp.inf, dtype=x.dtype), scores)
        att = jax.nn.softmax(scores, axis=-1) @ v
        x = x + linear(att.transpose(0, 2, 1, 3).reshape(b, t, d), f"blocks.{i}.proj")
        hidden = jax.nn.gelu(linear(layer_norm(x, f"blocks.{i}.norm2"), f"blocks.{i}.mlp.0"), approximate=gpt2_layout)
        return x + linear(hidden, f"blocks.{i}.mlp.2")

    def forward(tokens: Any) -> Any:
        x = p["embed.weight"][tokens] + p["pos"][: tokens.shape[1]]
        for i in range(layers):
            x = block(x, i)
        return linear(layer_norm(x[:, -1, :], "norm"), "head")

    return forward


def jax_runner(module: Any, model: str, dtype: str, device: str) -> Callable[[np.ndarray], np.ndarray]:
    """`run(batch)` for the model under JAX: float inputs and weights in `dtype`, outputs as numpy in it."""
    if model not in JAX_MODELS:
        raise ConfigError(f"engine jax runs the built-in models {', '.join(JAX_MODELS)}, not {model}")
    os.environ["JAX_PLATFORMS"] = "cuda" if device == "cuda" else "cpu"
    # JAX takes 75 % of a GPU's memory up front by default; collections run several workers on one GPU
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax
    import jax.numpy as jnp

    working = {"fp32": jnp.float32, "bf16": jnp.bfloat16, "fp16": jnp.float16}[dtype]
    params = {name: jnp.asarray(value, dtype=working) for name, value in _params(module).items()}
    if model == "mlp":
        forward = _mlp(params, jnp, jax)
    elif model == "cnn":
        forward = _cnn(params, jnp, jax)
    else:
        forward = _lm(params, jnp, jax, gpt2_layout=model == "lm-gpt2")
    compiled = jax.jit(forward)

    def run(batch: np.ndarray) -> np.ndarray:
        x = jnp.asarray(batch) if batch.dtype.kind in "iu" else jnp.asarray(batch, dtype=working)
        y = compiled(x)
        return np.asarray(jax.device_get(y))

    return run
