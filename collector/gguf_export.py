"""Export the seeded `lm-gpt2` reference model as GGUF files, so llama.cpp runs the same weights.

    F32 / F16 / BF16   written here with the `gguf` package: 2-D weights in the type; norms, biases
                       and the position embeddings in F32, as llama.cpp's own converter keeps them
                       (convert_hf_to_gguf: 1-D tensors, `*_norm.weight` and POS_EMBD stay F32)
    Q8_0 / Q4_0 / Q4_K_M  produced by llama.cpp's own quantiser (`llama_model_quantize`) from the F32
                       file, so the quantised grids are exactly llama.cpp's.  k-quants need rows of
                       256 values and this model's are mostly 128 wide, so Q4_K_M falls back as
                       llama.cpp decides: Q5_0 for 11 matrices, Q8_0 where it wanted Q6_K (output,
                       two QKV), Q4_K/Q6_K only for the 512-wide ffn_down; Q4_0 keeps output in Q8_0.

Architecture `gpt2`: learned position embeddings, pre-LayerNorm blocks with biases, fused QKV
(torch's [3, heads, head_dim] output layout is the one llama.cpp splits), tanh GELU, no output bias.

Tokenizer: SentencePiece-style (`llama`) over the 512 single-character tokens of
`collector/vocabulary.py`, all NORMAL, no space prefix, no BOS/EOS added, so `decode(ids)` text
tokenizes back to exactly `ids`.  llama.cpp insists on BOS/EOS/UNK ids inside the vocabulary; they
are SentencePiece's defaults (UNK 0, BOS 1, EOS 2).  Consequence: over HTTP, a probe whose greedy
token is 2 ends generation (no token, no logprobs) and one whose greedy token is 1 is skipped by
llama-cpp-python's logprob loop; in the F32 torch reference neither is ever greedy on the first
1,000 pool and 1,000 fresh probes.  In-process logits (LlamaCppTarget) are unaffected.

A registered model (`hspi model add NAME --hf DIR --gguf FILE`) brings its own GGUF: every type of its
llama.cpp grid, the float ones included, is made from that file by llama.cpp's own quantiser, so the
files are what `llama-quantize` gives a user.  Its tokenizer is the one inside the GGUF (llama.cpp
tokenizes the prompt text itself); `LlamaCppTarget` checks that it gives the probe's ids.

Exports are deterministic (same bytes every time) and cached by file name in a directory that is
never committed (`datasets/*/exports/`, or the user cache); they are regenerated on demand.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from hspi.collector.models import base_model, build_model, model_spec
from hspi.collector.vocabulary import vocabulary
from hspi.errors import ConfigError, TargetError
from hspi.files import atomic_path
from hspi.platform import GGUF_TYPES

GGUF_EXPORT_VERSION = "gguf1"  # part of every file name: bump when the export's bytes change
GGUF_MODELS = ("lm-gpt2",)  # models whose layout is exactly an architecture llama.cpp runs
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2  # SentencePiece defaults; see the module docstring for the cost
# The probes have 16 tokens and the model 16 position rows.  llama-cpp-python refuses a prompt that
# fills its context (it needs room for the generated token), and a client asking for a second token
# would make llama.cpp read position rows past the tensor's end.  So the GGUF declares 32 positions,
# rows 16..31 zero: they change nothing at positions 0..15, which is all a probe ever uses.
CONTEXT_LENGTH = 32
LLAMA_QUANTISED = {"Q8_0": 7, "Q4_0": 2, "Q4_K_M": 15}  # llama_ftype values (llama.h)
_FILE_TYPE = {"F32": 0, "F16": 1, "BF16": 32}  # general.file_type of the files written here
LLAMA_FTYPES = {**_FILE_TYPE, **LLAMA_QUANTISED}  # what llama.cpp's quantiser makes of a registered GGUF
# GGML tensor types a registered GGUF's matrices may have for the quantiser to make every type from it
_FLOAT_TENSOR_TYPES = {"F32", "F16", "BF16"}
INSTALL_HINT = "llama.cpp support needs the llama extra: pip install 'hspi[llama]' (builds llama-cpp-python)"


def default_export_dir() -> Path:
    """Where GGUF exports are cached when no directory is given (never inside the repository)."""
    root = os.environ.get("HSPI_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "hspi")
    return Path(root) / "gguf"


def check_gguf_model(model: str) -> None:
    spec = model_spec(model)
    if spec.source == "registered":
        registered_gguf(model)
    elif model not in GGUF_MODELS:
        raise ConfigError(
            f"model {model!r} has no GGUF export; llama.cpp runs {', '.join(GGUF_MODELS)} and registered models "
            "with a GGUF"
        )


def registered_gguf(model: str) -> tuple[Path, Any]:
    """The GGUF a registered model was added with, and its card; refused, naming the fix, when there is none."""
    from hspi.collector.registry import registered_card

    card = registered_card(base_model(model))
    if card is None or card.sources.gguf is None or card.gguf is None:
        name = base_model(model)
        raise ConfigError(
            f"model {model!r} has no GGUF: convert its Hugging Face directory with llama.cpp's convert_hf_to_gguf.py, "
            f"`hspi model add {name} --hf DIR --convert-gguf`, or register an F32, F16 or BF16 GGUF of it: "
            f"`hspi model add {name} --hf DIR --gguf FILE`"
        )
    return Path(card.sources.gguf), card.gguf


def check_gguf_type(gguf_type: str) -> None:
    if gguf_type not in GGUF_TYPES:
        raise ConfigError(f"unknown GGUF type {gguf_type!r}; allowed: {', '.join(GGUF_TYPES)}")


def gguf_path(model: str, gguf_type: str, directory: Path) -> Path:
    """The cache file name: model version, export version (or the registered GGUF's hash), type, and (made by the
    quantiser) the quantiser's version."""
    spec = model_spec(model)
    if spec.source == "registered":  # one set of files for the model and its chat view
        spec, (_, card) = model_spec(base_model(model)), registered_gguf(model)
        return (
            Path(directory) / f"{spec.version}-g{card.file_sha256[:12]}-{gguf_type}-llama_cpp{llama_cpp_version()}.gguf"
        )
    stem = f"{spec.version}-{GGUF_EXPORT_VERSION}-{gguf_type}"
    if gguf_type in LLAMA_QUANTISED:
        stem += f"-llama_cpp{llama_cpp_version()}"
    return Path(directory) / f"{stem}.gguf"


