"""Answer probes inside the batches llama.cpp's `llama-server` forms when its slots are busy.

A probe sent to `llama-server --parallel N` is read in one batch with whatever the other slots
hold at that step: a token of each slot that is generating, the prompts of slots that started at
the same time.  Each composition below is such a batch, given by the lengths of the batch-mates
before and after the probe (`n` is the probe's own length, so `after:n-1` is a mate one token
shorter).  A mate of one token is a generating slot's step.  Every mate's last position is read, as
the server samples each slot's next token, so the last layer runs on as many rows as sequences end
in that micro-batch.  The mates' tokens are other probes' (one sequence's numbers do not read
another's tokens), and every composition runs from an empty KV cache through `SlotContext`, the
libllama the server is built from.

What is kept, as for `collector.batch_compositions`: each probe's distinct answers, with a bit mask
of the compositions that gave each; `sequences` is how many requests share the batch (1: alone).
Which compositions change an answer, and whether the answers of a real llama-server under load
fall in these sets, is measured in benchmarks/results/llama-server-batching.json.
"""

from __future__ import annotations

import numpy as np

from hspi.collector.llama_cpp_slots import SequencePart
from hspi.collector.probes import ProbeSet
from hspi.errors import ConfigError, TargetError
from hspi.responses import Responses

# mates before the probe ; mates after it: lengths, absolute or relative to the probe's length n
COMPOSITIONS: tuple[str, ...] = (
    "alone",
    *(f"after:{k}" for k in range(1, 9)),
    *(f"after:n{d:+d}" for d in range(-8, 2) if d),
    "after:n",
    "before:1",
    "before:n-1",
    "before:n",
    "before:n+1",
    "before:1,1",
    "before:1,1,1",
    "before:1|after:n-1",
    "before:1|after:n",
)


def mate_lengths(composition: str, n: int) -> tuple[list[int], list[int]]:
    """(lengths before the probe, lengths after it) of a composition, for a probe of n tokens."""
    before: list[int] = []
    after: list[int] = []
    if composition == "alone":
        return before, after
    for part in composition.split("|"):
        side, _, lengths = part.partition(":")
        if side not in ("before", "after") or not lengths:
            raise ConfigError(f"bad batch composition {composition!r}")
        for length in lengths.split(","):
            value = n + int(length[1:] or 0) if length.startswith("n") else int(length)
            (before if side == "before" else after).append(max(1, value))
    return before, after


def sequences(composition: str) -> int:
    """Requests in the batch: the probe and its mates."""
    before, after = mate_lengths(composition, 2)
    return 1 + len(before) + len(after)


def usable_compositions(slots: int) -> list[str]:
    """The compositions a server of `slots` slots can form."""
    return [c for c in COMPOSITIONS if sequences(c) <= slots]


def answer_in_compositions(
    target: object, probes: ProbeSet, ids: np.ndarray, compositions: list[str]
) -> tuple[Responses, list[int]]:
    """Each probe's distinct answers over `compositions` (rows sorted by probe id, then by the first
    composition that gave them) and per row the bit mask of the compositions that gave it."""
    from hspi.collector.targets.llama_cpp import LlamaCppTarget

    if not isinstance(target, LlamaCppTarget) or not target.platform.slots:
        raise ConfigError(f"answers in llama-server's batches run a llama.cpp platform with slots, not {target!r}")
    slots = target.platform.slots
    too_many = [c for c in compositions if sequences(c) > slots]
    if too_many:
        raise ConfigError(f"{target.platform.id}: compositions {too_many} need more than {slots} slots")
    ids = np.sort(np.asarray(ids, dtype=np.int32))
    context = target.slot_context()
    tokens = [target.engine_tokens(int(p), content) for p, content in zip(ids, probes.inputs(ids), strict=True)]
    rows: list[np.ndarray] = []
    masks: list[int] = []
    row_ids: list[int] = []
    for i, probe in enumerate(tokens):
        mates = [t for j, t in enumerate(tokens) if j != i] or [probe]
        distinct: dict[bytes, int] = {}
        for bit, composition in enumerate(compositions):
            before, after = mate_lengths(composition, len(probe))
            parts, slot = [], 1
            for k, length in enumerate(before + after):
                mate = mates[(i + k) % len(mates)]
                # a mate's last position is read too: the server samples every slot's next token
                part = SequencePart(slot, tuple(np.resize(np.asarray(mate), length).tolist()), output=True)
                parts.append(part)
                slot += 1
            mine = SequencePart(0, tuple(probe), output=True)
            batch = [*parts[: len(before)], mine, *parts[len(before) :]]
            answer = context.decode(batch)[0]
            key = answer.tobytes()
            if key not in distinct:
                distinct[key] = len(rows)
                rows.append(answer)
                masks.append(0)
                row_ids.append(int(ids[i]))
            masks[distinct[key]] |= 1 << bit
    native = np.stack(rows).astype(np.float32)
    responses = Responses(target.model, probes.version, np.asarray(row_ids, dtype=np.int32), native, "float32")
    if not np.isfinite(native).all():
        raise TargetError(f"{target.platform.id} produced NaN/Inf outputs on {target.model} in a batch")
    return responses, masks
