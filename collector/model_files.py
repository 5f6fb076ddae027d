"""Reading a user's model files without trusting them: Hugging Face directories and GGUF files.

    safetensors  the only weights read from a Hugging Face directory.  Headers are parsed here (8-byte
                 little-endian length, JSON, raw little-endian data), so the weights' hash, parameter
                 count and memory estimate come without loading anything.  Pickled weights (`*.bin`,
                 `*.pt`, ...) are refused, never opened: unpickling runs code.
    transformers loads configuration, tokenizer and model with `local_files_only=True`: nothing is
                 ever downloaded.
    gguf         `GGUFReader` reads a GGUF file's metadata and tensors (memory-mapped).

The weights' hash is the SHA-256 over every tensor in sorted name order, each as its name, dtype
(safetensors' spelling: F32, F16, BF16, ...), shape and raw bytes, length-prefixed so no two tensor
sets share a byte stream.  The same tensors hash the same whether they come from safetensors files
or from a torch module (`module_weights_sha256`), so a built-in model saved as safetensors keeps its hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hspi.errors import ConfigError, ModelError

PICKLED_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
# bytes per element of each safetensors dtype
SAFETENSORS_DTYPES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header
# Loading needs the weights once plus working room (the module's buffers, transformers' bookkeeping)
LOAD_OVERHEAD = 1.25
SAFETENSORS_INDEX = "model.safetensors.index.json"
MEMORY_LIMIT_ENV = "HSPI_MAX_MODEL_BYTES"  # caps what a model may take, below what the machine has free


# ---------------------------------------------------------------- weights hash


def _hash_tensor_header(digest: Any, name: str, dtype: str, shape: Iterable[int], n_bytes: int) -> None:
    for text in (name, dtype):
        raw = text.encode()
        digest.update(struct.pack("<Q", len(raw)) + raw)
    dims = [int(d) for d in shape]
    digest.update(struct.pack("<Q", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims))
    digest.update(struct.pack("<Q", n_bytes))


def tensors_sha256(tensors: Iterable[tuple[str, str, tuple[int, ...], bytes]]) -> str:
    """SHA-256 over (name, dtype, shape, raw bytes) tuples, taken in sorted name order."""
    digest = hashlib.sha256()
    for name, dtype, shape, raw in sorted(tensors, key=lambda t: t[0]):
        _hash_tensor_header(digest, name, dtype, shape, len(raw))
        digest.update(raw)
    return digest.hexdigest()


_TORCH_DTYPES = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
}


def torch_dtype_name(dtype: Any) -> str:
    """A torch dtype in safetensors' spelling (torch.float32 -> F32), as the cards and hashes write dtypes."""
    return _TORCH_DTYPES[str(dtype).removeprefix("torch.")]


def module_weights_sha256(module: Any) -> str:
    """The weights' hash of a torch module's state dict (the same as its safetensors files would give)."""
    import torch

    def rows() -> Iterator[tuple[str, str, tuple[int, ...], bytes]]:
        for name, tensor in module.state_dict().items():
            dtype = torch_dtype_name(tensor.dtype)
            data = tensor.detach().cpu().contiguous()
            raw = data.view(torch.uint8).numpy().tobytes() if data.numel() else b""
            yield name, dtype, tuple(data.shape), raw

    return tensors_sha256(rows())


# ---------------------------------------------------------------- safetensors


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path
    start: int  # absolute offset of the first byte in `file`
    n_bytes: int

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1


