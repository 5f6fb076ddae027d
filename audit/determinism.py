"""Determinism and batch sensitivity from repeated answers to one prompt (model-agnostic, pure).

    read_determinism(observations) -> DeterminismReading

An observation is one answer to the same greedy one-token request: the token texts the endpoint
showed (the generated token, then its alternatives in the order sent) and their logprobs as float32
numbers.  Two answers are *identical* when every text and the bits of every float32 value agree.
Observations are taken `alone` (one request at a time; the first one is the cold one) or in a
`burst` (concurrent copies, which a batching server runs together).

Verdicts (each from bitwise comparisons only; nothing is averaged):

    deterministic     every answer identical.  Probability: Laplace's rule of succession over the n
                      answers, (n + 1) / (n + 2) that the next answer is identical too.
    batch-variant     answers differ, and they fall into groups of bit-identical answers: a few code
                      paths chosen by the batch a request ran in (batch size, batch-mates), or a cache
                      path for a repeated prompt.  Either the alone repeats agree and a burst differs, or
                      some answers coincide exactly while others do not.
    nondeterministic  answers differ and no two agree: every call took another path (atomics, sampling,
                      a different replica each time), or the paths are too many to see twice.  Also
                      when the generated token changes between answers whose logprobs for it differ
                      by more than GREEDY_SLACK nats: a greedy choice flips only between tokens that
                      nearly tie, so the endpoint samples (temperature > 0 whatever was asked), even
                      though a sampler's answers repeat whenever it draws the same token.
    unknown           fewer than two comparable answers, or greedy texts only that all agree (no
                      logprobs to compare bitwise; greedy texts that differ are grouped as bits are).

The probability of the two "differ" verdicts is the rule of succession over the comparisons that
support the grouping (pairs that agree for batch-variant, pairs that differ for nondeterministic);
that answers differ at all is certain (bits differ).  A first answer that differs from repeats that
agree with each other is reported as `cache_path` evidence: a repeated prompt can be served from a
prefix or KV cache (llama-cpp-python reuses the stored logits of an identical repeat), a code path
of its own, not noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

VERDICTS = ("deterministic", "batch-variant", "nondeterministic", "unknown")
# a code path moves a logprob by rounding (bf16's step at |logit| 16 is 0.125): far less than this
GREEDY_SLACK = 1.0


@dataclass(frozen=True)
class Observation:
    label: str  # e.g. "alone-1", "burst-2": names the answer in the evidence
    context: Literal["alone", "burst"]
    texts: tuple[str, ...]  # the generated token, then its alternatives as sent
    values: tuple[float, ...]  # the matching logprobs (empty: text only)

    def bits(self) -> tuple[int, ...]:
        return tuple(int(b) for b in np.asarray(self.values, dtype=np.float32).view(np.uint32))

    def key(self) -> tuple[tuple[str, ...], tuple[int, ...]]:
        return self.texts, self.bits()


@dataclass(frozen=True)
class DeterminismReading:
    verdict: str
    probability: float
    reason: str
    groups: list[list[str]] = field(default_factory=list)  # labels of bit-identical answers, first answer's first
    differences: list[dict[str, Any]] = field(default_factory=list)  # each other group versus the first
    cache_path: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "probability": self.probability,
            "reason": self.reason,
            "groups": self.groups,
            "differences": self.differences,
            "cache_path": self.cache_path,
        }


def _succession(supporting: int) -> float:
    return round((supporting + 1) / (supporting + 2), 4)


def _difference(a: Observation, b: Observation) -> dict[str, Any]:
    """Where answer b differs from answer a: texts, and values bitwise (with the largest gap in float32 ulps)."""
    out: dict[str, Any] = {"versus": a.label, "answer": b.label}
    if a.texts != b.texts:
        out["texts_differ_at"] = [i for i, (x, y) in enumerate(zip(a.texts, b.texts)) if x != y]
        if len(a.texts) != len(b.texts):
            out["lengths"] = [len(a.texts), len(b.texts)]
        if a.texts[:1] != b.texts[:1]:
            out["generated"] = [a.texts[0] if a.texts else None, b.texts[0] if b.texts else None]
    # values compared by token text (an alternative can move in the ranking)
    va, vb = dict(zip(a.texts, a.values)), dict(zip(b.texts, b.values))
    shared = [t for t in va if t in vb]
    if shared:
        x = np.asarray([va[t] for t in shared], dtype=np.float32)
        y = np.asarray([vb[t] for t in shared], dtype=np.float32)
        differ = x.view(np.uint32) != y.view(np.uint32)
        out["values_differ"] = int(differ.sum())
        out["values_compared"] = len(shared)
        if differ.any():
            gap = np.abs(x.astype(np.float64) - y.astype(np.float64))
            ulps = np.abs(x.view(np.int32).astype(np.int64) - y.view(np.int32).astype(np.int64))
            out["max_abs_diff"] = float(gap.max())
            out["max_ulps"] = int(ulps.max())
    return out


def _not_greedy(answers: Sequence[Observation]) -> list[tuple[Observation, Observation]]:
    """Pairs of answers whose generated tokens differ while those tokens' logprobs are more than
    GREEDY_SLACK apart: each was the argmax of its own call, so both calls cannot be greedy choices
    from numbers that differ by rounding."""
    first = [(o, o.texts[0], float(o.values[0])) for o in answers]
    return [
        (a, b)
        for i, (a, ta, va) in enumerate(first)
        for b, tb, vb in first[i + 1 :]
        if ta != tb and abs(va - vb) > GREEDY_SLACK
    ]


def _read_texts(usable: Sequence[Observation]) -> DeterminismReading:
    """Greedy answers without logprobs: texts that agree prove nothing (the numbers may still differ in
    their last bits), but a greedy text that differs proves the numbers did, so differing texts are read
    with the same grouping as bits."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for o in usable:
        groups.setdefault(o.texts, []).append(o.label)
    n = len(usable)
    if len(groups) == 1:
        return DeterminismReading(
            "unknown",
            0.0,
            f"text only: no logprobs to compare bit by bit (the {n} greedy answers agree in their text)",
            list(groups.values()),
        )
    agreeing_pairs = sum(math.comb(len(g), 2) for g in groups.values())
    if agreeing_pairs:
        reason = f"text only: {len(groups)} groups of identical greedy texts among {n} (a few code paths)"
        return DeterminismReading("batch-variant", _succession(agreeing_pairs), reason, list(groups.values()))
    reason = f"text only: no two of the {n} greedy answers to one prompt have the same text"
    return DeterminismReading("nondeterministic", _succession(math.comb(n, 2)), reason, list(groups.values()))


