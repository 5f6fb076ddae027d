"""`Platform`: a frozen description of one hardware + software configuration, and its head labels.

A platform id reads like ``cpu:avx2/bf16/torch-eager/attn=manual/bs=8``: device and requested
CPU profile, dtype, engine, then only the knobs that differ from their defaults.  The labels each
classifier head learns come from the platform *and* the provenance measured where it ran, so an
ISA cap the machine could not honour is labelled with what really ran.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator

from hspi.errors import ConfigError

HEADS: tuple[str, ...] = ("hardware", "dtype", "engine", "kernel", "full")

# Coherent CPU-generation profiles: MKL, oneDNN and ATen capped together, as an older CPU would
# dispatch.  "native" sets no cap.  These variables are read when the libraries load, so a
# profile only takes effect in a fresh process.
PROFILES: dict[str, dict[str, str]] = {
    "native": {},
    "sse42": {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ONEDNN_MAX_CPU_ISA": "SSE41", "ATEN_CPU_CAPABILITY": "default"},
    "avx2": {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
    "avx512": {
        "MKL_ENABLE_INSTRUCTIONS": "AVX512",
        "ONEDNN_MAX_CPU_ISA": "AVX512_CORE",
        "ATEN_CPU_CAPABILITY": "avx512",
    },
    "avx512_bf16": {
        "MKL_ENABLE_INSTRUCTIONS": "AVX512",
        "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16",
        "ATEN_CPU_CAPABILITY": "avx512",
    },
    "amx": {
        "MKL_ENABLE_INSTRUCTIONS": "AVX512",
        "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX",
        "ATEN_CPU_CAPABILITY": "avx512",
    },
}
# Ordered from the oldest kernel path to the newest; measured ISA labels use these names.
ISA_LEVELS: tuple[str, ...] = ("sse42", "avx2", "avx512", "avx512_bf16", "amx")

# torch/ONNX dtypes, then llama.cpp's GGUF tensor types (named as GGUF names them)
DTypes = Literal["fp32", "bf16", "fp16", "int8-dyn", "F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_K_M"]
GGUF_TYPES: tuple[str, ...] = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_K_M")
Engines = Literal["torch-eager", "torch-compile", "onnxruntime-basic", "onnxruntime-all", "llama.cpp", "jax"]
KVTypes = Literal["f32", "f16", "q8_0"]
# sdpa: PyTorch picks the SDPA backend; sdpa-<backend>: that backend only (flash, efficient and cudnn run on CUDA)
Attentions = Literal["sdpa", "sdpa-math", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "manual"]
CUDA_ATTENTIONS: tuple[str, ...] = ("sdpa-flash", "sdpa-efficient", "sdpa-cudnn")
QuantEngines = Literal["x86", "onednn", "qnnpack"]
MatmulPrecisions = Literal["highest", "medium"]
MAX_SLOTS = 64  # llama-server's parallel slots a platform may name


class Platform(BaseModel):
    """One configuration to run a reference model under.  Frozen and hashable."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    device: Literal["cpu", "cuda"] = "cpu"
    profile: str = "native"
    dtype: DTypes = "fp32"
    engine: Engines = "torch-eager"
    attention: Attentions = "sdpa"
    batch_size: int = 1
    quant_engine: QuantEngines | None = None
    matmul_precision: MatmulPrecisions = "highest"
    mkl_cbwr: str | None = None
    threads: int = 2
    # llama.cpp only: flash attention and the KV-cache type (batch_size is its n_batch = n_ubatch)
    flash_attn: bool = False
    kv_type: KVTypes | None = None
    # llama.cpp only: 0 runs a prompt alone with logits for every position (llama-cpp-python, its server);
    # N > 0 runs it as llama.cpp's C++ llama-server with N parallel slots does: one KV stream per slot,
    # logits of the last prompt position only, continuous batching beside the other slots' tokens
    slots: int = 0
    # CUDA only: fp32 matmuls and convolutions on TF32 tensor cores (torch's allow_tf32 flags)
    tf32: bool = False

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, value: str) -> str:
        if value not in PROFILES:
            raise ValueError(f"unknown CPU profile {value!r}; allowed: {', '.join(PROFILES)}")
        return value

    @field_validator("batch_size", "threads")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"must be >= 1, got {value}")
        return value

    @field_validator("slots")
    @classmethod
    def _slots(cls, value: int) -> int:
        if not 0 <= value <= MAX_SLOTS:
            raise ValueError(f"slots must be in 0..{MAX_SLOTS}, got {value}")
        return value

    @property
    def logprob_convention(self) -> str:
        """How the platform's server turns logits into the logprobs it sends (`features.logprob_conventions`)."""
        return "llama-server" if self.engine == "llama.cpp" and self.slots else "numpy"

    @property
    def id(self) -> str:
        parts = [f"{self.device}:{self.profile}", self.dtype, self.engine]
        if self.attention != "sdpa":
            parts.append(f"attn={self.attention}")
        if self.batch_size != 1:
            parts.append(f"bs={self.batch_size}")
        if self.quant_engine is not None:
            parts.append(f"qengine={self.quant_engine}")
        if self.matmul_precision != "highest":
            parts.append(f"mm={self.matmul_precision}")
        if self.mkl_cbwr is not None:
            parts.append(f"mkl-cbwr={self.mkl_cbwr.lower()}")
        if self.threads != 2:
            parts.append(f"threads={self.threads}")
        if self.flash_attn:
            parts.append("fa=on")
        if self.kv_type is not None:
            parts.append(f"kv={self.kv_type}")
        if self.slots:
            parts.append(f"slots={self.slots}")
        if self.tf32:
            parts.append("tf32=on")
        return "/".join(parts)

    @classmethod
    def parse(cls, platform_id: str) -> Platform:
        """Inverse of `id`: ``cpu:avx2/bf16/torch-eager/bs=8``."""
        try:
            head, *rest = platform_id.strip().split("/")
            device, profile = head.split(":")
            dtype, engine, *knobs = rest
        except ValueError:
            raise ConfigError(
                f"bad platform id {platform_id!r}: expected DEVICE:PROFILE/DTYPE/ENGINE[/knob=value...]"
            ) from None
        fields: dict[str, Any] = {"device": device, "profile": profile, "dtype": dtype, "engine": engine}
        names = {
            "attn": "attention",
            "bs": "batch_size",
            "qengine": "quant_engine",
            "mm": "matmul_precision",
            "mkl-cbwr": "mkl_cbwr",
            "threads": "threads",
            "fa": "flash_attn",
            "kv": "kv_type",
            "slots": "slots",
            "tf32": "tf32",
        }
        for knob in knobs:
            key, _, value = knob.partition("=")
            switch = key in ("fa", "tf32")
            if key not in names or not value or (switch and value not in ("on", "off")):
                raise ConfigError(f"bad knob {knob!r} in platform id {platform_id!r}; known: {', '.join(names)}")
            fields[names[key]] = value.upper() if key == "mkl-cbwr" else (value == "on") if switch else value
        try:
            return cls(**fields)
        except ValueError as exc:
            first = exc.errors()[0] if hasattr(exc, "errors") else {"msg": str(exc)}  # type: ignore[union-attr]
            raise ConfigError(f"bad platform id {platform_id!r}: {first['msg']}") from None

    def environment(self) -> dict[str, str]:
        """Environment variables read at library load time; set them in a fresh subprocess."""
        env = dict(PROFILES[self.profile])
        if self.mkl_cbwr is not None:
            env["MKL_CBWR"] = self.mkl_cbwr
        env["OMP_NUM_THREADS"] = str(self.threads)
        env["MKL_NUM_THREADS"] = str(self.threads)
        return env

    @property
    def kernel(self) -> str:
        """The kernel knobs that are not dtype, engine or ISA, as one label."""
        knobs = [f"attn={self.attention}", f"bs={self.batch_size}", f"mm={self.matmul_precision}"]
        if self.quant_engine is not None:
            knobs.append(f"qengine={self.quant_engine}")
        if self.mkl_cbwr is not None:
            knobs.append(f"mkl-cbwr={self.mkl_cbwr.lower()}")
        if self.device == "cuda":
            knobs = [f"attn={self.attention}", f"bs={self.batch_size}", f"tf32={'on' if self.tf32 else 'off'}"]
        if self.engine == "jax":  # XLA has none of torch's attention, matmul or TF32 knobs (collector.jax_models)
            knobs = [f"bs={self.batch_size}"]
        if self.engine == "llama.cpp":
            knobs = [f"bs={self.batch_size}", f"fa={'on' if self.flash_attn else 'off'}", f"kv={self.kv_type or 'f16'}"]
            if self.slots:
                knobs.append(f"slots={self.slots}")
        return ",".join(knobs)