def export_gguf(model: str, gguf_type: str, directory: Path | None = None) -> Path:
    """The GGUF file of `model` in `gguf_type`, written once (atomically) and reused afterwards."""
    check_gguf_model(model)
    check_gguf_type(gguf_type)
    directory = Path(directory) if directory is not None else default_export_dir()
    path = gguf_path(model, gguf_type, directory)
    if path.exists():
        return path
    with atomic_path(path) as tmp:
        if model_spec(model).source == "registered":
            _quantise(_checked_registered_gguf(model), tmp, gguf_type)
        elif gguf_type in LLAMA_QUANTISED:
            _quantise(export_gguf(model, "F32", directory), tmp, gguf_type)
        else:
            _write_float_gguf(model, gguf_type, tmp)
    return path


def registered_head_size(model: str) -> int | None:
    """The attention head size of a registered model's GGUF (key length, or embedding / heads); None if unstated."""
    from hspi.collector.model_files import gguf_field, open_gguf

    source, card = registered_gguf(model)
    reader = open_gguf(source)
    arch = card.architecture
    key = gguf_field(reader, f"{arch}.attention.key_length")
    if isinstance(key, int):
        return key
    width, heads = (
        gguf_field(reader, f"{arch}.embedding_length"),
        gguf_field(reader, f"{arch}.attention.head_count"),
    )
    return width // heads if isinstance(width, int) and isinstance(heads, int) and heads else None


