"""`LlamaCppTarget`: the GGUF export of a reference LM run by llama.cpp (llama-cpp-python) in-process.

Each probe is evaluated from an empty KV cache: the cache is cleared and the token count reset
before every probe.  llama-cpp-python otherwise keeps the previous prompt's cache and evaluates
only the new suffix (a repeated prompt only its last token), along another code path with other
numbers, so an answer would depend on the probe asked before it.

The context is built exactly as `python -m llama_cpp.server` builds it for the same platform
(`logits_all=True`, the same n_ctx, n_batch = n_ubatch, flash attention, KV-cache type, threads),
so these logits are the ones the server turns into logprobs (`features/logprob_conventions.py`).

A platform with slots (`/slots=N`) is llama.cpp's C++ `llama-server --parallel N` instead: a context of N
sequences, one KV stream each, logits of a prompt's last position only (`collector.llama_cpp_slots`),
shown through that server's own logprob arithmetic (`Platform.logprob_convention`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from hspi.collector.gguf_export import (
    CONTEXT_LENGTH,
    check_gguf_model,
    export_gguf,
    file_sha256,
    import_llama_cpp,
    quiet_llama_logs,
    registered_head_size,
)
from hspi.collector.llama_cpp_slots import SlotContext
from hspi.collector.models import is_chat_view, model_spec
from hspi.collector.probes import ProbeSet
from hspi.collector.prompt_codec import ChatCodec, codec_for
from hspi.collector.targets.base import Target
from hspi.errors import ConfigError, TargetError
from hspi.platform import GGUF_TYPES, Platform
from hspi.responses import Responses

N_CTX = CONTEXT_LENGTH  # every position the GGUF declares; the server is started with the same
# a registered model's context: room for a probe inside a chat template (an argument of the server too, so
# references and server run the same KV-cache size)
REGISTERED_N_CTX = 128
KV_GGML_TYPES = {"f32": 0, "f16": 1, "q8_0": 8}  # ggml_type values (ggml.h) for type_k / type_v
Q8_0_BLOCK = 32  # values per q8_0 block: a quantised KV cache's rows are whole blocks
DEFAULT_KV_TYPE = "f16"  # llama.cpp's default: a platform states it by leaving kv out


def check_llama_cpp_supported(platform: Platform, model: str) -> None:
    """Refuse what llama.cpp cannot run or what would name one configuration twice, naming the value."""
    try:
        check_gguf_model(model)
    except ConfigError as exc:
        raise ConfigError(f"{platform.id}: {exc}") from None
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
    if platform.kv_type == "q8_0" and model_spec(model).source == "registered":
        head = registered_head_size(model)
        if head is not None and head % Q8_0_BLOCK:  # llama.cpp fails to create the context ("Failed to create")
            raise ConfigError(
                f"{platform.id}: a q8_0 KV cache needs an attention head size divisible by {Q8_0_BLOCK}; "
                f"{model}'s is {head}"
            )
    if platform.batch_size > N_CTX and not platform.slots:  # llama-server's slots share a larger context
        raise ConfigError(f"{platform.id}: batch size {platform.batch_size} exceeds the context of {N_CTX}")


class LlamaCppTarget(Target):
    kind: ClassVar[str] = "llama.cpp"

    def __init__(self, model: str, platform: Platform, *, export_dir: Path | None = None) -> None:
        check_llama_cpp_supported(platform, model)
        self.model, self.platform, self.export_dir = model, platform, export_dir
        self.spec = model_spec(model)
        self._llama: Any = None
        self._slots: SlotContext | None = None
        self._gguf: Path | None = None

    @property
    def logprob_convention(self) -> str:
        return self.platform.logprob_convention

    @property
    def gguf_file(self) -> Path:
        if self._gguf is None:
            self._gguf = export_gguf(self.model, self.platform.dtype, self.export_dir)
        return self._gguf

    def _load(self) -> Any:
        llama_cpp = import_llama_cpp()
        quiet_llama_logs()
        try:
            return llama_cpp.Llama(
                model_path=str(self.gguf_file), verbose=False, **llama_kwargs(self.platform, self.model)
            )
        except (ValueError, RuntimeError) as exc:  # llama.cpp refused the file or the context
            raise TargetError(f"{self.platform.id}: llama.cpp could not load {self.gguf_file.name}: {exc}") from exc

    def answer(self, probes: ProbeSet, ids: np.ndarray) -> Responses:
        if probes.spec.name != self.model:
            raise ConfigError(f"probe set {probes.version} is not for model {self.model}")
        rows = np.empty((len(ids), self.spec.n_outputs), dtype=np.float32)
        for row, (probe_id, tokens) in enumerate(zip(ids, probes.inputs(ids), strict=True)):
            rows[row] = self.fresh_logits(self.engine_tokens(int(probe_id), tokens))
        responses = Responses(self.model, probes.version, ids.astype(np.int32), rows, "float32")
        if not np.isfinite(rows).all():
            raise TargetError(f"{self.platform.id} produced NaN/Inf outputs on {self.model}")
        return responses

    def engine_tokens(self, probe_id: int, content: np.ndarray) -> list[int]:
        """The ids llama.cpp evaluates for a probe: those its own tokenizer gives the prompt's text, as its server
        tokenizes it (a BOS first where the GGUF says so).  A built-in model's probe is its ids (its GGUF's
        single-character vocabulary is exact by construction).  For a registered model the engine's content ids
        must be the probe's: otherwise the server would answer another prompt, and the probe is refused."""
        if self.spec.source != "registered":
            return content.tolist()
        if self._llama is None:
            self._llama = self._load()
        codec = codec_for(self.model)
        text = codec.decode(content)
        if is_chat_view(self.model):
            assert isinstance(codec, ChatCodec)  # a chat view's codec (prompt_codec.codec_for)
            return self._chat_tokens(probe_id, text, codec.rendered(text))
        # as llama_cpp.server tokenizes a completion's prompt; add_bos=True adds a BOS only where the GGUF says so
        engine = self._llama.tokenize(text.encode("utf-8"), add_bos=True, special=True)
        start = len(engine) - len(content)
        if start < 0 or engine[start:] != content.tolist() or engine[:start] not in ([], [self._llama.token_bos()]):
            raise TargetError(
                f"{self.platform.id}: probe {probe_id}'s text {text!r} tokenizes to other ids in llama.cpp than in "
                f"the model's tokenizer ({engine[:8]}... against {content[:8].tolist()}...): the GGUF's tokenizer "
                "is not the Hugging Face one"
            )
        return engine

    def _chat_tokens(self, probe_id: int, text: str, rendered: str) -> list[int]:
        """The ids llama_cpp.server evaluates for a chat request of this one user message: the GGUF's chat
        template rendered by llama-cpp-python's own Jinja2 formatter, tokenized with special tokens parsed and
        no BOS added (llama_chat_format's chat handler).  The rendered text must be the registered template's;
        its ids are the engine's own (llama.cpp's SentencePiece tokenizer puts a space prefix after a special
        token where transformers' does not: the server runs these ids, so the references do too)."""
        from llama_cpp import llama_chat_format

        llama = self._llama
        template = llama.metadata.get("tokenizer.chat_template")
        if not template:
            raise TargetError(
                f"{self.platform.id}: {self.gguf_file.name} has no tokenizer.chat_template, so llama.cpp's server "
                "would wrap chat messages in its own default format, not the model's template"
            )
        formatter = llama_chat_format.Jinja2ChatFormatter(
            template=template,
            eos_token=llama._model.token_get_text(llama.token_eos()),
            bos_token=llama._model.token_get_text(llama.token_bos()),
        )
        prompt = formatter(messages=[{"role": "user", "content": text}]).prompt
        if prompt != rendered:
            raise TargetError(
                f"{self.platform.id}: probe {probe_id}'s chat prompt renders as {prompt!r} in llama.cpp and as "
                f"{rendered!r} with the model's chat template: the GGUF's template is not the registered one"
            )
        return llama.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)

    def fresh_logits(self, tokens: list[int]) -> np.ndarray:
        """Next-token logits after `tokens`, evaluated from an empty KV cache (as llama-server's slot reads a
        prompt alone, for a platform with slots)."""
        if self._llama is None:
            self._llama = self._load()
        if self.platform.slots:
            return self.slot_context().alone(tokens)
        llama = self._llama
        llama.reset()  # forget the previous prompt: no prefix reuse
        # and free every KV cell (reset alone measured the same; this keeps cell placement out of it)
        llama._ctx.kv_cache_clear()
        try:
            llama.eval(tokens)
        except RuntimeError as exc:
            raise TargetError(f"{self.platform.id} failed on {self.model}: {exc}") from exc
        return np.array(llama.scores[len(tokens) - 1], dtype=np.float32)

    def slot_context(self) -> SlotContext:
        """The libllama context llama-server would build for this platform's slots."""
        if self._llama is None:
            self._llama = self._load()
        if self._slots is None:
            kv = KV_GGML_TYPES[self.platform.kv_type or DEFAULT_KV_TYPE]
            self._slots = SlotContext(self._llama, self.platform, slot_context_length(self.model), kv)
        return self._slots

    def close(self) -> None:
        if self._slots is not None:
            self._slots.close()
            self._slots = None
        self._llama = None

    def provenance(self) -> dict[str, Any]:
        """What llama.cpp says it is and runs with: version, compiled CPU features, the GGUF's hash."""
        llama_cpp = import_llama_cpp()
        return {
            "llama_cpp_python": llama_cpp.__version__,
            "llama_cpp_system_info": llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip(),
            "gguf_file": self.gguf_file.name,
            "gguf_sha256": file_sha256(self.gguf_file),
            "context": llama_kwargs(self.platform, self.model),
        }


def slot_context_length(model: str) -> int:
    """Positions per sequence: the GGUF's own for a built-in model, room for a chat template otherwise."""
    return REGISTERED_N_CTX if model_spec(model).source == "registered" else N_CTX


def llama_kwargs(platform: Platform, model: str = "lm-gpt2") -> dict[str, Any]:
    """The `llama_cpp.Llama` settings of a platform; the server launcher passes the same ones."""
    kv = KV_GGML_TYPES[platform.kv_type or DEFAULT_KV_TYPE]
    return {
        "n_ctx": slot_context_length(model),
        "n_batch": platform.batch_size,
        "n_ubatch": platform.batch_size,
        "n_threads": platform.threads,
        "n_threads_batch": platform.threads,
        "flash_attn": platform.flash_attn,
        "type_k": kv,
        "type_v": kv,
        "logits_all": not platform.slots,  # a slot platform reads its logits through `SlotContext`
    }


def llama_cpp_available() -> bool:
    """True where llama-cpp-python imports (tests skip with a reason otherwise)."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True