def read_safetensors_header(path: Path) -> list[TensorEntry]:
    """The tensors a safetensors file declares, checked against its size; nothing else is read."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise ModelError(f"{path}: not a safetensors file (too short)")
        (length,) = struct.unpack("<Q", head)
        if length > min(_MAX_HEADER, size - 8):
            raise ModelError(f"{path}: not a safetensors file (header length {length} out of range)")
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelError(f"{path}: not a safetensors file (header is not JSON: {exc})") from None
    if not isinstance(header, dict):
        raise ModelError(f"{path}: not a safetensors file (header is not a JSON object)")
    base = 8 + length
    entries = []
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = str(meta["dtype"]), tuple(int(d) for d in meta["shape"]), meta["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise ModelError(f"{path}: tensor {name!r} has a malformed header entry") from None
        if dtype not in SAFETENSORS_DTYPES:
            raise ModelError(f"{path}: tensor {name!r} has unsupported dtype {dtype}")
        expected = int(np.prod(shape, dtype=np.int64)) * SAFETENSORS_DTYPES[dtype]
        if end - begin != expected or begin < 0 or base + end > size:
            raise ModelError(f"{path}: tensor {name!r} lies outside the file or has the wrong size (truncated?)")
        entries.append(TensorEntry(name, dtype, shape, path, base + int(begin), int(end - begin)))
    return entries


def read_tensor_bytes(entry: TensorEntry) -> bytes:
    with open(entry.file, "rb") as handle:
        handle.seek(entry.start)
        raw = handle.read(entry.n_bytes)
    if len(raw) != entry.n_bytes:
        raise ModelError(f"{entry.file}: tensor {entry.name!r} is truncated")
    return raw


def read_tensor_float32(entry: TensorEntry) -> np.ndarray:
    """A floating-point tensor as float32 (bf16 widened exactly)."""
    raw = read_tensor_bytes(entry)
    if entry.dtype == "BF16":
        bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return bits.view(np.float32).reshape(entry.shape)
    dtypes = {"F32": "<f4", "F16": "<f2", "F64": "<f8"}
    if entry.dtype not in dtypes:
        raise ModelError(f"{entry.file}: tensor {entry.name!r} is {entry.dtype}, not floating point")
    return np.frombuffer(raw, dtype=dtypes[entry.dtype]).astype(np.float32).reshape(entry.shape)


def entries_sha256(entries: Iterable[TensorEntry]) -> str:
    """The weights' hash over safetensors entries, read one tensor at a time (never all in memory)."""
    digest = hashlib.sha256()
    for entry in sorted(entries, key=lambda e: e.name):
        _hash_tensor_header(digest, entry.name, entry.dtype, entry.shape, entry.n_bytes)
        with open(entry.file, "rb") as handle:
            handle.seek(entry.start)
            left = entry.n_bytes
            while left:
                block = handle.read(min(left, 1 << 20))
                if not block:
                    raise ModelError(f"{entry.file}: tensor {entry.name!r} is truncated")
                digest.update(block)
                left -= len(block)
    return digest.hexdigest()


# ---------------------------------------------------------------- memory


def available_memory() -> int:
    """Bytes a model may take: what the machine has available, capped by $HSPI_MAX_MODEL_BYTES."""
    available: int | None = None
    try:
        import psutil

        available = int(psutil.virtual_memory().available)
    except ImportError:
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
        except OSError:
            pass
    cap = os.environ.get(MEMORY_LIMIT_ENV)
    if cap:
        try:
            limit = int(cap)
        except ValueError:
            raise ConfigError(f"${MEMORY_LIMIT_ENV}={cap!r} is not a number of bytes") from None
        available = limit if available is None else min(available, limit)
    if available is None:
        raise ModelError("cannot tell how much memory is available (no psutil, no /proc/meminfo)")
    return available


def check_fits_memory(weight_bytes: int, what: str) -> None:
    needed = int(weight_bytes * LOAD_OVERHEAD)
    available = available_memory()
    if needed > available:
        raise ModelError(
            f"{what}: needs about {needed / 2**30:.2f} GiB to load ({weight_bytes / 2**30:.2f} GiB of weights), "
            f"only {available / 2**30:.2f} GiB available; refused before loading"
        )


# ---------------------------------------------------------------- Hugging Face directories


@dataclass
class HfModelInfo:
    directory: Path
    architecture: str
    model_type: str
    vocab_size: int
    tensors: list[TensorEntry]
    weight_bytes: int
    parameter_count: int
    weights_sha256: str
    tokenizer_sha256: str
    tokenizer_files: list[str]
    tokenizer_size: int
    chat_template: str | None
    config: dict[str, Any] = field(repr=False, default_factory=dict)