def _isa_named_by_kernels(kernels: list[str]) -> str:
    """The highest ISA named in oneDNN kernel names (e.g. 'matmul:brg_matmul:avx512_core_bf16')."""
    for marker, text in (
        ("amx", "amx"),
        ("avx512_core_bf16", "avx-512 bfloat16"),
        ("avx512", "avx-512"),
        ("avx2", "avx2"),
        ("sse41", "sse4.1"),
    ):
        if any(marker in k for k in kernels):
            return text
    return ""


def llama_cpp_isa_level(system_info: str) -> str:
    """The ISA level llama.cpp's CPU kernels were compiled for, from `llama_print_system_info()`
    ('CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | ...').  It names the CPU backend that was loaded (a
    GGML_NATIVE=OFF build has one, for AVX2), so a CPU with AVX-512 still runs the AVX2 kernels
    under such a build: the label is what llama.cpp ran, not what the CPU offers."""
    features = {
        part.split("=")[0].split(":")[-1].strip().upper()
        for part in system_info.split("|")
        if part.strip().endswith("= 1")
    }
    if features & {"AMX_INT8", "AMX_BF16"}:
        return "amx"
    if "AVX512_BF16" in features:
        return "avx512_bf16"
    if "AVX512" in features:
        return "avx512"
    if "AVX2" in features:
        return "avx2"
    return "sse42" if features else "unreported"


