"""Reference models, defined in code with seeded weights: nothing is downloaded.

Every engine runs the same weights: torch builds them from the seed, ONNX Runtime runs an export
of the same module.  `forward` returns one output vector per probe (class logits, or the LM's
next-token logits at the last position).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hspi.errors import ConfigError

# attention knob -> torch.nn.attention.SDPBackend member: SDPA restricted to that one backend
SDPA_BACKENDS = {
    "sdpa-math": "MATH",
    "sdpa-flash": "FLASH_ATTENTION",
    "sdpa-efficient": "EFFICIENT_ATTENTION",
    "sdpa-cudnn": "CUDNN_ATTENTION",
}

if TYPE_CHECKING:
    import torch

MODEL_SEED = 20250101  # the weights are part of the reference: never change without a new version


@dataclass(frozen=True)
class ModelSpec:
    name: str
    version: str
    input_kind: str  # "vector" | "image" | "tokens"
    input_shape: tuple[int, ...]
    n_outputs: int
    has_attention: bool = False
    in_all: bool = True  # part of `--models all` (the torch grids' set)
    source: str = "builtin"  # "builtin" (code in this module) | "registered" (a card in the model registry)


MODEL_SPECS: dict[str, ModelSpec] = {
    "mlp": ModelSpec("mlp", "mlp-v1", "vector", (64,), 128),
    "cnn": ModelSpec("cnn", "cnn-v1", "image", (3, 16, 16), 100),
    "lm-small": ModelSpec("lm-small", "lm-small-v1", "tokens", (16,), 512, has_attention=True),
    # GPT-2's layout exactly (tanh GELU, no output bias), so llama.cpp runs the same weights from GGUF
    # named explicitly (it is the llama.cpp grid's model), so `all` keeps meaning the CPU dataset's models
    "lm-gpt2": ModelSpec("lm-gpt2", "lm-gpt2-v1", "tokens", (16,), 512, has_attention=True, in_all=False),
}


REGISTERED_PROMPT_TOKENS = 16  # a registered LM's probes: this many content tokens (a BOS may come first)
REGISTERED_PROMPTS_VERSION = "rp1"  # how collector/registered_prompts.py draws prompts: bump when it changes


# `NAME:chat`: a registered model asked through its chat template.  Its probes are the model's own, sent as
# one user message; its references are computed on the ids the template renders (another input, so other
# numbers: a reference set of its own, never mixed with the completions one)
CHAT_SUFFIX = ":chat"


def base_model(name: str) -> str:
    """The model a name refers to: `NAME:chat` is NAME's chat view."""
    return name.removesuffix(CHAT_SUFFIX)


def is_chat_view(name: str) -> bool:
    return name.endswith(CHAT_SUFFIX)


def model_spec(name: str) -> ModelSpec:
    """A built-in reference model, or a model registered with `hspi model add` (its card fixes the spec)."""
    if name in MODEL_SPECS:
        return MODEL_SPECS[name]
    from hspi.collector.registry import registered_card

    card = registered_card(base_model(name))
    if card is None:
        if is_chat_view(name) and base_model(name) in MODEL_SPECS:
            raise ConfigError(f"model {name!r}: built-in models have no chat template; use {base_model(name)!r}")
        raise ConfigError(
            f"unknown model {name!r}; built-in: {', '.join(MODEL_SPECS)}; or register one with `hspi model add`"
        )
    spec = _registered_spec(card.name, card.weights_sha256, card.tokenizer_sha256, card.vocab_size)
    if not is_chat_view(name):
        return spec
    if not card.chat_template:
        raise ConfigError(f"model {card.name!r} has no chat template in its tokenizer files: audit it with completions")
    template = hashlib.sha256(card.chat_template.encode("utf-8")).hexdigest()
    return dataclasses.replace(spec, name=name, version=f"{spec.version}-chat{template[:8]}")


def _registered_spec(name: str, weights: str, tokenizer: str | None, vocab: int | None) -> ModelSpec:
    if vocab is None or tokenizer is None:
        raise ConfigError(f"model {name!r} has no tokenizer and vocabulary in its card: it cannot be probed")
    # the version pins weights, tokenizer and prompt drawing: probes and references of others never mix
    version = f"{name}-w{weights[:12]}-t{tokenizer[:8]}-{REGISTERED_PROMPTS_VERSION}"
    return ModelSpec(
        name,
        version,
        "tokens",
        (REGISTERED_PROMPT_TOKENS,),
        vocab,
        has_attention=True,
        in_all=False,
        source="registered",
    )


def resolve_models(names: str) -> list[str]:
    """`all` or a comma-separated list, validated."""
    if names.strip() == "all":
        return [name for name, spec in MODEL_SPECS.items() if spec.in_all]
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    for name in chosen:
        model_spec(name)
    if not chosen:
        raise ConfigError("no model named: use 'all' or a comma-separated list of " + ", ".join(MODEL_SPECS))
    return chosen


