"""Tiny Hugging Face models made inside the tests: random weights, tokenizers trained on generated text.

Nothing is downloaded.  `llama_dir` writes a LlamaForCausalLM with a SentencePiece tokenizer (BPE with
byte fallback); `qwen2_dir` a Qwen2ForCausalLM with a byte-level BPE tokenizer (`tokenizers`);
`gpt2_dir` a GPT2LMHeadModel with another byte-level BPE; `write_gguf` a GGUF of a model's tensors named and laid out as llama.cpp's converter writes them.
"""

from __future__ import annotations

import io
import os
import random
from pathlib import Path
from typing import Any

import numpy as np

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

WORDS = (
    "the platform computes logits of a model on hardware and software with kernels that round "
    "differently so outputs differ in the last bits fingerprint audit endpoint tokens probe matrix"
).split()


def corpus(lines: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    text = []
    for _ in range(lines):
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 12))]
        if rng.random() < 0.2:
            words.append(str(rng.randint(0, 9999)))
        if rng.random() < 0.1:
            words.append("café")  # a few non-ASCII characters, so byte fallback has work to do
        text.append(" ".join(words))
    return text


def train_sentencepiece(vocab_size: int = 400, seed: int = 0) -> bytes:
    """A SentencePiece BPE model with byte fallback, trained on generated text; the model file's bytes."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus(seed=seed)),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    return model.getvalue()


def byte_level_bpe(vocab_size: int = 300, seed: int = 0) -> Any:
    """A byte-level BPE tokenizer (GPT-2/Qwen2 style) trained with `tokenizers`, as a fast HF tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus(seed=seed), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>", bos_token="<|endoftext|>")


SIMPLE_CHAT_TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"


def llama_dir(
    directory: Path,
    seed: int = 0,
    vocab_size: int = 400,
    *,
    hidden: int = 64,
    layers: int = 2,
    tokenizer_seed: int = 0,
    chat_template: str = SIMPLE_CHAT_TEMPLATE,
) -> Path:
    """A tiny LlamaForCausalLM (about 200k parameters at the default shape) with a SentencePiece byte-fallback
    tokenizer trained on generated text (`tokenizer_seed`) and a chat template."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    spm_path = directory / "tokenizer.model"
    spm_path.write_bytes(train_sentencepiece(vocab_size, seed=tokenizer_seed))
    tokenizer = LlamaTokenizer.from_pretrained(str(directory), local_files_only=True)  # reads tokenizer.model
    assert len(tokenizer) == vocab_size
    tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(directory)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=round(2.5 * hidden),
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(directory, safe_serialization=True)
    return directory


def qwen2_dir(
    directory: Path,
    seed: int = 0,
    vocab_size: int = 300,
    *,
    hidden: int = 64,
    layers: int = 2,
    tied: bool = True,
    tokenizer_seed: int = 0,
) -> Path:
    """A tiny Qwen2ForCausalLM (tied embeddings unless `tied` is False) with a byte-level BPE tokenizer."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = byte_level_bpe(vocab_size, seed=tokenizer_seed)
    tokenizer.save_pretrained(directory)
    config = Qwen2Config(
        vocab_size=len(tokenizer),  # a corpus too small for vocab_size merges gives fewer tokens
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=tied,
    )
    torch.manual_seed(seed)
    Qwen2ForCausalLM(config).save_pretrained(directory, safe_serialization=True)
    return directory


