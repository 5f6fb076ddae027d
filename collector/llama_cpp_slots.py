"""A libllama context built as llama.cpp's C++ `llama-server` builds it for N parallel slots.

`llama-server --parallel N` runs one context with N sequences, each in its own KV stream
(`kv_unified` off, its default), and asks for the logits of each prompt's last position only.
Every step of its loop (`update_slots`) decodes one batch: a token of every slot that is
generating, then the prompt tokens of the slots that are reading one; libllama splits that batch
into micro-batches with an equal number of tokens per sequence.  So a probe's numbers depend on
how its own tokens are cut into micro-batches and on how many rows each has.  Measured
(benchmarks/results/llama-server-batching.json, lm-gpt2, 200 probes in 27 compositions each): a mate
after the probe as long as it changes every F32, F16 and BF16 answer; one a token shorter changes
every F32 answer, about half the F16 ones and 11 of 200 BF16 ones; Q4_K_M answers change on 7 of 200
probes, beside mates of many lengths; Q8_0 and Q4_0 answers never.  Mates before the probe, and
generating slots' single tokens, changed none.

`SlotContext.decode` runs such a batch through the same libllama the server is built from (`make`
builds both from one tree), so these are the server's numbers, not a model of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from hspi.errors import TargetError
from hspi.platform import Platform

SERVER_N_BATCH = 2048  # llama-server's default --batch-size: the tokens one step of its loop may decode


@dataclass(frozen=True)
class SequencePart:
    """One sequence's tokens in a batch: `seq` its slot, `start` the position of its first token (the
    slot's KV cache holds the positions before it), `output` whether its last position's logits are read."""

    seq: int
    tokens: tuple[int, ...]
    start: int = 0
    output: bool = False


class SlotContext:
    """libllama context of `slots` sequences, one KV stream each, logits read per sequence."""

    def __init__(self, llama: Any, platform: Platform, n_ctx_per_slot: int, kv_type: int) -> None:
        import llama_cpp

        self._lib = llama_cpp
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx_per_slot * platform.slots
        params.n_batch = max(SERVER_N_BATCH, platform.batch_size)  # the server's logical batch: its default
        params.n_ubatch = platform.batch_size  # the platform's batch size is the micro-batch (--ubatch-size)
        params.n_seq_max = platform.slots
        params.kv_unified = False  # llama-server's default: a KV stream per slot
        params.flash_attn_type = (
            llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if platform.flash_attn else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        params.type_k = params.type_v = kv_type
        params.n_threads = params.n_threads_batch = platform.threads
        self.slots = platform.slots
        self._ctx = llama_cpp.llama_init_from_model(llama._model.model, params)
        if not self._ctx:
            raise TargetError(f"{platform.id}: llama.cpp could not create a context of {platform.slots} slots")
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(llama._model.model))

    def decode(self, parts: list[SequencePart], *, keep: bool = False) -> dict[int, np.ndarray]:
        """Decode one batch (parts in batch order) and return each output part's last-position logits by slot.
        The KV cache is emptied first unless `keep` (then earlier decodes' positions stay, as a slot's do)."""
        lib = self._lib
        if not keep:
            lib.llama_memory_clear(lib.llama_get_memory(self._ctx), True)
        n = sum(len(p.tokens) for p in parts)
        batch = lib.llama_batch_init(n, 0, self.slots)
        try:
            index, rows = 0, {}
            for part in parts:
                if not 0 <= part.seq < self.slots:
                    raise TargetError(f"slot {part.seq} is outside 0..{self.slots - 1}")
                for j, token in enumerate(part.tokens):
                    batch.token[index], batch.pos[index] = token, part.start + j
                    batch.n_seq_id[index], batch.seq_id[index][0] = 1, part.seq
                    batch.logits[index] = part.output and j == len(part.tokens) - 1
                    if batch.logits[index]:
                        rows[part.seq] = index
                    index += 1
            batch.n_tokens = n
            status = lib.llama_decode(self._ctx, batch)
            if status != 0:
                raise TargetError(f"llama.cpp failed to decode a batch of {n} tokens (status {status})")
            return {
                seq: np.ctypeslib.as_array(lib.llama_get_logits_ith(self._ctx, row), shape=(self.n_vocab,)).copy()
                for seq, row in rows.items()
            }
        finally:
            lib.llama_batch_free(batch)

    def alone(self, tokens: list[int]) -> np.ndarray:
        """A prompt's last-position logits, read by one slot with the others idle: its reference answer."""
        return self.decode([SequencePart(0, tuple(tokens), output=True)])[0]

    def close(self) -> None:
        if self._ctx:
            self._lib.llama_free(self._ctx)
            self._ctx = None
