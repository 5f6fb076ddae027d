"""A Hugging Face directory to an F32 GGUF through llama.cpp's own converter, `convert_hf_to_gguf.py`.

The converter is not in the llama-cpp-python wheel: it ships with the llama.cpp source tree that the
llama-cpp-python sdist vendors (`vendor/llama.cpp`: the script, its `conversion` package and its own
`gguf-py`).  `make setup` puts those files of the pinned version under the virtual environment,
`<venv>/llama.cpp`; elsewhere name a llama.cpp tree with `--llama-cpp-source` or HSPI_LLAMA_CPP_SOURCE.
The converter runs in a subprocess of this interpreter and writes F32 (no rounding: the types of the
llama.cpp grid are made from it by llama.cpp's quantiser).  It refuses what llama.cpp cannot tokenize the
way the model does, e.g. a BPE tokenizer whose pre-tokenizer it does not recognise: that refusal is passed
on in one line.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hspi.errors import ConfigError, ModelError
from hspi.files import atomic_path

SOURCE_ENV = "HSPI_LLAMA_CPP_SOURCE"
SCRIPT = "convert_hf_to_gguf.py"
CONVERT_TIMEOUT_S = 3600.0  # a 7B model's conversion takes minutes; a hung one is stopped
HOW_TO_GET = (
    "get llama.cpp's converter: `make setup` (it extracts it into .venv/llama.cpp), or `pip download --no-deps "
    "--no-binary :all: llama-cpp-python==<version>` and pass the sdist's vendor/llama.cpp as --llama-cpp-source"
)


def converter_source(given: Path | None = None) -> Path:
    """The llama.cpp tree whose converter runs: `given`, else HSPI_LLAMA_CPP_SOURCE, else `<venv>/llama.cpp`."""
    configured = given or (Path(os.environ[SOURCE_ENV]) if os.environ.get(SOURCE_ENV) else None)
    source = configured if configured is not None else Path(sys.prefix) / "llama.cpp"
    if not (source / SCRIPT).is_file():
        where = f"{source}" if configured is not None else f"{source} (the default)"
        raise ConfigError(f"no {SCRIPT} in {where}: {HOW_TO_GET}")
    return source


def convert_hf_to_gguf(hf: Path, out: Path, source: Path | None = None) -> Path:
    """Write `out`, the F32 GGUF llama.cpp's converter makes of the HF directory `hf` (atomically)."""
    script = converter_source(source) / SCRIPT
    with atomic_path(out) as tmp:
        try:
            run = subprocess.run(
                [sys.executable, str(script), str(hf), "--outtype", "f32", "--outfile", str(tmp)],
                capture_output=True,
                text=True,
                timeout=CONVERT_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise ModelError(f"llama.cpp's converter did not finish {hf} in {CONVERT_TIMEOUT_S:.0f} s") from None
        if run.returncode != 0 or not tmp.is_file():
            raise ModelError(f"llama.cpp's converter refused {hf}: {_reason(run.stderr + run.stdout)}")
    return out


def _reason(log: str) -> str:
    """The converter's own explanation: its last error line (a traceback's last line), on one line."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or line.startswith(("ERROR", "error"))]
    last = (errors or lines or ["no output"])[-1]
    return last[:300]
