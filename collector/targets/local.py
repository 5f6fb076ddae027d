"""`LocalTarget`: a reference model run white-box in this process under one `Platform`.

Knobs read at library load (ISA caps, MKL_CBWR) must already be in this process's environment:
the collector starts a fresh subprocess per configuration for that.  Runtime knobs (threads,
quantised engine, matmul precision, attention implementation, batch size, engine) are applied here.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from hspi.collector.models import build_model, model_spec
from hspi.collector.probes import ProbeSet
from hspi.collector.targets.base import Target
from hspi.errors import ConfigError, TargetError
from hspi.files import atomic_path
from hspi.platform import CUDA_ATTENTIONS, GGUF_TYPES, Platform
from hspi.responses import Responses, float32_to_bfloat16_bits


def check_supported(platform: Platform, model: str) -> None:
    """Refuse combinations no target can run, naming the value (llama.cpp's rules live with its target)."""
    if platform.engine == "llama.cpp":
        from hspi.collector.targets.llama_cpp import check_llama_cpp_supported

        check_llama_cpp_supported(platform, model)
        return
    if platform.dtype in GGUF_TYPES:
        raise ConfigError(
            f"{platform.id}: GGUF type {platform.dtype} runs on engine llama.cpp only, not {platform.engine}"
        )
    if platform.flash_attn or platform.kv_type is not None or platform.slots:
        knob = "fa=on" if platform.flash_attn else f"kv={platform.kv_type}" if platform.kv_type else "slots"
        raise ConfigError(f"{platform.id}: knob {knob} is a llama.cpp knob; {platform.engine} has no such setting")
    _check_device(platform)
    if platform.engine == "jax":
        _check_jax(platform, model)
        return
    if platform.engine.startswith("onnxruntime") and platform.dtype != "fp32":
        raise ConfigError(f"{platform.id}: ONNX Runtime runs the fp32 export only, not {platform.dtype}")
    if platform.dtype == "int8-dyn" and platform.engine != "torch-eager":
        raise ConfigError(f"{platform.id}: dynamic int8 runs on torch-eager only")
    if (platform.dtype == "int8-dyn") != (platform.quant_engine is not None):
        raise ConfigError(f"{platform.id}: a quantised engine goes with dtype int8-dyn and only with it")
    if model_spec(model).source == "registered" and platform.engine.startswith("onnxruntime"):
        raise ConfigError(f"{platform.id}: registered model {model} runs on torch (transformers), not ONNX Runtime")


def _check_jax(platform: Platform, model: str) -> None:
    """JAX/XLA (collector.jax_models): float dtypes on the built-in models; XLA compiles for the CPU it runs
    on and sizes its own thread pool, so torch's ISA caps, MKL and matmul knobs, attention choices and
    thread counts are not its knobs (refused rather than silently ignored)."""
    from hspi.collector.jax_models import JAX_MODELS

    if platform.dtype not in ("fp32", "bf16", "fp16"):
        raise ConfigError(f"{platform.id}: engine jax runs fp32, bf16 and fp16, not {platform.dtype}")
    if model not in JAX_MODELS:
        raise ConfigError(f"{platform.id}: engine jax runs the built-in models {', '.join(JAX_MODELS)}, not {model}")
    refused = [
        (platform.profile != "native", f"ISA profile {platform.profile}"),
        (platform.attention != "sdpa", f"attn={platform.attention}"),
        (platform.mkl_cbwr is not None, "mkl-cbwr"),
        (platform.matmul_precision != "highest", f"mm={platform.matmul_precision}"),
        (platform.threads != 2, f"threads={platform.threads}"),
        (platform.tf32, "tf32=on"),
    ]
    for present, knob in refused:
        if present:
            raise ConfigError(f"{platform.id}: knob {knob} is torch's; engine jax has no such setting")


def _check_device(platform: Platform) -> None:
    """CUDA platforms: torch engines, float dtypes, no CPU caps; CUDA-only knobs only on CUDA."""
    if platform.device == "cpu":
        if platform.tf32:
            raise ConfigError(f"{platform.id}: knob tf32=on is a CUDA knob; {platform.device} has no TF32")
        if platform.attention in CUDA_ATTENTIONS:
            raise ConfigError(f"{platform.id}: SDPA backend {platform.attention} runs on CUDA only")
        return
    if not platform.engine.startswith("torch-") and platform.engine != "jax":
        raise ConfigError(f"{platform.id}: on {platform.device} the engines are torch-eager, torch-compile and jax")
    if platform.dtype not in ("fp32", "bf16", "fp16"):
        raise ConfigError(f"{platform.id}: on {platform.device} the dtypes are fp32, bf16 and fp16")
    if platform.profile != "native" or platform.mkl_cbwr is not None or platform.matmul_precision != "highest":
        raise ConfigError(f"{platform.id}: CPU knobs (ISA profile, MKL_CBWR, matmul precision) do not apply on CUDA")
    if platform.tf32 and platform.dtype != "fp32":
        raise ConfigError(f"{platform.id}: tf32=on changes fp32 arithmetic only; not {platform.dtype}")


def make_target(model: str, platform: Platform, *, export_dir: Path | None = None) -> Target:
    """The in-process target for a platform's engine: llama.cpp, or torch/ONNX Runtime."""
    if platform.engine == "llama.cpp":
        from hspi.collector.targets.llama_cpp import LlamaCppTarget

        return LlamaCppTarget(model, platform, export_dir=export_dir)
    return LocalTarget(model, platform, export_dir=export_dir)


class LocalTarget(Target):
    kind: ClassVar[str] = "local"

    def __init__(self, model: str, platform: Platform, *, export_dir: Path | None = None) -> None:
        if platform.engine == "llama.cpp":
            raise ConfigError(f"{platform.id}: LocalTarget runs torch and ONNX Runtime; use make_target for llama.cpp")
        check_supported(platform, model)
        self.model, self.platform, self.export_dir = model, platform, export_dir
        self.spec = model_spec(model)
        self._runner: Any = None

    def _prepare(self) -> Any:
        import torch

        p = self.platform
        torch.set_num_threads(p.threads)
        torch.set_float32_matmul_precision(p.matmul_precision)
        module = build_model(self.model, attention=p.attention)
        if p.engine == "jax":
            return self._jax_runner(module)
        device = self._device(torch)
        if p.engine.startswith("onnxruntime"):
            return self._onnx_runner(module)
        if p.dtype == "int8-dyn":
            if p.quant_engine not in torch.backends.quantized.supported_engines:
                raise ConfigError(
                    f"{p.id}: quantised engine {p.quant_engine} is not built into this torch "
                    f"(supported: {', '.join(torch.backends.quantized.supported_engines)})"
                )
            torch.backends.quantized.engine = p.quant_engine
            module = torch.ao.quantization.quantize_dynamic(module, {torch.nn.Linear}, dtype=torch.qint8)
        elif p.dtype in ("bf16", "fp16"):
            module = module.to(torch.bfloat16 if p.dtype == "bf16" else torch.float16)
        module = module.to(device)
        if p.engine == "torch-compile":
            module = torch.compile(module)  # type: ignore[assignment]  # a callable wrapping the module
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(p.dtype, torch.float32)

        def run(batch: np.ndarray) -> np.ndarray:
            x = torch.from_numpy(batch)
            if x.is_floating_point():
                x = x.to(dtype)
            with torch.inference_mode():
                y = module(x.to(device)).cpu()
            if y.dtype == torch.bfloat16:
                return float32_to_bfloat16_bits(y.float().numpy())
            return y.numpy().copy()

        return run

    def _device(self, torch: Any) -> Any:
        """CPU, or the process's first CUDA device with the platform's TF32 setting (refused without CUDA)."""
        p = self.platform
        if p.device == "cpu":
            return torch.device("cpu")
        if not torch.cuda.is_available():
            raise ConfigError(f"{p.id} needs CUDA; torch {torch.__version__} sees no CUDA device in this process")
        # after set_float32_matmul_precision, which also sets the matmul flag: TF32 is this knob's alone
        torch.backends.cuda.matmul.allow_tf32 = p.tf32
        torch.backends.cudnn.allow_tf32 = p.tf32
        torch.backends.cudnn.benchmark = False  # autotuning may pick other kernels run to run
        return torch.device("cuda", 0)

    def _onnx_runner(self, module: Any) -> Any:
        import onnxruntime as ort
        import torch

        directory = self.export_dir or Path(tempfile.mkdtemp(prefix="hspi-onnx-"))
        path = export_onnx(module, self.model, self.platform.attention, directory)
        options = ort.SessionOptions()
        options.graph_optimization_level = (
            ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
            if self.platform.engine == "onnxruntime-basic"
            else ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        )
        options.intra_op_num_threads = self.platform.threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        del torch  # the export used torch; the runs do not

        def run(batch: np.ndarray) -> np.ndarray:
            return session.run(["y"], {"x": batch})[0]

        return run

    def _jax_runner(self, module: Any) -> Any:
        from hspi.collector.jax_models import jax_runner

        run_jax = jax_runner(module, self.model, self.platform.dtype, self.platform.device)

        def run(batch: np.ndarray) -> np.ndarray:
            y = run_jax(batch)
            if self.platform.dtype == "bf16":  # stored as bf16 bits, as torch's bf16 outputs are
                return float32_to_bfloat16_bits(y.astype(np.float32))
            return y

        return run

    @property
    def native_dtype(self) -> str:
        return {"bf16": "bfloat16", "fp16": "float16"}.get(self.platform.dtype, "float32")

    def run_inputs(self, batch: np.ndarray) -> np.ndarray:
        """Native outputs for raw model inputs, run as one batch (a server decides the batches)."""
        if self._runner is None:
            self._runner = self._prepare()
        try:
            return self._runner(batch)
        except Exception as exc:  # a kernel failure is this target's failure, named with its platform
            raise TargetError(f"{self.platform.id} failed on {self.model}: {type(exc).__name__}: {exc}") from exc

    def answer(self, probes: ProbeSet, ids: np.ndarray) -> Responses:
        if probes.spec.name != self.model:
            raise ConfigError(f"probe set {probes.version} is not for model {self.model}")
        if self._runner is None:
            self._runner = self._prepare()
        bs = self.platform.batch_size
        inputs = probes.inputs(ids)
        if self.spec.source == "registered":  # the ids the model runs on (its BOS, where the tokenizer adds one)
            from hspi.collector.prompt_codec import codec_for

            inputs = codec_for(self.model).model_input(inputs)
        chunks = []
        for start in range(0, len(ids), bs):
            chunk = inputs[start : start + bs]
            try:
                chunks.append(self._runner(chunk))
            except Exception as exc:  # a kernel failure is this target's failure, named with its platform
                raise TargetError(f"{self.platform.id} failed on {self.model}: {type(exc).__name__}: {exc}") from exc
        native = np.concatenate(chunks)
        responses = Responses(self.model, probes.version, ids.astype(np.int32), native, self.native_dtype)
        if not np.isfinite(responses.as_float32()).all():
            raise TargetError(f"{self.platform.id} produced NaN/Inf outputs on {self.model}")
        return responses


def export_onnx(module: Any, model: str, attention: str, directory: Path) -> Path:
    """Export the fp32 reference module (same seeded weights) once; reuse the file afterwards."""
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{model}-{attention}.onnx"
    if path.exists():
        return path
    spec = model_spec(model)
    if spec.input_kind == "tokens":
        example = torch.zeros((2, *spec.input_shape), dtype=torch.int64)
    else:
        example = torch.zeros((2, *spec.input_shape), dtype=torch.float32)
    import warnings

    with warnings.catch_warnings(), atomic_path(path) as tmp:
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            str(tmp),
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    return path
