"""The model registry: every model hspi knows, as data.

    built-in     the seeded reference models of `collector/models.py`; their cards are computed from
                 `model_spec` and `build_model` (never stored), so they list like any other model.
    registered   a user's models, one card each under `$HSPI_HOME/models/<name>/card.json` (default:
                 the user's data directory, e.g. ~/.local/share/hspi/models/).  A card names its
                 sources (a Hugging Face directory and/or a GGUF file) and pins them: the weights'
                 SHA-256 (see `model_files`), tokenizer hash, architecture, vocabulary size.

A name is bound to its weights for good: adding other weights under a registered (or built-in) name
is refused; adding the same weights again returns the stored card.  Cards are written atomically
(temporary file, then a link that fails if another writer got there first), so a failed or racing
`add` never loses or half-writes a registered card.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from hspi.collector import model_files
from hspi.errors import ConfigError, ModelError

CARD_FORMAT = "hspi-model-card-1"
HOME_ENV = "HSPI_HOME"
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
# architecture names of the built-in modules (code in collector/models.py, not a Hugging Face class)
_BUILTIN_ARCHITECTURES = {
    "mlp": "hspi-mlp",
    "cnn": "hspi-cnn",
    "lm-small": "hspi-tiny-decoder",
    "lm-gpt2": "hspi-tiny-decoder-gpt2",
}


class ModelSources(BaseModel):
    model_config = ConfigDict(extra="forbid")
    builtin: str | None = None  # the reference model's version (e.g. lm-small-v1)
    hf: str | None = None  # absolute path of the Hugging Face directory
    gguf: str | None = None  # absolute path of the GGUF file


class GgufCard(BaseModel):
    model_config = ConfigDict(extra="forbid")
    file_sha256: str
    weights_sha256: str
    architecture: str
    vocab_size: int | None
    tensor_types: dict[str, int]
    parameter_count: int
    check: str  # how the GGUF was checked against the HF weights, or why not


class ModelCard(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: str = CARD_FORMAT
    name: str
    kind: Literal["builtin", "registered"]
    sources: ModelSources
    weights_sha256: str  # of the HF safetensors (or the built-in module, or the GGUF when it is the only source)
    architecture: str
    vocab_size: int | None  # None: not a language model
    tokenizer_sha256: str | None
    tokenizer_files: list[str] = []
    chat_template: str | None = None
    parameter_count: int
    weight_bytes: int
    dtypes: dict[str, int] = {}  # dtype -> number of tensors
    gguf: GgufCard | None = None
    created: str | None = None

    def same_weights(self, other: ModelCard) -> bool:
        """Whether two cards pin the same model (weights, tokenizer and GGUF), wherever the files live."""
        return (
            self.weights_sha256 == other.weights_sha256
            and self.tokenizer_sha256 == other.tokenizer_sha256
            and (self.gguf.weights_sha256 if self.gguf else None) == (other.gguf.weights_sha256 if other.gguf else None)
        )


# ---------------------------------------------------------------- where cards live


def hspi_home() -> Path:
    configured = os.environ.get(HOME_ENV)
    if configured:
        return Path(configured).expanduser()
    try:
        import platformdirs
    except ImportError:  # the registry still works: the XDG default platformdirs would give on Linux
        base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
        return Path(base) / "hspi"
    return Path(platformdirs.user_data_dir("hspi", appauthor=False))


def registry_root() -> Path:
    return hspi_home() / "models"


def check_name(name: str) -> None:
    if not NAME_PATTERN.match(name):
        raise ConfigError(
            f"model name {name!r}: use 1-64 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit"
        )


# ---------------------------------------------------------------- built-in reference models


@functools.cache
def builtin_card(name: str) -> ModelCard:
    """The card of a built-in reference model, computed from its seeded weights (a few hundred ms)."""
    from hspi.collector.models import build_model, model_spec
    from hspi.collector.vocabulary import vocabulary

    spec = model_spec(name)
    module = build_model(name)
    tokens = spec.input_kind == "tokens"
    token_hash = None
    if tokens:  # the built-in LMs take ids: their "tokenizer" is the shipped single-character vocabulary
        raw = json.dumps(vocabulary(spec.n_outputs), ensure_ascii=False).encode()
        token_hash = hashlib.sha256(raw).hexdigest()
    state = module.state_dict()
    dtypes: dict[str, int] = {}
    for tensor in state.values():
        key = model_files.torch_dtype_name(tensor.dtype)
        dtypes[key] = dtypes.get(key, 0) + 1
    return ModelCard(
        name=name,
        kind="builtin",
        sources=ModelSources(builtin=spec.version),
        weights_sha256=model_files.module_weights_sha256(module),
        architecture=_BUILTIN_ARCHITECTURES.get(name, name),
        vocab_size=spec.n_outputs if tokens else None,
        tokenizer_sha256=token_hash,
        parameter_count=sum(int(t.numel()) for t in state.values()),
        weight_bytes=sum(int(t.numel()) * t.element_size() for t in state.values()),
        dtypes=dtypes,
    )


def builtin_names() -> list[str]:
    from hspi.collector.models import MODEL_SPECS

    return list(MODEL_SPECS)


# ---------------------------------------------------------------- building a card from files


def describe(name: str, hf: Path | None = None, gguf: Path | None = None, load: bool = True) -> ModelCard:
    """A card for the given files, every check done: weights safetensors only, tokenizer consistent with the
    vocabulary, memory enough to load, (with `load`) transformers builds the model, GGUF readable and, with
    both sources, equal to the HF weights where its tensors are F32/F16.  Raises one-line errors."""
    check_name(name)
    if hf is None and gguf is None:
        raise ConfigError(
            f"model {name!r}: give its weights: a Hugging Face directory (--hf) and/or a GGUF file (--gguf)"
        )
    hf_info = model_files.inspect_hf(Path(hf)) if hf is not None else None
    gguf_info = model_files.inspect_gguf(Path(gguf)) if gguf is not None else None
    if hf_info is not None:
        model_files.check_fits_memory(hf_info.weight_bytes, str(hf_info.directory))
        if load:
            model_files.load_hf_model(hf_info.directory)  # transformers must build it before it is registered
    elif gguf_info is not None:
        model_files.check_fits_memory(gguf_info.path.stat().st_size, str(gguf_info.path))
    gguf_card = None
    if gguf_info is not None:
        if hf_info is not None:
            if gguf_info.vocab_size is not None and gguf_info.vocab_size != hf_info.vocab_size:
                raise ModelError(
                    f"{gguf_info.path}: vocabulary of {gguf_info.vocab_size} tokens, "
                    f"but {hf_info.directory} has {hf_info.vocab_size}; not the same model"
                )
            note = model_files.check_gguf_against_hf(gguf_info, hf_info).note
        else:
            note = "not checked: no Hugging Face weights given"
        gguf_card = GgufCard(
            file_sha256=gguf_info.file_sha256,
            weights_sha256=gguf_info.weights_sha256,
            architecture=gguf_info.architecture,
            vocab_size=gguf_info.vocab_size,
            tensor_types=gguf_info.tensor_types,
            parameter_count=gguf_info.parameter_count,
            check=note,
        )
    sources = ModelSources(
        hf=str(hf_info.directory) if hf_info else None, gguf=str(gguf_info.path) if gguf_info else None
    )
    created = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    if hf_info is not None:
        dtypes: dict[str, int] = {}
        for entry in hf_info.tensors:
            dtypes[entry.dtype] = dtypes.get(entry.dtype, 0) + 1
        return ModelCard(
            name=name,
            kind="registered",
            sources=sources,
            weights_sha256=hf_info.weights_sha256,
            architecture=hf_info.architecture,
            vocab_size=hf_info.vocab_size,
            tokenizer_sha256=hf_info.tokenizer_sha256,
            tokenizer_files=hf_info.tokenizer_files,
            chat_template=hf_info.chat_template,
            parameter_count=hf_info.parameter_count,
            weight_bytes=hf_info.weight_bytes,
            dtypes=dict(sorted(dtypes.items())),
            gguf=gguf_card,
            created=created,
        )
    assert gguf_info is not None and gguf_card is not None
    return ModelCard(
        name=name,
        kind="registered",
        sources=sources,
        weights_sha256=gguf_info.weights_sha256,
        architecture=gguf_info.architecture,
        vocab_size=gguf_info.vocab_size,
        tokenizer_sha256=None,
        parameter_count=gguf_info.parameter_count,
        weight_bytes=gguf_info.path.stat().st_size,
        dtypes=gguf_info.tensor_types,
        gguf=gguf_card,
        created=created,
    )


# ---------------------------------------------------------------- the registry


class ModelRegistry:
    """Registered models under `root` (default `registry_root()`), plus the built-ins."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else registry_root()

    def card_path(self, name: str) -> Path:
        return self.root / name / "card.json"

    def registered_names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.parent.name for p in self.root.glob("*/card.json") if NAME_PATTERN.match(p.parent.name))

    def read(self, name: str) -> ModelCard:
        path = self.card_path(name)
        try:
            card = ModelCard.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            raise ConfigError(f"no model named {name!r}; see `hspi model list`") from None
        except (OSError, ValidationError) as exc:
            raise ModelError(f"{path}: unreadable model card ({model_files.one_line(exc)})") from None
        if card.name != name:
            raise ModelError(f"{path}: the card names model {card.name!r}, not {name!r}")
        return card

    def get(self, name: str) -> ModelCard:
        if name in builtin_names():
            return builtin_card(name)
        check_name(name)
        return self.read(name)

    def list(self) -> list[ModelCard]:
        return [builtin_card(n) for n in builtin_names()] + [self.read(n) for n in self.registered_names()]

    def add(
        self, name: str, hf: Path | None = None, gguf: Path | None = None, load: bool = True
    ) -> tuple[ModelCard, bool]:
        """Register `name` for these files: (card, True) when new, (the stored card, False) when the same
        weights are already registered under this name.  Other weights under a taken name are refused."""
        check_name(name)
        if name in builtin_names():
            raise ConfigError(f"model name {name!r} is a built-in reference model; choose another name")
        existing = self.read(name) if self.card_path(name).exists() else None
        card = describe(name, hf, gguf, load=False)
        if existing is not None:  # decided from the hashes: nothing is loaded to refuse or to confirm
            if existing.same_weights(card):
                return existing, False
            raise ConfigError(_reuse_message(name, existing, card))
        if load and card.sources.hf is not None:
            model_files.load_hf_model(Path(card.sources.hf))  # transformers must build it before it is registered
        stored = self._write_new(card)
        if stored is not card:  # another writer registered the name between our check and our write
            if stored.same_weights(card):
                return stored, False
            raise ConfigError(_reuse_message(name, stored, card))
        return card, True

    def _write_new(self, card: ModelCard) -> ModelCard:
        """Write the card unless one exists: the link fails if another writer got there first (no clobbering)."""
        path = self.card_path(card.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".card.{os.getpid()}.{id(card)}.tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as handle:
                handle.write(card.model_dump_json(indent=2) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                return self.read(card.name)
            except OSError:  # a filesystem without hard links: check, then rename (a narrow race, no half-write)
                if path.exists():
                    return self.read(card.name)
                os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return card


def _reuse_message(name: str, existing: ModelCard, new: ModelCard) -> str:
    what = "weights" if existing.weights_sha256 != new.weights_sha256 else "tokenizer or GGUF"
    return (
        f"model name {name!r} is registered for other {what} "
        f"(weights {existing.weights_sha256[:12]}, these {new.weights_sha256[:12]}); choose another name"
    )


def load_registered(card: ModelCard) -> tuple[Any, Any]:
    """(model, tokenizer) of a registered model with Hugging Face weights, after checking that its files still
    hold the weights and tokenizer the card pinned (files changed since registration are refused)."""
    if card.sources.hf is None:
        raise ConfigError(f"model {card.name!r} has no Hugging Face weights to load (GGUF only)")
    directory = Path(card.sources.hf)
    if not directory.is_dir():
        raise ModelError(f"model {card.name!r}: its directory {directory} is gone")
    weights = model_files.entries_sha256(model_files.safetensors_entries(directory))
    tokenizer, _ = model_files.tokenizer_files_sha256(directory)
    if (weights, tokenizer) != (card.weights_sha256, card.tokenizer_sha256):
        what = "weights" if weights != card.weights_sha256 else "tokenizer"
        raise ModelError(f"model {card.name!r}: the {what} in {directory} changed since it was registered")
    return model_files.load_hf_model(directory)


def converted_gguf_path(name: str, hf: Path) -> Path:
    """Where `hspi model add --convert-gguf` writes the GGUF llama.cpp's converter makes of `hf` (outside the
    user's directory; named by the weights it holds, so other weights never overwrite a registered file)."""
    check_name(name)
    weights = model_files.entries_sha256(model_files.safetensors_entries(Path(hf)))
    return hspi_home() / "gguf" / f"{name}-w{weights[:12]}-F32.gguf"


def registered_card(name: str, root: Path | None = None) -> ModelCard | None:
    """The card of a registered (not built-in) model, or None when no model is registered under `name`."""
    registry = ModelRegistry(root)
    if not NAME_PATTERN.match(name) or not registry.card_path(name).exists():
        return None
    return registry.read(name)


def registered_tokenizer(name: str, root: Path | None = None) -> Any:
    """The tokenizer of a registered model with Hugging Face files, checked unchanged since registration."""
    card = registered_card(name, root)
    if card is None:
        raise ConfigError(f"no model named {name!r}; see `hspi model list`")
    if card.sources.hf is None:
        raise ConfigError(f"model {name!r} is a GGUF only: register its Hugging Face directory too (--hf) to probe it")
    directory = Path(card.sources.hf)
    tokenizer_hash, _ = model_files.tokenizer_files_sha256(directory)
    if tokenizer_hash != card.tokenizer_sha256:
        raise ModelError(f"model {name!r}: the tokenizer in {directory} changed since it was registered")
    return model_files.load_tokenizer(directory)


def list_models(root: Path | None = None) -> list[ModelCard]:
    """Every model hspi knows: the built-in reference models, then the registered ones (sorted by name)."""
    return ModelRegistry(root).list()


def get_model(name: str, root: Path | None = None) -> ModelCard:
    return ModelRegistry(root).get(name)


def add_model(
    name: str, hf: Path | None = None, gguf: Path | None = None, root: Path | None = None
) -> tuple[ModelCard, bool]:
    return ModelRegistry(root).add(name, hf=hf, gguf=gguf)
