"""Prompt text <-> token ids for a model, as its servers see them.

    built-in LMs     the single-character vocabulary of `vocabulary` (token i is U+4E00+i): a bijection
    registered LMs   the model's own Hugging Face tokenizer

`PromptCodec` is what the targets and the target server use to turn probes into prompts and answers
back into ids.  A token's *text* is what a server shows in `top_logprobs`: the token's piece with
its leading space (llama.cpp's `token_to_piece`), decoded from bytes.  Several tokens can show the
same text (byte-fallback pieces of a multi-byte character all read "\ufffd"); such a text maps to
no id (`token_id` is None): an ambiguous answer is marked, never guessed.
"""

from __future__ import annotations

import functools
from typing import Any, Protocol

import numpy as np

from hspi.collector import vocabulary
from hspi.errors import ConfigError, ModelError

# the text every token is decoded after, so a tokenizer's "no space at the start" rule hits the anchor
_ANCHOR_TEXT = "a"


class PromptCodec(Protocol):
    vocab_size: int

    def encode(self, text: str) -> np.ndarray: ...

    def decode(self, ids: np.ndarray | list[int]) -> str: ...

    def token_text(self, token_id: int) -> str: ...

    def token_id(self, text: str) -> int | None: ...

    def knows(self, text: str) -> bool:
        """Whether some token of the vocabulary shows this text (one token, or several: ambiguous)."""
        ...

    def model_input(self, ids: np.ndarray) -> np.ndarray:
        """The ids the model runs on for a prompt of these content ids (a BOS first, where the tokenizer adds one)."""
        ...


class BuiltinCodec:
    """The reference LMs' vocabulary: one character per token, no special tokens."""

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size

    def encode(self, text: str) -> np.ndarray:
        return vocabulary.encode(text, self.vocab_size)

    def decode(self, ids: np.ndarray | list[int]) -> str:
        return vocabulary.decode(ids, self.vocab_size)

    def token_text(self, token_id: int) -> str:
        return vocabulary.token_text(token_id, self.vocab_size)

    def token_id(self, text: str) -> int | None:
        return vocabulary.token_id(text, self.vocab_size)

    def knows(self, text: str) -> bool:
        return self.token_id(text) is not None

    def model_input(self, ids: np.ndarray) -> np.ndarray:
        return ids


class HfCodec:
    """A registered model's Hugging Face tokenizer.  Content ids never include special tokens; the BOS the
    tokenizer adds by default is added by `model_input`, as a server does when it tokenizes the prompt."""

    def __init__(self, tokenizer: Any, vocab_size: int) -> None:
        self.tokenizer, self.vocab_size = tokenizer, vocab_size
        self.special_ids = frozenset(int(i) for i in tokenizer.all_special_ids)
        with_special = tokenizer(_ANCHOR_TEXT, add_special_tokens=True)["input_ids"]
        without = tokenizer(_ANCHOR_TEXT, add_special_tokens=False)["input_ids"]
        if with_special[-len(without) :] != without:
            raise ModelError("the tokenizer adds special tokens after the prompt: not supported")
        self.prefix = np.asarray(with_special[: len(with_special) - len(without)], dtype=np.int64)
        self._anchor = without
        self._anchor_text = tokenizer.decode(without, clean_up_tokenization_spaces=False)
        texts = [self._piece(i) for i in range(len(tokenizer))]
        self._texts = texts
        owners: dict[str, list[int]] = {}
        for i, text in enumerate(texts):
            owners.setdefault(text, []).append(i)
        self._ids = {text: ids[0] for text, ids in owners.items() if len(ids) == 1 and text}
        self._known = frozenset(owners)

    def _piece(self, token_id: int) -> str:
        both = self.tokenizer.decode([*self._anchor, token_id], clean_up_tokenization_spaces=False)
        return both[len(self._anchor_text) :] if both.startswith(self._anchor_text) else both

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)

    def decode(self, ids: np.ndarray | list[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], clean_up_tokenization_spaces=False)

    def token_text(self, token_id: int) -> str:
        if not 0 <= token_id < len(self._texts):
            raise ConfigError(f"token id {token_id} is outside the tokenizer (0..{len(self._texts) - 1})")
        return self._texts[token_id]

    def token_id(self, text: str) -> int | None:
        return self._ids.get(text)

    def knows(self, text: str) -> bool:
        return text in self._known

    def model_input(self, ids: np.ndarray) -> np.ndarray:
        if not len(self.prefix):
            return ids
        ids = np.asarray(ids)
        prefix = np.broadcast_to(self.prefix, (*ids.shape[:-1], len(self.prefix)))
        return np.concatenate([prefix, ids], axis=-1)

    def word_ids(self) -> np.ndarray:
        """Tokens that make round-tripping prompts: a space then letters or digits, each its own encoding."""
        words = []
        for i, text in enumerate(self._texts):
            if i in self.special_ids or self._ids.get(text) != i:
                continue
            if len(text) >= 2 and text[0] == " " and text[1:].isalnum() and text[1:].isascii():
                if self.encode(text).tolist() == [i]:  # the pre-tokenizer keeps it whole (some split digits)
                    words.append(i)
        return np.asarray(words, dtype=np.int64)