def find_safetensors(directory: Path) -> list[Path]:
    """The directory's safetensors files; no weights, or pickled weights only, is an error naming them."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(f"{directory}: not a directory")
    index = directory / SAFETENSORS_INDEX
    if index.is_file():  # sharded: exactly the shards the index names (other *.safetensors are not this model)
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            shards = sorted({str(shard) for shard in weight_map.values()})
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise ModelError(f"{index}: not a safetensors index (no weight_map)") from None
        for shard in shards:
            if Path(shard).name != shard or not (directory / shard).is_file():
                raise ModelError(f"{index}: names shard {shard!r}, which is not in {directory}")
        return [directory / shard for shard in shards]
    if (directory / "model.safetensors").is_file():  # what transformers loads; ignore any other exports
        return [directory / "model.safetensors"]
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix == ".safetensors")
    if files:
        return files
    pickled = sorted(p.name for p in directory.iterdir() if p.is_file() and p.name.endswith(PICKLED_SUFFIXES))
    if pickled:
        raise ModelError(
            f"{directory / pickled[0]}: pickled weights are refused (unpickling runs code); "
            "save the model with save_pretrained(safe_serialization=True) to get *.safetensors"
        )
    raise ModelError(f"{directory}: no weights (no *.safetensors file)")


def safetensors_entries(directory: Path) -> list[TensorEntry]:
    entries: dict[str, TensorEntry] = {}
    for path in find_safetensors(directory):
        for entry in read_safetensors_header(path):
            if entry.name in entries:
                raise ModelError(
                    f"{directory}: tensor {entry.name!r} is in both {entries[entry.name].file.name} and {path.name}"
                )
            entries[entry.name] = entry
    if not entries:
        raise ModelError(f"{directory}: no weights (the safetensors files hold no tensors)")
    return list(entries.values())


def _load_config(directory: Path) -> Any:
    if not (directory / "config.json").is_file():
        raise ModelError(f"{directory}: no config.json (not a Hugging Face model directory)")
    transformers = import_transformers()
    try:
        return transformers.AutoConfig.from_pretrained(str(directory), local_files_only=True)
    except Exception as exc:  # transformers raises ValueError, OSError, KeyError... for bad configs
        raise ModelError(f"{directory}/config.json: unusable ({one_line(exc)})") from None


def _vocab_size(config: Any, directory: Path) -> int:
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    vocab = getattr(text_config, "vocab_size", None)
    if not isinstance(vocab, int) or vocab <= 0:
        raise ModelError(f"{directory}/config.json: no vocab_size")
    return vocab


def load_tokenizer(directory: Path) -> Any:
    transformers = import_transformers()
    present = [name for name in TOKENIZER_FILES if (Path(directory) / name).is_file()]
    if not {"tokenizer.json", "tokenizer.model", "vocab.json"} & set(present):
        raise ModelError(f"{directory}: no tokenizer (none of tokenizer.json, tokenizer.model, vocab.json)")
    try:
        return transformers.AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except Exception as exc:
        raise ModelError(f"{directory}: tokenizer does not load ({one_line(exc)})") from None


def tokenizer_files_sha256(directory: Path) -> tuple[str, list[str]]:
    """SHA-256 over the tokenizer's files (sorted names; each name and its bytes, length-prefixed)."""
    digest = hashlib.sha256()
    names = sorted(name for name in TOKENIZER_FILES if (Path(directory) / name).is_file())
    for name in names:
        raw = (Path(directory) / name).read_bytes()
        digest.update(struct.pack("<Q", len(name)) + name.encode() + struct.pack("<Q", len(raw)) + raw)
    return digest.hexdigest(), names


def inspect_hf(directory: Path) -> HfModelInfo:
    """Everything the model card needs from a Hugging Face directory, checked, without loading weights."""
    directory = Path(directory)
    entries = safetensors_entries(directory)
    config = _load_config(directory)
    vocab = _vocab_size(config, directory)
    tokenizer = load_tokenizer(directory)
    if len(tokenizer) > vocab:
        raise ModelError(
            f"{directory}: the tokenizer has {len(tokenizer)} tokens but config.json's vocab_size is {vocab}"
        )
    token_hash, token_files = tokenizer_files_sha256(directory)
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # several named templates: keep them all, as JSON
        template = json.dumps(template, sort_keys=True)
    architectures = getattr(config, "architectures", None) or []
    weight_bytes = sum(e.n_bytes for e in entries)
    return HfModelInfo(
        directory=directory.resolve(),
        architecture=str(architectures[0]) if architectures else str(config.model_type),
        model_type=str(config.model_type),
        vocab_size=vocab,
        tensors=entries,
        weight_bytes=weight_bytes,
        parameter_count=sum(e.numel for e in entries),
        weights_sha256=entries_sha256(entries),
        tokenizer_sha256=token_hash,
        tokenizer_files=token_files,
        tokenizer_size=len(tokenizer),
        chat_template=template or None,
        config=config.to_dict(),
    )


def load_hf_model(directory: Path) -> tuple[Any, Any]:
    """(model, tokenizer) from a Hugging Face directory: safetensors only, local files only, memory checked
    first from the safetensors headers.  The model is a causal LM in eval mode, in its stored dtype."""
    directory = Path(directory)
    entries = safetensors_entries(directory)
    check_fits_memory(sum(e.n_bytes for e in entries), str(directory))
    config = _load_config(directory)
    tokenizer = load_tokenizer(directory)
    transformers = import_transformers()
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(directory), local_files_only=True, use_safetensors=True, dtype="auto", config=config
        )
    except Exception as exc:
        raise ModelError(f"{directory}: transformers cannot load the model ({one_line(exc)})") from None
    return model.eval(), tokenizer