def _checked_registered_gguf(model: str) -> Path:
    """The registered GGUF, unchanged since `hspi model add` and with float matrices the quantiser can start from."""
    source, card = registered_gguf(model)
    if not source.is_file():
        raise ConfigError(f"model {model!r}: its GGUF {source} is gone; register it again with `hspi model add`")
    if file_sha256(source) != card.file_sha256:
        raise TargetError(f"model {model!r}: {source} changed since it was registered; register it again")
    from hspi.collector.model_files import open_gguf

    if "tokenizer.ggml.model" not in open_gguf(source).fields:
        raise ConfigError(
            f"model {model!r}: {source.name} has no tokenizer (tokenizer.ggml.*), so llama.cpp cannot tokenize a "
            "prompt; convert the model with llama.cpp's convert_hf_to_gguf.py (`hspi model add --convert-gguf`), "
            "which writes it"
        )
    quantised = sorted(set(card.tensor_types) - _FLOAT_TENSOR_TYPES)
    if quantised:
        raise ConfigError(
            f"model {model!r}: {source.name} holds {', '.join(quantised)} tensors; llama.cpp references are made "
            "from an F32, F16 or BF16 GGUF (requantising would not be what a provider serves)"
        )
    return source


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def gpt2_tensors(module: Any) -> dict[str, np.ndarray]:
    """GGUF tensor name -> float32 array (torch's (out, in) layout, which GGUF stores as ne = {in, out})."""
    state = {k: v.detach().numpy().astype(np.float32) for k, v in module.state_dict().items()}
    positions = np.zeros((CONTEXT_LENGTH, state["pos"].shape[1]), dtype=np.float32)
    positions[: state["pos"].shape[0]] = state["pos"]
    tensors = {
        "token_embd.weight": state["embed.weight"],
        "position_embd.weight": positions,
        "output_norm.weight": state["norm.weight"],
        "output_norm.bias": state["norm.bias"],
        "output.weight": state["head.weight"],
    }
    n_layers = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    names = {
        "norm1": "attn_norm",
        "qkv": "attn_qkv",
        "proj": "attn_output",
        "norm2": "ffn_norm",
        "mlp.0": "ffn_up",
        "mlp.2": "ffn_down",
    }
    for i in range(n_layers):
        for ours, theirs in names.items():
            for part in ("weight", "bias"):
                tensors[f"blk.{i}.{theirs}.{part}"] = state[f"blocks.{i}.{ours}.{part}"]
    return tensors


def _write_float_gguf(model: str, gguf_type: str, path: Path) -> None:
    gguf = import_gguf()
    spec = model_spec(model)
    module = build_model(model)
    tensors = gpt2_tensors(module)
    dim = tensors["token_embd.weight"].shape[1]
    n_layers = sum(1 for name in tensors if name.endswith("attn_qkv.weight"))
    writer = gguf.GGUFWriter(str(path), "gpt2")
    writer.add_name(spec.version)
    writer.add_context_length(CONTEXT_LENGTH)
    writer.add_embedding_length(dim)
    writer.add_feed_forward_length(tensors["blk.0.ffn_up.weight"].shape[0])
    writer.add_block_count(n_layers)
    writer.add_head_count(int(module.blocks[0].heads))  # type: ignore[index,union-attr]  # the GPT-2 layout module
    writer.add_layer_norm_eps(1e-5)  # torch.nn.LayerNorm's default, what the reference module uses
    writer.add_file_type(_FILE_TYPE[gguf_type])
    _add_tokenizer(writer, spec.n_outputs)
    for name, array in tensors.items():
        if array.ndim == 1 or name == "position_embd.weight" or gguf_type == "F32":
            writer.add_tensor(name, array)
        elif gguf_type == "F16":
            writer.add_tensor(name, array.astype(np.float16))
        else:  # BF16: round-to-nearest-even, the same rounding as ggml's own conversion
            writer.add_tensor(
                name,
                gguf.quants.quantize(array, gguf.GGMLQuantizationType.BF16),
                raw_dtype=gguf.GGMLQuantizationType.BF16,
            )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _add_tokenizer(writer: Any, vocab_size: int) -> None:
    gguf = import_gguf()
    writer.add_tokenizer_model("llama")
    writer.add_token_list(vocabulary(vocab_size))
    writer.add_token_scores([0.0] * vocab_size)  # no merges exist: every token is one character
    writer.add_token_types([int(gguf.TokenType.NORMAL)] * vocab_size)
    writer.add_unk_token_id(UNK_ID)
    writer.add_bos_token_id(BOS_ID)
    writer.add_eos_token_id(EOS_ID)
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(False)


def _quantise(source: Path, path: Path, gguf_type: str) -> None:
    llama_cpp = import_llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = LLAMA_FTYPES[gguf_type]
    params.nthread = 1  # per-row quantisation is deterministic anyway; one thread keeps it simple
    quiet_llama_logs()
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(path).encode(), params)
    if status != 0:
        raise TargetError(f"llama.cpp failed to quantise {source.name} to {gguf_type} (status {status})")


def import_llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError as exc:
        raise ConfigError(INSTALL_HINT) from exc
    return llama_cpp


def import_gguf() -> Any:
    try:
        import gguf
    except ImportError as exc:
        raise ConfigError(INSTALL_HINT) from exc
    return gguf


def llama_cpp_version() -> str:
    return str(import_llama_cpp().__version__)


def quiet_llama_logs() -> None:
    """Keep llama.cpp's errors, drop its per-tensor and per-context info lines (stderr noise)."""
    from llama_cpp import _logger

    _logger.set_verbose(False)