class ChatCodec:
    """A registered model asked through its chat template: the same vocabulary and prompts, but the ids the
    model runs on are the template rendered around the prompt as one user message (with the generation
    prompt), tokenized as a chat server does: special tokens parsed, nothing added (the template holds them)."""

    def __init__(self, codec: HfCodec) -> None:
        self.codec, self.vocab_size = codec, codec.vocab_size
        self.tokenizer, self.special_ids = codec.tokenizer, codec.special_ids

    def encode(self, text: str) -> np.ndarray:
        return self.codec.encode(text)

    def decode(self, ids: np.ndarray | list[int]) -> str:
        return self.codec.decode(ids)

    def token_text(self, token_id: int) -> str:
        return self.codec.token_text(token_id)

    def token_id(self, text: str) -> int | None:
        return self.codec.token_id(text)

    def knows(self, text: str) -> bool:
        return self.codec.knows(text)

    def word_ids(self) -> np.ndarray:
        return self.codec.word_ids()

    def rendered(self, text: str) -> str:
        """The template's text for one user message, ending where the assistant's answer starts."""
        return str(
            self.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
            )
        )

    def chat_ids(self, text: str) -> np.ndarray:
        ids = self.tokenizer(self.rendered(text), add_special_tokens=False)["input_ids"]
        return np.asarray(ids, dtype=np.int64)

    def model_input(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids)
        if ids.ndim == 1:
            return self.chat_ids(self.decode(ids))
        rows = [self.chat_ids(self.decode(row)) for row in ids.reshape(-1, ids.shape[-1])]
        if len({len(r) for r in rows}) > 1:
            # a batch runs one shape; padding would be another computation than the server's
            raise ConfigError("chat-templated prompts of different lengths cannot share a batch: use bs=1")
        return np.stack(rows).reshape(*ids.shape[:-1], len(rows[0]))


@functools.cache
def codec_for(model: str) -> PromptCodec:
    """The codec of a language model known to hspi (built-in or registered)."""
    from hspi.collector.models import model_spec

    spec = model_spec(model)
    if spec.input_kind != "tokens":
        raise ConfigError(f"model {model} takes {spec.input_kind}s, not prompts")
    if spec.source == "builtin":
        return BuiltinCodec(spec.n_outputs)
    from hspi.collector.models import base_model, is_chat_view
    from hspi.collector.registry import registered_tokenizer

    if is_chat_view(model):  # the model's own codec (cached), rendered through its template
        base = codec_for(base_model(model))
        assert isinstance(base, HfCodec)
        return ChatCodec(base)
    return HfCodec(registered_tokenizer(model), spec.n_outputs)
