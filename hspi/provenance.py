"""Provenance measured in the process that ran the probes.

What a configuration *asked* for (environment caps) is not evidence; what the libraries report
they dispatched is.  `capture_native_output` runs a call with oneDNN and MKL verbose output on and
reads what the C libraries printed, so a cap the CPU could not honour shows up as what really ran.
"""

from __future__ import annotations

import contextlib
import os
import platform as pyplatform
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from importlib import metadata
from typing import Any

# Library versions worth recording next to every output; missing ones are recorded as absent.
_VERSIONED = (
    "torch",
    "numpy",
    "onnxruntime",
    "jax",
    "jaxlib",
    "onnx",
    "lightgbm",
    "scikit-learn",
    "pyarrow",
    "llama-cpp-python",
    "gguf",
)
# CPU flags that decide kernel paths; the full list is long and says nothing more.
_RELEVANT_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "avx_vnni",
)


def cpu_info() -> dict[str, Any]:
    model, vendor_id, flags = pyplatform.processor() or "unknown", "", set[str]()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name":
                    model = value.strip()
                elif key == "vendor_id":
                    vendor_id = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    vendor = {"AuthenticAMD": "amd", "GenuineIntel": "intel"}.get(vendor_id, vendor_id.lower() or "unknown")
    return {
        "cpu_model": model,
        "cpu_vendor": vendor,
        "cpu_flags": sorted(flag for flag in _RELEVANT_FLAGS if flag in flags),
        "cpu_count": os.cpu_count(),
        "machine": pyplatform.machine(),
        "os": f"{pyplatform.system()} {pyplatform.release()}",
        "python": sys.version.split()[0],
    }


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _flush_c_stdio() -> None:
    import ctypes

    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):
        pass


@contextlib.contextmanager
def _captured_fds() -> Iterator[list[str]]:
    """Capture what C code writes to file descriptors 1 and 2 (Python's sys.stdout cannot see it)."""
    captured: list[str] = []
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with tempfile.TemporaryFile(mode="w+b") as sink:
        try:
            for fd in (1, 2):
                os.dup2(sink.fileno(), fd)
            yield captured
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            _flush_c_stdio()  # oneDNN/MKL printf into C buffers: flush them before the fds go back
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            sink.seek(0)
            captured.extend(sink.read().decode("utf-8", "replace").splitlines())


def capture_native_output(call: Callable[[], object]) -> dict[str, Any]:
    """Run `call` once with oneDNN and MKL verbose on; return what the libraries said they used."""
    import torch

    with _captured_fds() as lines:
        with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON), torch.backends.mkl.verbose(1):
            call()
    return parse_native_verbose(lines)


def parse_native_verbose(lines: list[str]) -> dict[str, Any]:
    """Pull the ISA oneDNN runs at, the kernels it executed, and MKL's build/dispatch header."""
    onednn_isa, implementations, mkl_header, mkl_calls = "", set(), "", set()
    for line in lines:
        if line.startswith("onednn_verbose") or line.startswith("dnnl_verbose"):
            fields = line.split(",")
            if ",info,cpu,isa:" in line:
                onednn_isa = line.split("isa:", 1)[1].strip()
            elif len(fields) > 6 and fields[2] == "primitive" and fields[3] == "exec":
                implementations.add(f"{fields[5]}:{fields[6]}")
        elif line.startswith("MKL_VERBOSE"):
            if ("Product build" in line or "oneMKL" in line) and not mkl_header:
                mkl_header = line[len("MKL_VERBOSE") :].strip()
            else:
                match = re.match(r"MKL_VERBOSE\s+(\w+)\(", line)
                if match:
                    mkl_calls.add(match.group(1))
    return {
        "onednn_isa": onednn_isa,
        "onednn_kernels": sorted(implementations),
        "mkl_header": mkl_header,
        "mkl_calls": sorted(mkl_calls),
    }