def read_determinism(observations: Sequence[Observation], *, generated_first: bool = True) -> DeterminismReading:
    """`generated_first`: each answer's first text is the generated token (False: the best of the
    alternatives shown, so the greedy-flip tell for a sampler does not apply)."""
    usable = [o for o in observations if o.texts]
    if len(usable) < 2:
        return DeterminismReading("unknown", 0.0, f"{len(usable)} answer(s) to the repeated prompt: nothing to compare")
    with_values = [o for o in usable if o.values and len(o.values) == len(o.texts)]
    if len(with_values) < 2:
        return _read_texts(usable)
    if any(not np.isfinite(np.asarray(o.values, dtype=np.float64)).all() for o in with_values):
        return DeterminismReading("unknown", 0.0, "a logprob is not a finite number: answers cannot be compared")
    groups: dict[tuple, list[Observation]] = {}
    for o in with_values:
        groups.setdefault(o.key(), []).append(o)
    ordered = list(groups.values())  # the first answer's group first (insertion order)
    labels = [[o.label for o in g] for g in ordered]
    n = len(with_values)
    if len(ordered) == 1:
        return DeterminismReading(
            "deterministic",
            _succession(n),
            f"all {n} answers bit-identical (texts and float32 logprobs), alone and in a burst"
            if any(o.context == "burst" for o in with_values)
            else f"all {n} answers bit-identical (texts and float32 logprobs); no burst was answered",
            labels,
        )
    first = ordered[0][0]
    differences = [_difference(first, g[0]) for g in ordered[1:]]
    alone = [o for o in with_values if o.context == "alone"]
    burst = [o for o in with_values if o.context == "burst"]
    alone_groups = {o.key() for o in alone}
    agreeing_pairs = sum(math.comb(len(g), 2) for g in ordered)
    differing_pairs = math.comb(n, 2) - agreeing_pairs
    repeats = alone[1:]
    cache_path = (
        len(repeats) >= 1
        and len({o.key() for o in repeats}) == 1
        and alone[0].key() != repeats[0].key()
        and all(o.key() == repeats[0].key() for o in burst)
    )
    flips = _not_greedy(with_values) if generated_first else []
    if flips:
        a, b = flips[0]
        verdict = "nondeterministic"
        reason = (
            f"the generated token changes ({a.label}: {a.texts[0]!r} at {a.values[0]:.3f}, {b.label}: "
            f"{b.texts[0]!r} at {b.values[0]:.3f}): no greedy choice flips between tokens more than "
            f"{GREEDY_SLACK:g} nat apart; the endpoint samples"
        )
        probability = _succession(len(flips))
    elif len(alone) >= 2 and len(alone_groups) == 1 and burst:
        verdict = "batch-variant"
        reason = (
            f"the {len(alone)} answers asked alone are bit-identical; {sum(o.key() not in alone_groups for o in burst)}"
            f" of {len(burst)} burst copies differ: the numbers depend on what the request ran with"
        )
        probability = _succession(len(alone) - 1 + sum(o.key() not in alone_groups for o in burst))
    elif agreeing_pairs > 0:
        verdict = "batch-variant"
        reason = (
            f"{len(ordered)} groups of bit-identical answers among {n}: a few code paths, chosen by the batch "
            "or a cache, not a new result every call"
        )
        if cache_path:
            reason += "; the cold first answer differs from the repeats, which agree (a cache path)"
        probability = _succession(agreeing_pairs)
    else:
        verdict = "nondeterministic"
        reason = f"no two of the {n} answers to one prompt are bit-identical"
        probability = _succession(differing_pairs)
    return DeterminismReading(verdict, probability, reason, labels, differences, cache_path)
