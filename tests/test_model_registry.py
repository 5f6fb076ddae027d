"""The model registry and `hspi model`: tiny models made here (nothing downloaded), every bad input refused
with one clear line and nothing registered lost."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
pytest.importorskip("transformers")
pytest.importorskip("gguf")
pytest.importorskip("sentencepiece")

from hspi.collector import model_files  # noqa: E402
from hspi.collector.registry import ModelRegistry, builtin_card, list_models, load_registered  # noqa: E402
from hspi.errors import ConfigError, HspiError, ModelError  # noqa: E402
from tests.tiny_models import gpt2_dir, llama_dir, qwen2_dir, write_gguf  # noqa: E402

TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    llama = llama_dir(root / "llama")
    paths = {
        "llama": llama,
        "llama_other": llama_dir(root / "llama-other", seed=1),
        "qwen": qwen2_dir(root / "qwen"),
        # F32 throughout but one F16 and one Q8_0 tensor: both kinds of check, and a skipped one
        "gguf": write_gguf(llama, root / "llama.gguf", quantise=("blk.1.ffn_down.weight",), f16=("output.weight",)),
    }
    paths["gguf_other"] = write_gguf(paths["llama_other"], root / "llama-other.gguf")
    paths["qwen_gguf"] = write_gguf(paths["qwen"], root / "qwen.gguf")
    paths["gpt2"] = gpt2_dir(root / "gpt2")
    paths["gpt2_gguf"] = write_gguf(paths["gpt2"], root / "gpt2.gguf")
    return paths


@pytest.fixture()
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "home" / "models")


def copy_dir(source: Path, target: Path, skip: tuple[str, ...] = ()) -> Path:
    target.mkdir(parents=True)
    for item in source.iterdir():
        if item.name not in skip:
            shutil.copy2(item, target / item.name)
    return target


def snapshot(registry: ModelRegistry) -> dict[str, bytes]:
    return {str(p.relative_to(registry.root)): p.read_bytes() for p in registry.root.rglob("*") if p.is_file()}


# ---------------------------------------------------------------- cards


def test_llama_with_gguf_card(made: dict[str, Path], registry: ModelRegistry) -> None:
    card, created = registry.add("tiny-llama", hf=made["llama"], gguf=made["gguf"])
    assert created
    assert card.architecture == "LlamaForCausalLM" and card.vocab_size == 400
    assert card.sources.hf == str(made["llama"].resolve()) and card.sources.gguf == str(made["gguf"].resolve())
    assert "tokenizer.model" in card.tokenizer_files and card.tokenizer_sha256
    assert card.chat_template and "messages" in card.chat_template
    entries = model_files.safetensors_entries(made["llama"])
    assert card.parameter_count == sum(e.numel for e in entries) and 100_000 < card.parameter_count < 1_000_000
    assert card.gguf is not None and card.gguf.architecture == "llama" and card.gguf.vocab_size == 400
    assert card.gguf.tensor_types == {"F16": 1, "F32": len(entries) - 2, "Q8_0": 1}
    assert card.gguf.check.startswith(f"checked: {len(entries) - 1} F32/F16 tensors equal")
    assert "1 quantised tensors not checked" in card.gguf.check
    stored = json.loads(registry.card_path("tiny-llama").read_text())
    assert stored["weights_sha256"] == card.weights_sha256 and stored["kind"] == "registered"
    assert registry.get("tiny-llama") == card
    names = [c.name for c in list_models(registry.root)]
    assert names[:4] == ["mlp", "cnn", "lm-small", "lm-gpt2"] and names[-1] == "tiny-llama"


def test_qwen2_byte_level_card(made: dict[str, Path], registry: ModelRegistry) -> None:
    card, _ = registry.add("tiny-qwen", hf=made["qwen"])
    assert card.architecture == "Qwen2ForCausalLM" and card.vocab_size == 300
    assert card.chat_template is None and card.gguf is None
    assert "tokenizer.json" in card.tokenizer_files
    model, tokenizer = model_files.load_hf_model(made["qwen"])
    assert card.parameter_count == model.num_parameters()  # tied embeddings are stored (and counted) once
    assert tokenizer.decode(tokenizer("the café 42").input_ids) == "the café 42"


@pytest.mark.parametrize("model", ["qwen", "gpt2"])
def test_gguf_checked_per_architecture(made: dict[str, Path], registry: ModelRegistry, model: str) -> None:
    """llama.cpp's names and layouts: Qwen2 as stored, GPT-2's Conv1D weights transposed; tied output shared."""
    card, _ = registry.add(f"tiny-{model}", hf=made[model], gguf=made[f"{model}_gguf"])
    n_tensors = sum(card.gguf.tensor_types.values()) if card.gguf else 0
    assert card.gguf is not None and card.gguf.check == f"checked: {n_tensors} F32/F16 tensors equal to the HF weights"
    assert card.gguf.architecture == {"qwen": "qwen2", "gpt2": "gpt2"}[model] and card.vocab_size == 300


def test_gguf_with_unknown_names_says_not_checked(
    made: dict[str, Path], registry: ModelRegistry, tmp_path: Path
) -> None:
    import gguf
    import numpy as np

    path = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_vocab_size(400)
    writer.add_block_count(2)
    writer.add_tensor("odd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    card, _ = registry.add("odd", hf=made["llama"], gguf=path)
    assert card.gguf is not None and card.gguf.check.startswith("not checked: none of the GGUF's 1 F32/F16 tensors")


def test_weights_hash_is_canonical(made: dict[str, Path], tmp_path: Path) -> None:
    """The same tensors hash the same from safetensors files and from a torch module."""
    from safetensors.torch import save_file

    from hspi.collector.models import build_model

    model, _ = model_files.load_hf_model(made["llama"])
    assert model_files.module_weights_sha256(model) == model_files.entries_sha256(
        model_files.safetensors_entries(made["llama"])
    )
    save_file(build_model("lm-small").state_dict(), str(tmp_path / "lm.safetensors"))
    entries = model_files.read_safetensors_header(tmp_path / "lm.safetensors")
    assert model_files.entries_sha256(entries) == builtin_card("lm-small").weights_sha256


def test_builtin_cards() -> None:
    cards = {c.name: c for c in list_models(Path("/nonexistent/models"))}
    assert set(cards) == {"mlp", "cnn", "lm-small", "lm-gpt2"}
    assert cards["lm-gpt2"].vocab_size == 512 and cards["mlp"].vocab_size is None
    assert cards["lm-small"].sources.builtin == "lm-small-v1" and cards["lm-small"].kind == "builtin"
    assert len({c.weights_sha256 for c in cards.values()}) == 4 and cards["cnn"].dtypes == {"F32": 8}


def test_same_weights_again_is_idempotent(made: dict[str, Path], registry: ModelRegistry, tmp_path: Path) -> None:
    registry.add("tiny-llama", hf=made["llama"])
    before = snapshot(registry)
    again, created = registry.add("tiny-llama", hf=made["llama"])
    assert not created
    moved, created = registry.add("tiny-llama", hf=copy_dir(made["llama"], tmp_path / "moved"))
    assert not created and moved == again  # the same weights elsewhere: still the stored card
    assert snapshot(registry) == before


def test_sharded_weights_hash_the_same(made: dict[str, Path], registry: ModelRegistry, tmp_path: Path) -> None:
    """Shards named by the index, whatever their split: the same tensors, the same card."""
    model, _ = model_files.load_hf_model(made["llama"])
    sharded = copy_dir(made["llama"], tmp_path / "sharded", skip=("model.safetensors",))
    model.save_pretrained(sharded, safe_serialization=True, max_shard_size="100KB")
    assert len(model_files.find_safetensors(sharded)) > 1
    (sharded / "consolidated.safetensors").write_bytes(b"another export, not named by the index")
    first, _ = registry.add("tiny-llama", hf=made["llama"])
    again, created = registry.add("tiny-llama", hf=sharded)
    assert not created and again == first


def test_load_checks_files_unchanged(made: dict[str, Path], registry: ModelRegistry, tmp_path: Path) -> None:
    moved = copy_dir(made["llama"], tmp_path / "moved")
    card, _ = registry.add("tiny-llama", hf=moved)
    model, tokenizer = load_registered(registry.get("tiny-llama"))
    assert model_files.module_weights_sha256(model) == card.weights_sha256 and len(tokenizer) == 400
    shutil.copy2(made["llama_other"] / "model.safetensors", moved / "model.safetensors")
    with pytest.raises(ModelError, match="weights in .* changed since it was registered"):
        load_registered(card)


def test_racing_writer_keeps_the_first_card(made: dict[str, Path], registry: ModelRegistry) -> None:
    first, _ = registry.add("m", hf=made["llama"])
    other = first.model_copy(update={"weights_sha256": "0" * 64})
    assert registry._write_new(other) == first  # the link refuses to replace a card another writer made
    assert registry.get("m") == first


def test_gguf_only(made: dict[str, Path], registry: ModelRegistry) -> None:
    card, _ = registry.add("tiny-gguf", gguf=made["gguf"])
    assert card.sources.hf is None and card.architecture == "llama"
    assert card.gguf is not None and card.gguf.check.startswith("not checked")
    assert card.weights_sha256 == card.gguf.weights_sha256


# ---------------------------------------------------------------- bad input


def refused(registry: ModelRegistry, error: type[HspiError], match: str, name: str = "m", **files: Path) -> None:
    before = snapshot(registry) if registry.root.exists() else {}
    with pytest.raises(error, match=match) as info:
        registry.add(name, **files)
    assert "\n" not in str(info.value)
    assert (snapshot(registry) if registry.root.exists() else {}) == before  # nothing lost, nothing half-written


def test_name_reused_for_other_weights(made: dict[str, Path], registry: ModelRegistry) -> None:
    registry.add("m", hf=made["llama"])
    refused(registry, ConfigError, "registered for other weights", hf=made["qwen"])
    refused(registry, ConfigError, "registered for other tokenizer or GGUF", hf=made["llama"], gguf=made["gguf"])
    assert registry.get("m").architecture == "LlamaForCausalLM"
    refused(registry, ConfigError, "built-in reference model", name="lm-small", hf=made["qwen"])
    refused(registry, ConfigError, "model name", name="../escape", hf=made["qwen"])


def test_no_weights(made: dict[str, Path], registry: ModelRegistry, tmp_path: Path) -> None:
    bare = copy_dir(made["llama"], tmp_path / "bare", skip=("model.safetensors",))
    refused(registry, ModelError, "no weights", hf=bare)
    refused(registry, ConfigError, "give its weights")


def test_pickled_weights_refused(made: dict[str, Path], registry: ModelRegistry, tmp_path: Path) -> None:
    pickled = copy_dir(made["llama"], tmp_path / "pickled", skip=("model.safetensors",))
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle, never opened")
    refused(registry, ModelError, r"pytorch_model\.bin: pickled weights are refused", hf=pickled)


def test_truncated_safetensors(made: dict[str, Path], registry: ModelRegistry, tmp_path: Path) -> None:
    cut = copy_dir(made["llama"], tmp_path / "cut")
    data = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(data[: len(data) // 2])
    refused(registry, ModelError, "truncated", hf=cut)


def test_corrupt_gguf(made: dict[str, Path], registry: ModelRegistry, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"GGUF" + os.urandom(200))
    refused(registry, ModelError, "not a readable GGUF file", gguf=garbage)
    truncated = tmp_path / "truncated.gguf"
    data = made["gguf"].read_bytes()
    truncated.write_bytes(data[: len(data) - 1000])
    refused(registry, ModelError, "GGUF", hf=made["llama"], gguf=truncated)
    refused(registry, ConfigError, "no such GGUF file", gguf=tmp_path / "missing.gguf")


def test_gguf_of_other_weights(made: dict[str, Path], registry: ModelRegistry) -> None:
    refused(registry, ModelError, "differs from", hf=made["llama"], gguf=made["gguf_other"])
    refused(registry, ModelError, "differs from", hf=made["qwen"], gguf=made["gpt2_gguf"])  # another architecture
    refused(registry, ModelError, "vocabulary of 300 tokens", hf=made["llama"], gguf=made["qwen_gguf"])


def test_tokenizer_missing(made: dict[str, Path], registry: ModelRegistry, tmp_path: Path) -> None:
    untokenized = copy_dir(made["llama"], tmp_path / "untokenized", skip=TOKENIZER_FILES)
    refused(registry, ModelError, "no tokenizer", hf=untokenized)


def test_tokenizer_inconsistent_with_vocab(made: dict[str, Path], registry: ModelRegistry, tmp_path: Path) -> None:
    small = copy_dir(made["llama"], tmp_path / "small-vocab")
    config = json.loads((small / "config.json").read_text())
    config["vocab_size"] = 256
    (small / "config.json").write_text(json.dumps(config))
    refused(registry, ModelError, "tokenizer has 400 tokens but config.json's vocab_size is 256", hf=small)


def test_too_large_refused_before_loading(
    made: dict[str, Path], registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("loaded a model that does not fit")

    monkeypatch.setenv(model_files.MEMORY_LIMIT_ENV, "100000")
    monkeypatch.setattr(model_files.import_transformers().AutoModelForCausalLM, "from_pretrained", never)
    refused(registry, ModelError, "refused before loading", hf=made["llama"])
    with pytest.raises(ModelError, match="refused before loading"):
        model_files.load_hf_model(made["llama"])


# ---------------------------------------------------------------- the command line


def hspi(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HSPI_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "hspi", *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_cli(made: dict[str, Path], tmp_path: Path) -> None:
    home = tmp_path / "home"
    added = hspi(home, "model", "add", "tiny-llama", "--hf", str(made["llama"]), "--gguf", str(made["gguf"]))
    assert added.returncode == 0, added.stderr
    assert "tiny-llama: registered, LlamaForCausalLM" in added.stdout and "equal to the HF weights" in added.stdout
    again = hspi(home, "model", "add", "tiny-llama", "--hf", str(made["llama"]), "--gguf", str(made["gguf"]))
    assert again.returncode == 0 and "already registered" in again.stdout
    listed = hspi(home, "model", "list")
    assert listed.returncode == 0 and "tiny-llama" in listed.stdout and "lm-gpt2" in listed.stdout
    card = (home / "models" / "tiny-llama" / "card.json").read_bytes()

    pickled = copy_dir(made["llama"], tmp_path / "pickled", skip=("model.safetensors",))
    (pickled / "pytorch_model.bin").write_bytes(b"never opened")
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"not a gguf at all")
    for args, message in (
        (("tiny-llama", "--hf", str(made["qwen"])), "registered for other weights"),
        (("other", "--hf", str(pickled)), "pickled weights are refused"),
        (("other", "--gguf", str(garbage)), "not a readable GGUF file"),
        (("other",), "give its weights"),
    ):
        proc = hspi(home, "model", "add", *args)
        assert proc.returncode != 0 and proc.stderr.startswith("error: ") and message in proc.stderr, proc.stderr
        assert proc.stderr.count("\n") == 1, proc.stderr
    assert (home / "models" / "tiny-llama" / "card.json").read_bytes() == card
    assert not (home / "models" / "other").exists()
    shown = hspi(home, "model", "show", "tiny-llama")
    assert shown.returncode == 0 and json.loads(shown.stdout)["weights_sha256"] == json.loads(card)["weights_sha256"]
    missing = hspi(home, "model", "show", "nope")
    assert missing.returncode != 0 and "no model named 'nope'" in missing.stderr