def torch_runtime() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "aten_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "onednn_version": ".".join(str(v) for v in torch.backends.mkldnn.version())
        if hasattr(torch.backends.mkldnn, "version")
        else None,
        "mkl_available": torch.backends.mkl.is_available(),
        "quantized_engine": torch.backends.quantized.engine,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():  # measured, never assumed
        info.update(cuda_info())
    return info


def cuda_info() -> dict[str, Any]:
    """The CUDA device and stack this process runs on, as the driver and the libraries report them."""
    import torch

    props = torch.cuda.get_device_properties(0)
    info: dict[str, Any] = {
        "gpu_name": torch.cuda.get_device_name(0),
        "gpu_capability": f"{props.major}.{props.minor}",
        "gpu_sm_count": props.multi_processor_count,
        "gpu_memory_bytes": props.total_memory,
        "cuda": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cublaslt_version": loaded_library_version("libcublasLt", "cublasLtGetVersion"),
        "tf32_matmul": _read_flag(lambda: torch.backends.cuda.matmul.allow_tf32),
        "tf32_cudnn": _read_flag(lambda: torch.backends.cudnn.allow_tf32),
        "fp32_matmul_precision": _read_flag(lambda: torch.get_float32_matmul_precision()),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "sdpa_enabled": {
            name: bool(getattr(torch.backends.cuda, f"{name}_sdp_enabled")())
            for name in ("flash", "mem_efficient", "math", "cudnn")
            if hasattr(torch.backends.cuda, f"{name}_sdp_enabled")
        },
    }
    if hasattr(props, "uuid"):
        info["gpu_uuid"] = str(props.uuid)
    info.update(nvidia_smi())
    return info


def _read_flag(read: Callable[[], object]) -> object:
    """A torch setting, or why it could not be read (torch refuses some reads once both its legacy
    and its newer TF32 APIs have been used in a process)."""
    try:
        return read()
    except RuntimeError as exc:
        return f"unreadable: {(str(exc).strip().splitlines() or [''])[0]}"


def loaded_library_version(stem: str, function: str) -> int | None:
    """`function()` of a shared library this process has already loaded (found in /proc/self/maps)."""
    import ctypes

    try:
        with open("/proc/self/maps", encoding="utf-8") as handle:
            paths = {line.split()[-1] for line in handle if f"/{stem}" in line}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            getter = getattr(ctypes.CDLL(path), function)
        except (OSError, AttributeError):
            continue
        getter.restype = ctypes.c_size_t
        return int(getter())
    return None


_SMI_FIELDS = (
    "driver_version",
    "name",
    "pci.bus_id",
    "clocks.sm",
    "clocks.mem",
    "clocks.max.sm",
    "clocks.max.mem",
    "clocks.applications.graphics",
    "power.limit",
    "pstate",
    "compute_mode",
)


def nvidia_smi() -> dict[str, Any]:
    """Driver version and clocks as `nvidia-smi` reports them for GPU 0 (absent where it cannot run)."""
    import shutil
    import subprocess

    tool = shutil.which("nvidia-smi")
    if tool is None:
        return {"nvidia_smi": None}
    try:
        proc = subprocess.run(
            [tool, f"--query-gpu={','.join(_SMI_FIELDS)}", "--format=csv,noheader", "-i", "0"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return {"nvidia_smi": f"failed: {type(exc).__name__}"}
    if proc.returncode != 0:
        return {"nvidia_smi": f"exited {proc.returncode}: {(proc.stderr.strip().splitlines() or [''])[-1]}"}
    return {"nvidia_smi": parse_nvidia_smi(proc.stdout)}


def parse_nvidia_smi(text: str) -> dict[str, str]:
    """One CSV line of `nvidia-smi --query-gpu=<_SMI_FIELDS>` as {field: value}."""
    values = [v.strip() for v in (text.strip().splitlines() or [""])[0].split(",")]
    return {field: value for field, value in zip(_SMI_FIELDS, values) if value}


def requested_environment() -> dict[str, str]:
    keys = ("MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_CBWR", "OMP_NUM_THREADS")
    return {key: os.environ[key] for key in keys if key in os.environ}
