"""Is one prompt's answer stable?  Read when a reference audit's answers fit no collected platform.

    repeat_reading(answers) -> Check

Answers that fit nothing known come from one of two kinds of endpoint: a platform never collected,
whose answers are reproducible, or an endpoint whose answers change from call to call (a sampler
with temperature > 0 whatever the request asks, a nondeterministic reduction, batch-mates that
change every answer).  Naming the second `unknown-platform` would send the auditor looking for a
platform to collect that does not exist.  Telling them apart costs `REPEATS` more queries: the
audit asks one probe it answered again, alone, and the answers to that one prompt are compared
bit for bit by `audit.determinism` (texts only at the text tier, where a greedy text that differs
proves the numbers did).  No two identical: `nondeterministic`, and the audit names no platform.
The probe asked again is, of those answered, one whose top two outputs are more than GREEDY_SLACK
apart on every collected platform: there a greedy token that changes between calls is a sampler's
draw, not a near tie flipped by rounding, which a reading of texts alone (the text tier) could not
tell apart.  Of those, the one with the smallest gap: a sampler draws another token there most often.

Why 3 repeats (4 answers to one prompt): a batch-variant server has a few code paths; with 3
equally likely paths, 3 answers are all distinct with probability 6/27, 4 answers never are.
"""

from __future__ import annotations

from collections.abc import Sequence

from hspi.audit.agnostic import Check
from hspi.audit.determinism import GREEDY_SLACK, Observation, read_determinism

REPEATS = 3  # one answered probe asked again: 4 answers to one prompt
# (label, ids shown best first, their values: empty at the text tier) per answer, the first one first
RepeatedAnswer = tuple[str, Sequence[int], Sequence[float]]


def repeat_reading(
    answers: Sequence[RepeatedAnswer], *, generated_first: bool, margin: float | None = None, not_asked: str = ""
) -> Check:
    """The determinism reading of one prompt's answers; `generated_first`: each answer shows the generated
    token first (top1, text), not the best alternative (top-k, logits); `margin`: the prompt's gap between
    its top two outputs, the smallest over the collected classes (None: not known); `not_asked`: why the
    repeats stopped early."""
    observations = [
        Observation(label, "alone", tuple(str(int(i)) for i in ids), tuple(float(v) for v in values))
        for label, ids, values in answers
    ]
    reading = read_determinism(observations, generated_first=generated_first)
    verdict, probability, reason = reading.verdict, reading.probability, reading.reason
    generated = {tuple(o.texts[:1]) for o in observations}
    if generated_first and margin is not None and margin > GREEDY_SLACK and len(generated) > 1:
        # a greedy choice cannot flip on this prompt: every collected platform puts its top output
        # `margin` above the next, far beyond what rounding moves (texts alone show it too)
        verdict, probability = "nondeterministic", round(1 - 1 / (len(observations) + 1), 4)
        reason = (
            f"the generated token changes between {len(observations)} answers to a prompt whose top two outputs "
            f"are {margin:.2f} apart on every collected platform: no greedy choice flips there; the endpoint samples"
        )
    reason += f" ({not_asked})" if not_asked else ""
    return Check(
        verdict=verdict,
        probability=probability,
        reason=reason,
        evidence={
            "margin": None if margin is None else round(float(margin), 4),
            "answers": len(observations),
            "groups": reading.groups,
            "differences": reading.differences,
            "cache_path": reading.cache_path,
        },
    )
