"""Probes for a registered LM: prompts in the model's own vocabulary that survive a trip through text.

A probe is sent as text and the server tokenizes it, so its ids must come back exactly: ids -> text
-> the same ids, with no special token among them.  Prompts are drawn from the tokenizer's "word"
tokens (a space, then ASCII letters or digits: each its own encoding) and kept only when the whole
prompt round-trips; the draw is seeded by (model version, probe set, probe id), so any machine
regenerates the same prompts.  The first token walks a seeded permutation of the words, so
consecutive probes never share a first token: a server's prefix cache never serves one probe from
another's work.
"""

from __future__ import annotations

import functools

import numpy as np

from hspi.collector.models import ModelSpec, base_model
from hspi.collector.prompt_codec import HfCodec, codec_for
from hspi.errors import ModelError

MIN_WORDS = 8  # fewer word tokens than this cannot make distinct probes
MAX_DRAWS = 64  # draws per probe before the tokenizer is declared unusable for probing


@functools.cache
def _words(model: str, version: str) -> tuple[np.ndarray, np.ndarray]:
    """(word token ids, a seeded permutation of them for first tokens); `version` keys the cache."""
    codec = codec_for(base_model(model))  # a chat view draws from its model's vocabulary
    assert isinstance(codec, HfCodec)
    words = codec.word_ids()
    if len(words) < MIN_WORDS:
        raise ModelError(
            f"model {model!r}: its tokenizer has {len(words)} word tokens (a space, then letters or digits); "
            f"at least {MIN_WORDS} are needed to make probes"
        )
    order = np.random.default_rng([sum(map(ord, version)), 0]).permutation(words)
    return words, order


def round_trip_prompt(spec: ModelSpec, kind: str, probe_id: int, rng: np.random.Generator) -> np.ndarray:
    codec = codec_for(spec.name)
    words, order = _words(spec.name, spec.version)
    # another stream's probe with the same id starts elsewhere in the permutation
    first = int(order[(probe_id + {"pool": 0, "fresh": len(order) // 2}.get(kind, 0)) % len(order)])
    length = spec.input_shape[0]
    for _ in range(MAX_DRAWS):
        ids = np.concatenate([[first], rng.choice(words, size=length - 1)]).astype(np.int64)
        if np.array_equal(codec.encode(codec.decode(ids)), ids):
            return ids
    raise ModelError(
        f"model {spec.name!r}: no prompt of {length} word tokens round-tripped through its tokenizer "
        f"in {MAX_DRAWS} draws (probe {probe_id}); its tokenizer merges across words"
    )