def import_transformers() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # belt and braces: local_files_only is passed everywhere too
    try:
        import transformers
    except ImportError as exc:
        raise ConfigError("Hugging Face models need transformers: pip install 'hspi[models]'") from exc
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # stderr stays one line on error, nothing on success
    return transformers


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


# ---------------------------------------------------------------- GGUF files

GGUF_CHECKED_TYPES = ("F32", "F16")  # exact types: their tensors are compared with the HF weights


@dataclass
class GgufInfo:
    path: Path
    file_sha256: str
    weights_sha256: str  # over (name, GGML type, shape, raw bytes), sorted names, like the HF hash
    architecture: str
    vocab_size: int | None
    tensor_types: dict[str, int]  # GGML type name -> number of tensors
    parameter_count: int
    block_count: int | None
    head_count: int | None
    head_count_kv: int | None
    reader: Any = field(repr=False, default=None)


def import_gguf() -> Any:
    try:
        import gguf
    except ImportError as exc:
        raise ConfigError("GGUF files need the gguf package: pip install 'hspi[models]'") from exc
    return gguf


def gguf_field(reader: Any, key: str) -> Any:
    """A scalar or string metadata value (None when absent)."""
    item = reader.fields.get(key)
    if item is None or not item.data:
        return None
    part = item.parts[item.data[0]]
    if item.types and item.types[0].name == "STRING":
        return bytes(part).decode("utf-8", errors="replace")
    if item.types and item.types[0].name == "ARRAY":
        return len(item.data)
    return part.tolist()[0] if hasattr(part, "tolist") else part


def open_gguf(path: Path) -> Any:
    """A `GGUFReader` over the file; anything unreadable, truncated or inconsistent is one clear line."""
    gguf = import_gguf()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such GGUF file")
    try:
        reader = gguf.GGUFReader(str(path), "r")
    except Exception as exc:  # the reader raises ValueError, struct errors, IndexError... on bad bytes
        raise ModelError(f"{path}: not a readable GGUF file ({one_line(exc)})") from None
    size = path.stat().st_size
    for tensor in reader.tensors:
        if int(tensor.data_offset) + int(tensor.n_bytes) > size or tensor.data.nbytes != int(tensor.n_bytes):
            raise ModelError(f"{path}: tensor {tensor.name!r} runs past the end of the file (truncated GGUF)")
    if not reader.tensors:
        raise ModelError(f"{path}: the GGUF file holds no tensors")
    return reader


def inspect_gguf(path: Path) -> GgufInfo:
    reader = open_gguf(path)
    path = Path(path)
    architecture = gguf_field(reader, "general.architecture")
    if not isinstance(architecture, str) or not architecture:
        raise ModelError(f"{path}: no general.architecture in the GGUF metadata")
    vocab = gguf_field(reader, f"{architecture}.vocab_size")
    if vocab is None:
        vocab = gguf_field(reader, "tokenizer.ggml.tokens")  # the array's length
    types: dict[str, int] = {}
    digest = hashlib.sha256()
    for tensor in sorted(reader.tensors, key=lambda t: t.name):
        type_name = tensor.tensor_type.name
        types[type_name] = types.get(type_name, 0) + 1
        shape = tuple(int(d) for d in reversed(list(tensor.shape)))  # GGUF lists ne innermost first
        raw = np.ascontiguousarray(tensor.data).view(np.uint8)
        _hash_tensor_header(digest, tensor.name, type_name, shape, raw.nbytes)
        digest.update(raw.data)

    def optional_int(key: str) -> int | None:
        value = gguf_field(reader, f"{architecture}.{key}")
        return int(value) if isinstance(value, int | float) else None

    return GgufInfo(
        path=path.resolve(),
        file_sha256=file_sha256(path),
        weights_sha256=digest.hexdigest(),
        architecture=architecture,
        vocab_size=int(vocab) if vocab is not None else None,
        tensor_types=dict(sorted(types.items())),
        parameter_count=sum(int(t.n_elements) for t in reader.tensors),
        block_count=optional_int("block_count"),
        head_count=optional_int("attention.head_count"),
        head_count_kv=optional_int("attention.head_count_kv"),
        reader=reader,
    )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def llama_permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's converter reorders Q/K rows for its rotary layout (convert_hf_to_gguf `LlamaModel.permute`)."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