def build_model(name: str, attention: str = "sdpa") -> torch.nn.Module:
    """The float32 reference module with its seeded weights, in eval mode."""
    import torch

    spec = model_spec(name)
    if spec.source == "registered":
        return _registered_module(name, attention)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(MODEL_SEED + sum(map(ord, spec.version)))
    try:
        if name == "mlp":
            module: torch.nn.Module = _mlp()
        elif name == "cnn":
            module = _cnn()
        elif name == "lm-gpt2":
            module = TinyDecoderLM(
                vocab=spec.n_outputs, seq_len=spec.input_shape[0], attention=attention, gpt2_layout=True
            )
        else:
            module = TinyDecoderLM(vocab=spec.n_outputs, seq_len=spec.input_shape[0], attention=attention)
    finally:
        torch.random.set_rng_state(generator_state)
    return module.eval()


# the reference modules' attention choices, in transformers' names (sdpa-math: sdpa under the math backend)
_HF_ATTENTION = {"sdpa": "sdpa", "sdpa-math": "sdpa", "manual": "eager"}


def _registered_module(name: str, attention: str) -> torch.nn.Module:
    """A registered Hugging Face causal LM in float32, taking content ids and returning the last position's logits."""
    import torch

    from hspi.collector.registry import load_registered, registered_card

    if attention not in _HF_ATTENTION:
        raise ConfigError(f"unknown attention {attention!r}; allowed: {', '.join(_HF_ATTENTION)}")
    card = registered_card(base_model(name))
    assert card is not None  # model_spec found it
    model, _ = load_registered(card)
    model.config._attn_implementation = _HF_ATTENTION[attention]

    class LastTokenLogits(torch.nn.Module):
        """ids (batch, tokens) -> logits (batch, vocab) at the last position.  The ids are what the model runs
        on: a BOS the tokenizer adds is already there (`PromptCodec.model_input`)."""

        def __init__(self) -> None:
            super().__init__()
            self.lm = model.float()

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            if attention == "sdpa-math":
                from torch.nn.attention import SDPBackend, sdpa_kernel

                with sdpa_kernel(SDPBackend.MATH):
                    return self.lm(input_ids=tokens, use_cache=False).logits[:, -1, :]
            return self.lm(input_ids=tokens, use_cache=False).logits[:, -1, :]

    return LastTokenLogits().eval()


def _mlp() -> torch.nn.Module:
    import torch.nn as nn

    module = nn.Sequential(nn.Linear(64, 512), nn.GELU(), nn.Linear(512, 512), nn.GELU(), nn.Linear(512, 128))
    _spread_logits(module[-1])  # type: ignore[arg-type]  # the last layer is the Linear head
    return module


def _cnn() -> torch.nn.Module:
    import torch.nn as nn

    module = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 100),
    )
    _spread_logits(module[-1])  # type: ignore[arg-type]  # the last layer is the Linear head
    return module


def _spread_logits(layer: torch.nn.Linear, target_std: float = 2.0) -> None:
    """Scale a seeded output layer so logits spread like a trained model's (a few nats), not ~0."""
    import torch

    with torch.no_grad():
        layer.weight.mul_(target_std / 0.07)
        layer.bias.mul_(target_std / 0.07)


def _lm_classes() -> tuple[type, type]:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class Block(nn.Module):
        def __init__(self, dim: int, heads: int, attention: str, gelu: str = "none") -> None:
            super().__init__()
            self.heads, self.attention = heads, attention
            self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
            self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(approximate=gelu), nn.Linear(4 * dim, dim))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, t, d = x.shape
            q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
            if self.attention == "manual":
                scores = (q @ k.transpose(-2, -1)) / math.sqrt(d // self.heads)
                mask = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
                att = torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1) @ v
            elif self.attention in SDPA_BACKENDS:
                from torch.nn.attention import SDPBackend, sdpa_kernel

                with sdpa_kernel(getattr(SDPBackend, SDPA_BACKENDS[self.attention])):  # that backend or an error
                    att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:
                att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.proj(att.transpose(1, 2).reshape(b, t, d))
            return x + self.mlp(self.norm2(x))

    class LM(nn.Module):
        """A 4-layer decoder-only LM over a 512-token vocabulary (no tokenizer needed: ids are the input)."""

        def __init__(
            self,
            vocab: int,
            seq_len: int,
            attention: str,
            dim: int = 128,
            layers: int = 4,
            heads: int = 4,
            gpt2_layout: bool = False,
        ) -> None:
            super().__init__()
            self.embed = nn.Embedding(vocab, dim)
            self.pos = nn.Parameter(torch.randn(seq_len, dim) * 0.02)
            gelu = "tanh" if gpt2_layout else "none"
            self.blocks = nn.ModuleList(Block(dim, heads, attention, gelu) for _ in range(layers))
            self.norm = nn.LayerNorm(dim)
            self.head = nn.Linear(dim, vocab, bias=not gpt2_layout)
            with torch.no_grad():  # spread the logits like a trained LM's (std of a few nats)
                self.head.weight.mul_(4.0)

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            x = self.embed(tokens) + self.pos[: tokens.shape[1]]
            for block in self.blocks:
                x = block(x)
            return self.head(self.norm(x[:, -1, :]))

    return Block, LM


def TinyDecoderLM(vocab: int, seq_len: int, attention: str, gpt2_layout: bool = False) -> Any:  # noqa: N802 - a factory named as the class it builds
    allowed = ("sdpa", *SDPA_BACKENDS, "manual")
    if attention not in allowed:
        raise ConfigError(f"unknown attention {attention!r}; allowed: {', '.join(allowed)}")
    _, lm = _lm_classes()
    return lm(vocab, seq_len, attention, gpt2_layout=gpt2_layout)