def measured_isa_level(provenance: dict[str, Any]) -> str:
    """The ISA level the kernels really used, from what oneDNN and ATen reported in that process
    (or, for llama.cpp, from what llama.cpp reported it was built for)."""
    if "llama_cpp_system_info" in provenance:
        return llama_cpp_isa_level(str(provenance["llama_cpp_system_info"]))
    onednn = str(provenance.get("onednn_isa", "")).lower()
    if not onednn:  # the info header is printed once per process; the kernels it ran name their ISA too
        kernels = [
            k.lower()
            for d in dict(provenance.get("native_dispatch") or {}).values()
            for k in d.get("onednn_kernels", [])
        ]
        onednn = _isa_named_by_kernels(kernels)
    if "amx" in onednn:
        level = "amx"
    elif "bfloat16" in onednn:
        level = "avx512_bf16"
    elif "avx-512" in onednn or "avx512" in onednn:
        level = "avx512"
    elif "avx2" in onednn:
        level = "avx2"
    elif onednn:
        level = "sse42"
    else:  # oneDNN said nothing in that process: ATen's own report is the measurement left
        level = {"DEFAULT": "sse42", "AVX2": "avx2", "AVX512": "avx512"}.get(
            str(provenance.get("aten_capability")), "unreported"
        )
    # ATen's AVX512 is its top level, so it caps nothing
    aten = {"DEFAULT": "sse42", "AVX2": "avx2", "AVX512": "amx"}.get(str(provenance.get("aten_capability")))
    if aten is not None and level != "unreported" and ISA_LEVELS.index(aten) < ISA_LEVELS.index(level):
        level = aten
    return level


def gpu_hardware_label(provenance: dict[str, Any]) -> str:
    """A GPU's label from what the driver reported in that process: 'nvidia-h200-sm90'."""
    name = str(provenance.get("gpu_name") or "").strip()
    if not name:
        return "gpu-unreported"
    slug = "-".join(re.sub(r"[^a-z0-9]+", " ", name.lower()).split())
    if not slug.startswith("nvidia"):
        slug = f"nvidia-{slug}"
    capability = str(provenance.get("gpu_capability") or "").replace(".", "")
    return f"{slug}-sm{capability}" if capability else slug


# Words in a CPU model string that name no product: trademarks, generic nouns, the vendor itself.
_CPU_MODEL_NOISE = re.compile(r"\((r|tm)\)|\b(processor|cpu|amd|intel|genuineintel|authenticamd)\b|@\s*[\d.]+\s*ghz")
# What `platform.processor()` answers where /proc/cpuinfo names no model: an architecture, not a product.
_NOT_A_MODEL = {"", "unknown", "x86_64", "x86", "amd64", "i386", "i686", "aarch64", "arm64"}


def cpu_model_slug(provenance: dict[str, Any]) -> str:
    """The measured CPU model as a label part ('AMD EPYC' -> 'epyc', 'Intel(R) Xeon(R) Processor' -> 'xeon');
    empty when the process measured no model name (a product name is never guessed)."""
    model = str(provenance.get("cpu_model") or "").strip()
    if model.lower() in _NOT_A_MODEL:
        return ""
    return "-".join(re.sub(r"[^a-z0-9]+", " ", _CPU_MODEL_NOISE.sub(" ", model.lower())).split())


def cpu_hardware_label(provenance: dict[str, Any], isa: str | None = None) -> str:
    """A CPU's label from what the process measured: vendor, model, then the ISA level its kernels used
    ('amd-epyc-x86-avx512_bf16'; 'amd-x86-avx2' where no model name was measured).  `isa`: the level
    already measured for this configuration (llama.cpp reports its own), else torch's."""
    vendor = str(provenance.get("cpu_vendor", "unknown"))
    model = cpu_model_slug(provenance)
    return "-".join(part for part in (vendor, model, "x86", isa or measured_isa_level(provenance)) if part)


def measured_cpu(provenance: dict[str, Any]) -> str:
    """The CPU as measured, for people: 'amd: AMD EPYC' (vendor id, then the model string as reported)."""
    vendor = str(provenance.get("cpu_vendor") or "unknown")
    model = str(provenance.get("cpu_model") or "").strip()
    return f"{vendor}: {model}" if model.lower() not in _NOT_A_MODEL else vendor


def platform_labels(platform: Platform, provenance: dict[str, Any]) -> dict[str, str]:
    """Labels per head except `full` (the equivalence class, known only once outputs are compared)."""
    # a collection keeps the vendor-ISA label its datasets were trained with ('amd-x86-avx2'), so a dataset
    # extended on the same machine never holds two labels for one CPU; `hspi dataset merge` adds the
    # measured model (cpu_hardware_label) to every configuration of the merged dataset alike
    vendor = str(provenance.get("cpu_vendor", "unknown"))
    hardware = (
        gpu_hardware_label(provenance)
        if platform.device == "cuda"
        else f"{vendor}-x86-{measured_isa_level(provenance)}"
    )
    return {
        "hardware": hardware,
        "dtype": platform.dtype,
        "engine": platform.engine,
        "kernel": platform.kernel,
    }