# architectures whose HF Q/K weights llama.cpp permutes; GPT-2's Conv1D weights it transposes
_PERMUTED_ARCHS = ("llama",)
_TRANSPOSED_GPT2 = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")


def hf_tensor_as_gguf(name: str, array: np.ndarray, hf: HfModelInfo, gguf_info: GgufInfo) -> np.ndarray:
    """An HF tensor as llama.cpp's converter writes it (the transforms of convert_hf_to_gguf.py)."""
    if gguf_info.architecture in _PERMUTED_ARCHS:
        heads = int(hf.config.get("num_attention_heads") or gguf_info.head_count or 0)
        kv_heads = int(hf.config.get("num_key_value_heads") or heads)
        if name.endswith("q_proj.weight") and heads:
            return llama_permute(array, heads)
        if name.endswith("k_proj.weight") and kv_heads:
            return llama_permute(array, kv_heads)
    if gguf_info.architecture == "gpt2" and name.endswith(_TRANSPOSED_GPT2):
        return array.T
    return array


@dataclass(frozen=True)
class GgufCheck:
    checked: int  # GGUF tensors compared exactly with the HF weights
    skipped_quantised: int  # GGUF tensors in a quantised type: not compared
    unmatched: list[str]  # GGUF tensors with no HF counterpart under llama.cpp's names
    note: str


def check_gguf_against_hf(gguf_info: GgufInfo, hf: HfModelInfo) -> GgufCheck:
    """Compare every F32/F16 GGUF tensor with its HF counterpart (names mapped as llama.cpp's converter maps
    them); a difference is an error: the two files are not the same model."""
    gguf = import_gguf()
    arch = {name: key for key, name in gguf.MODEL_ARCH_NAMES.items()}.get(gguf_info.architecture)
    if arch is None:
        return GgufCheck(0, 0, [], f"not checked: gguf does not know architecture {gguf_info.architecture!r}")
    n_blocks = gguf_info.block_count or int(hf.config.get("num_hidden_layers") or hf.config.get("n_layer") or 0)
    name_map = gguf.get_tensor_name_map(arch, n_blocks)
    hf_to_gguf: dict[str, str] = {}
    for entry in hf.tensors:
        mapped = name_map.get_name(entry.name, try_suffixes=(".weight", ".bias"))
        if mapped is not None:
            hf_to_gguf.setdefault(mapped, entry.name)
    by_name = {e.name: e for e in hf.tensors}
    checked = skipped = 0
    unmatched: list[str] = []
    for tensor in gguf_info.reader.tensors:
        type_name = tensor.tensor_type.name
        if type_name not in GGUF_CHECKED_TYPES:
            skipped += 1
            continue
        hf_name = hf_to_gguf.get(tensor.name)
        if hf_name is None and tensor.name == "output.weight" and "token_embd.weight" in hf_to_gguf:
            hf_name = hf_to_gguf["token_embd.weight"]  # tied embeddings: llama.cpp may write the copy out
        if hf_name is None:
            unmatched.append(tensor.name)
            continue
        expected = hf_tensor_as_gguf(hf_name, read_tensor_float32(by_name[hf_name]), hf, gguf_info)
        actual = np.asarray(tensor.data)
        if type_name == "F16":
            expected = np.ascontiguousarray(expected, dtype=np.float16)
        else:
            expected = np.ascontiguousarray(expected, dtype=np.float32)
        actual = np.ascontiguousarray(actual)
        if actual.shape != expected.shape:
            expected = expected.reshape(actual.shape) if expected.size == actual.size else expected
        # bit for bit (a -0.0 or a NaN payload differs too)
        if actual.shape != expected.shape or not np.array_equal(actual.view(np.uint8), expected.view(np.uint8)):
            raise ModelError(
                f"{gguf_info.path}: tensor {tensor.name} ({type_name}) differs from {hf_name} in {hf.directory}; "
                "the GGUF is not these weights"
            )
        checked += 1
    if not checked and unmatched:
        return GgufCheck(
            0,
            skipped,
            unmatched,
            f"not checked: none of the GGUF's {len(unmatched)} F32/F16 tensors has an HF counterpart under "
            f"llama.cpp's names for {gguf_info.architecture}",
        )
    parts = [f"{checked} F32/F16 tensors equal to the HF weights"]
    if skipped:
        parts.append(f"{skipped} quantised tensors not checked")
    if unmatched:
        parts.append(f"{len(unmatched)} with no HF counterpart not checked ({', '.join(unmatched[:3])})")
    return GgufCheck(checked, skipped, unmatched, "checked: " + "; ".join(parts))
