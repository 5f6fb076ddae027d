"""The token vocabulary of the reference LMs: token id <-> text, a bijection.

Token i is the single character U+4E00+i (CJK ideographs): no whitespace, no merges, so any
string of these characters tokenizes back to exactly the ids it came from in every engine
(our own server, and llama.cpp's SentencePiece tokenizer given this vocabulary).  Prompts can
therefore cross HTTP as text and still be pool probes.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from hspi.errors import ConfigError

FIRST_CODEPOINT = 0x4E00


def token_text(token_id: int, vocab_size: int) -> str:
    if not 0 <= token_id < vocab_size:
        raise ConfigError(f"token id {token_id} is outside the vocabulary (0..{vocab_size - 1})")
    return chr(FIRST_CODEPOINT + token_id)


def vocabulary(vocab_size: int) -> list[str]:
    return [chr(FIRST_CODEPOINT + i) for i in range(vocab_size)]


def decode(ids: Iterable[int], vocab_size: int) -> str:
    return "".join(token_text(int(i), vocab_size) for i in ids)


def encode(text: str, vocab_size: int) -> np.ndarray:
    """Token ids of `text`; a character outside the vocabulary is a user error naming it."""
    ids = np.fromiter((ord(c) - FIRST_CODEPOINT for c in text), dtype=np.int64, count=len(text))
    bad = (ids < 0) | (ids >= vocab_size)
    if bad.any():
        char = text[int(np.argmax(bad))]
        raise ConfigError(f"character {char!r} (U+{ord(char):04X}) is not a token of this model's vocabulary")
    return ids


def token_id(text: str, vocab_size: int) -> int | None:
    """The id whose text is `text`, or None (an empty string, several characters, or a foreign one)."""
    if len(text) != 1:
        return None
    i = ord(text) - FIRST_CODEPOINT
    return i if 0 <= i < vocab_size else None