def gpt2_dir(directory: Path, seed: int = 0, vocab_size: int = 300) -> Path:
    """A tiny GPT2LMHeadModel (tied embeddings, Conv1D layers) with a byte-level BPE tokenizer."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    directory.mkdir(parents=True, exist_ok=True)
    byte_level_bpe(vocab_size, seed=1).save_pretrained(directory)
    config = GPT2Config(
        vocab_size=vocab_size, n_positions=64, n_embd=64, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0
    )
    torch.manual_seed(seed)
    GPT2LMHeadModel(config).save_pretrained(directory, safe_serialization=True)
    return directory


def write_gguf(
    hf_directory: Path,
    path: Path,
    quantise: tuple[str, ...] = (),
    f16: tuple[str, ...] = (),
    *,
    tokenizer: bool = False,
) -> Path:
    """A GGUF of the HF model's tensors in F32, named and permuted as llama.cpp's converter does (tensors whose
    GGUF name is in `f16` are written F16, those in `quantise` Q8_0).  `tokenizer`: also the SentencePiece
    vocabulary of a Llama directory, read by gguf-py's own `SentencePieceVocab` and `SpecialVocab` (what
    llama.cpp's converter writes for it), so llama.cpp can tokenize text prompts."""
    import gguf
    from safetensors.numpy import load_file

    from hspi.collector.model_files import llama_permute

    config = __import__("json").loads((hf_directory / "config.json").read_text())
    arch_name = config["model_type"]  # llama, qwen2 or gpt2: the same names in transformers and llama.cpp
    arch = {name: key for key, name in gguf.MODEL_ARCH_NAMES.items()}[arch_name]
    n_layers = config.get("num_hidden_layers") or config["n_layer"]
    heads = config.get("num_attention_heads") or config["n_head"]
    kv_heads = config.get("num_key_value_heads") or heads
    name_map = gguf.get_tensor_name_map(arch, n_layers)
    tensors: dict[str, np.ndarray] = {}
    for file in sorted(hf_directory.glob("*.safetensors")):
        tensors.update(load_file(str(file)))
    writer = gguf.GGUFWriter(str(path), arch_name)
    hidden = config.get("hidden_size") or config["n_embd"]
    writer.add_context_length(config.get("max_position_embeddings") or config["n_positions"])
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(config.get("intermediate_size") or config.get("n_inner") or 4 * hidden)
    writer.add_block_count(n_layers)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_vocab_size(config["vocab_size"])
    if "rms_norm_eps" in config:
        writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    else:
        writer.add_layer_norm_eps(config["layer_norm_epsilon"])
    writer.add_file_type(0)
    if tokenizer:
        _add_sentencepiece_vocabulary(writer, hf_directory)
    for name in sorted(tensors):
        if name.endswith((".attn.bias", ".attn.masked_bias")):  # GPT-2's causal-mask buffers: not weights
            continue
        array = np.asarray(tensors[name], dtype=np.float32)
        if arch_name == "gpt2" and name.endswith(
            (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")
        ):
            array = np.ascontiguousarray(array.T)  # Conv1D stores (in, out); llama.cpp's converter transposes
        if arch_name == "llama" and name.endswith("q_proj.weight"):
            array = llama_permute(array, heads)
        if arch_name == "llama" and name.endswith("k_proj.weight"):
            array = llama_permute(array, kv_heads)
        new_name = name_map.get_name(name, try_suffixes=(".weight", ".bias"))
        assert new_name is not None, name
        if new_name in quantise:
            writer.add_tensor(
                new_name,
                gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0),
                raw_dtype=gguf.GGMLQuantizationType.Q8_0,
            )
        elif new_name in f16:
            writer.add_tensor(new_name, array.astype(np.float16))
        else:
            writer.add_tensor(new_name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _add_sentencepiece_vocabulary(writer: Any, hf_directory: Path) -> None:
    import gguf
    from gguf.vocab import SentencePieceVocab, SpecialVocab

    vocab = SentencePieceVocab(hf_directory)
    tokens, scores, types = zip(*vocab.all_tokens(), strict=True)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(list(tokens))
    writer.add_token_scores(list(scores))
    writer.add_token_types([int(t) for t in types])
    SpecialVocab(hf_directory, load_merges=False, n_vocab=len(tokens)).add_to_gguf(writer, quiet=True)
    assert isinstance(gguf.TokenType.NORMAL, int)


def sharpen_output_layer(directory: Path, scale: float = 25.0) -> Path:
    """Make a random model's next-token distribution look like a trained one's: the output rows of tokens a server
    cannot name unambiguously (special tokens, bytes that decode to U+FFFD) are zeroed, as untrained tokens' rows
    stay small, and the other rows are scaled so logits spread over a few nats instead of ~0.2.  Needs untied
    embeddings (the input embeddings stay as they are)."""
    import json

    from safetensors.numpy import load_file, save_file
    from transformers import AutoTokenizer

    from hspi.collector.prompt_codec import HfCodec

    config = json.loads((directory / "config.json").read_text())
    assert not config.get("tie_word_embeddings", False), "sharpen needs an untied output layer"
    codec = HfCodec(AutoTokenizer.from_pretrained(str(directory), local_files_only=True), config["vocab_size"])
    path = directory / "model.safetensors"
    tensors = load_file(str(path))
    head = tensors["lm_head.weight"].astype(np.float32)
    named = np.array([codec.token_id(codec.token_text(i)) == i for i in range(head.shape[0])])
    named[list(codec.special_ids)] = False
    head = np.where(named[:, None], head * scale, 0.0).astype(tensors["lm_head.weight"].dtype)
    tensors["lm_head.weight"] = head
    save_file(tensors, str(path), metadata={"format": "pt"})
    return directory
