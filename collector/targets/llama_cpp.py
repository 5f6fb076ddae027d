"""`LlamaCppTarget`: the GGUF export of a reference LM run by llama.cpp (llama-cpp-python) in-process.

Each probe is evaluated from an empty KV cache: the cache is cleared and the token count reset
before every probe.  llama-cpp-python otherwise keeps the previous prompt's cache and evaluates
only the new suffix (a repeated prompt only its last token), along another code path with other
numbers, so an answer would depend on the probe asked before it.

The context is built exactly as `python -m llama_cpp.server` builds it for the same platform
(`logits_all=True`, the same n_ctx, n_batch = n_ubatch, flash attention, KV-cache type, threads),
so these logits are the ones the server turns into logprobs (`features/logprob_conventions.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from hspi.collector.gguf_export import (
    CONTEXT_LENGTH,
    GGUF_MODELS,
    export_gguf,
    file_sha256,
    import_llama_cpp,
    quiet_llama_logs,
)
from hspi.collector.models import model_spec
from hspi.collector.probes import ProbeSet
from hspi.collector.targets.base import Target
from hspi.errors import ConfigError, TargetError
from hspi.platform import GGUF_TYPES, Platform
from hspi.responses import Responses

N_CTX = CONTEXT_LENGTH  # every position the GGUF declares; the server is started with the same
KV_GGML_TYPES = {"f32": 0, "f16": 1, "q8_0": 8}  # ggml_type values (ggml.h) for type_k / type_v
DEFAULT_KV_TYPE = "f16"  # llama.cpp's default: a platform states it by leaving kv out


def check_llama_cpp_supported(platform: Platform, model: str) -> None:
    """Refuse what llama.cpp cannot run or what would name one configuration twice, naming the value."""
    model_spec(model)
    if model not in GGUF_MODELS:
        raise ConfigError(f"{platform.id}: llama.cpp runs {', '.join(GGUF_MODELS)} only, not {model!r}")
    if platform.dtype not in GGUF_TYPES:
        raise ConfigError(
            f"{platform.id}: llama.cpp takes a GGUF type ({', '.join(GGUF_TYPES)}), not {platform.dtype!r}"
        )
    if platform.profile != "native":
        raise ConfigError(
            f"{platform.id}: CPU profile {platform.profile!r} caps torch's libraries, not llama.cpp; use profile native"
        )
    torch_knobs = {
        "attn": platform.attention != "sdpa",
        "qengine": platform.quant_engine is not None,
        "mm": platform.matmul_precision != "highest",
        "mkl-cbwr": platform.mkl_cbwr is not None,
    }
    for knob, set_ in torch_knobs.items():
        if set_:
            raise ConfigError(f"{platform.id}: knob {knob!r} is a torch knob; llama.cpp has no such setting")
    if platform.kv_type == DEFAULT_KV_TYPE:
        raise ConfigError(f"{platform.id}: kv={DEFAULT_KV_TYPE} is llama.cpp's default; leave kv out of the id")
    if platform.kv_type == "q8_0" and not platform.flash_attn:
        raise ConfigError(f"{platform.id}: a quantised V cache (kv=q8_0) needs flash attention (fa=on)")
    if platform.batch_size > N_CTX:
        raise ConfigError(f"{platform.id}: batch size {platform.batch_size} exceeds the context of {N_CTX}")


class LlamaCppTarget(Target):
    kind: ClassVar[str] = "llama.cpp"

    def __init__(self, model: str, platform: Platform, *, export_dir: Path | None = None) -> None:
        check_llama_cpp_supported(platform, model)
        self.model, self.platform, self.export_dir = model, platform, export_dir
        self.spec = model_spec(model)
        self._llama: Any = None
        self._gguf: Path | None = None

    @property
    def gguf_file(self) -> Path:
        if self._gguf is None:
            self._gguf = export_gguf(self.model, self.platform.dtype, self.export_dir)
        return self._gguf

    def _load(self) -> Any:
        llama_cpp = import_llama_cpp()
        quiet_llama_logs()
        try:
            return llama_cpp.Llama(model_path=str(self.gguf_file), verbose=False, **llama_kwargs(self.platform))
        except (ValueError, RuntimeError) as exc:  # llama.cpp refused the file or the context
            raise TargetError(f"{self.platform.id}: llama.cpp could not load {self.gguf_file.name}: {exc}") from exc

    def answer(self, probes: ProbeSet, ids: np.ndarray) -> Responses:
        if probes.spec.name != self.model:
            raise ConfigError(f"probe set {probes.version} is not for model {self.model}")
        rows = np.empty((len(ids), self.spec.n_outputs), dtype=np.float32)
        for row, tokens in enumerate(probes.inputs(ids)):
            rows[row] = self.fresh_logits(tokens.tolist())
        responses = Responses(self.model, probes.version, ids.astype(np.int32), rows, "float32")
        if not np.isfinite(rows).all():
            raise TargetError(f"{self.platform.id} produced NaN/Inf outputs on {self.model}")
        return responses

    def fresh_logits(self, tokens: list[int]) -> np.ndarray:
        """Next-token logits after `tokens`, evaluated from an empty KV cache."""
        if self._llama is None:
            self._llama = self._load()
        llama = self._llama
        llama.reset()  # forget the previous prompt: no prefix reuse
        # and free every KV cell (reset alone measured the same; this keeps cell placement out of it)
        llama._ctx.kv_cache_clear()
        try:
            llama.eval(tokens)
        except RuntimeError as exc:
            raise TargetError(f"{self.platform.id} failed on {self.model}: {exc}") from exc
        return np.array(llama.scores[len(tokens) - 1], dtype=np.float32)

    def provenance(self) -> dict[str, Any]:
        """What llama.cpp says it is and runs with: version, compiled CPU features, the GGUF's hash."""
        llama_cpp = import_llama_cpp()
        return {
            "llama_cpp_python": llama_cpp.__version__,
            "llama_cpp_system_info": llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip(),
            "gguf_file": self.gguf_file.name,
            "gguf_sha256": file_sha256(self.gguf_file),
            "context": llama_kwargs(self.platform),
        }


def llama_kwargs(platform: Platform) -> dict[str, Any]:
    """The `llama_cpp.Llama` settings of a platform; the server launcher passes the same ones."""
    kv = KV_GGML_TYPES[platform.kv_type or DEFAULT_KV_TYPE]
    return {
        "n_ctx": N_CTX,
        "n_batch": platform.batch_size,
        "n_ubatch": platform.batch_size,
        "n_threads": platform.threads,
        "n_threads_batch": platform.threads,
        "flash_attn": platform.flash_attn,
        "type_k": kv,
        "type_v": kv,
        "logits_all": True,
    }


def llama_cpp_available() -> bool:
    """True where llama-cpp-python imports (tests skip with a reason otherwise)."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True
