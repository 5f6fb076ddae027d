"""A provider's claim ("dtype=fp32,hardware=x86-avx2") and its verdict against an audit's posteriors.

A claimed value matches a label when each of its comma-separated parts equals a part of the label
or ends it after a '-' (so `hardware=x86-avx2` matches `amd-x86-avx2`, `kernel=bs=8` matches
`attn=sdpa,bs=8,mm=highest`).  A class label that joins members with '|' matches if any member does.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel

from hspi.audit.identification import Guess
from hspi.errors import ConfigError
from hspi.platform import HEADS
from hspi.terms import MatchStatus, Verdict

CONSISTENT_AT = 0.95  # the claim's labels hold at least this much posterior
INCONSISTENT_AT = 0.05  # ... or at most this much
TOP_GUESSES = 3  # guesses shown per head


def parse_claim(text: str | None) -> dict[str, str]:
    if not text:
        return {}
    claim = {}
    for part in _split_pairs(text):
        head, sep, value = part.partition("=")
        head, value = head.strip(), value.strip()
        if not sep or not value:
            raise ConfigError(f"bad claim {part!r}: expected HEAD=VALUE with HEAD one of {', '.join(HEADS)}")
        if head not in HEADS:
            raise ConfigError(f"bad claim head {head!r}; allowed: {', '.join(HEADS)}")
        claim[head] = value
    return claim


def _split_pairs(text: str) -> list[str]:
    """Split on commas that start a new HEAD=... pair (kernel values contain commas themselves)."""
    pairs: list[str] = []
    for piece in text.split(","):
        if pairs and "=" in piece and piece.split("=", 1)[0].strip() not in HEADS:
            pairs[-1] += "," + piece  # e.g. the "bs=8" of "kernel=attn=sdpa,bs=8"
        elif pairs and "=" not in piece:
            pairs[-1] += "," + piece
        else:
            pairs.append(piece)
    return pairs


def label_matches(claimed: str, label: str) -> bool:
    members = label.lower().split("|")
    parts = [p.strip() for p in claimed.lower().split(",") if p.strip()]
    return any(
        all(any(p == q or q.endswith("-" + p) for q in member.split(",")) for p in parts) or member == claimed.lower()
        for member in members
    )


def head_verdict(claimed: str, values: list[str], posterior: list[float]) -> tuple[str, float | None, str]:
    """(verdict, probability of the claim, why) for one head."""
    matching = [i for i, v in enumerate(values) if label_matches(claimed, v)]
    if not matching:
        return (
            "inconclusive",
            None,
            f"no reference platform has {claimed!r}; the known labels are {', '.join(values)}",
        )
    p = float(sum(posterior[i] for i in matching))
    if p >= CONSISTENT_AT:
        return "consistent", p, f"the answers fit {claimed!r} with probability {p:.3f}"
    if p <= INCONSISTENT_AT:
        best = values[max(range(len(values)), key=lambda i: posterior[i])]
        return "inconsistent", p, f"the answers fit {best!r}, not {claimed!r} (p = {p:.3f})"
    return "inconclusive", p, f"the answers fit {claimed!r} with probability {p:.3f} only"


def overall_verdict(head_verdicts: dict[str, str]) -> str:
    if any(v == "inconsistent" for v in head_verdicts.values()):
        return "inconsistent"
    if head_verdicts and all(v == "consistent" for v in head_verdicts.values()):
        return "consistent"
    return "inconclusive"


class HeadReport(BaseModel):
    """One head's reading.  `decided` is False where the evidence does not settle it (no known platform
    matches, or no value holds CONSISTENT_AT of the posterior) or where every collected platform has
    the same value ("not measured here"): its guesses are then empty and a claim on it inconclusive."""

    guesses: list[Guess]
    decided: bool = True
    basis: str = "reference-match"  # what evidence the reading rests on
    claimed: str | None = None
    claim_probability: float | None = None
    verdict: str | None = None
    why: str = ""


def head_reports(
    head_posteriors: dict[str, tuple[list[str], np.ndarray]],
    claim: dict[str, str],
    *,
    matched: bool = True,
    decided_by_bound: dict[str, str] | None = None,
    basis: str = "reference-match",
) -> tuple[dict[str, HeadReport], dict[str, str]]:
    """Each head's ranked guesses and, for a claimed head, its verdict: (reports, verdicts of claimed heads).

    The one place posteriors meet a claim: audits, `/v1/classify` and `hspi demo` all go through it.
    A head speaks only where the evidence decides it: not when no known platform matches (`matched`
    False: the heads' models were trained on the collected platforms only, so their labels say nothing
    about one never collected), not while a match waits for its false-match bound (`decided_by_bound`
    given: a head speaks only if its own bound decided its leading value, the others show their guesses
    undecided), not when its leading value holds less than CONSISTENT_AT, and not when every collected
    platform shares one value (nothing was measured)."""
    heads: dict[str, HeadReport] = {}
    verdicts: dict[str, str] = {}
    for head, (values, post) in head_posteriors.items():
        order = np.argsort(-post)[:TOP_GUESSES]
        guesses = [Guess(label=values[i], probability=round(float(post[i]), 4)) for i in order]
        if len(values) == 1:
            report = HeadReport(
                guesses=[],
                decided=False,
                basis="none",
                why=f"not measured here: every collected platform has {head} {values[0]!r}",
            )
        elif not matched:
            report = HeadReport(
                guesses=[],
                decided=False,
                basis="none",
                why="unknown: no collected platform matches, so this head's labels do not apply",
            )
        elif decided_by_bound is not None and decided_by_bound.get(head) != values[order[0]]:
            report = HeadReport(
                guesses=guesses,
                decided=False,
                basis=basis,
                why="undecided: the answers fit a collected platform but do not yet exclude one never collected "
                "with another value of this head (see evidence_bound)",
            )
        elif float(post[order[0]]) < CONSISTENT_AT:
            report = HeadReport(
                guesses=guesses,
                decided=False,
                basis=basis,
                why=f"undecided: the leading value holds {float(post[order[0]]):.3f} < {CONSISTENT_AT}",
            )
        elif decided_by_bound is not None:
            report = HeadReport(
                guesses=guesses,
                basis=basis,
                why="decided by this head's own bound: the answers exclude, at the false-match rate, a platform "
                "never collected with another value of it, though not yet one with another platform class",
            )
        else:
            report = HeadReport(guesses=guesses, basis=basis)
        if head in claim:
            if report.decided:
                verdict, p, why = head_verdict(claim[head], values, [float(x) for x in post])
                report.claim_probability = None if p is None else round(p, 4)
            else:
                verdict, why = "inconclusive", f"{claim[head]!r} cannot be checked: {report.why}"
            report.claimed, report.verdict, report.why = claim[head], verdict, why
            verdicts[head] = verdict
        heads[head] = report
    return heads, verdicts


def wrong_model_heads(head_names: list[str], claim: dict[str, str]) -> dict[str, HeadReport]:
    """Every head under wrong-model: unknown, with no guesses (the heads know platforms of another model)."""
    why = "unknown: the endpoint does not serve this model, so no platform of it can be named"
    heads = {}
    for head in head_names:
        report = HeadReport(guesses=[], decided=False, basis="none", why=why)
        if head in claim:
            report.claimed, report.verdict = claim[head], "inconclusive"
            report.why = f"{claim[head]!r} cannot be checked: {why}"
        heads[head] = report
    return heads


def audit_verdict(
    status: MatchStatus, verdicts: dict[str, str], claim: dict[str, str], *, cut_short: bool, settled: bool = True
) -> Verdict:
    """The overall word.  With a claim: consistent / inconsistent / inconclusive / unknown-platform.
    Without one: identified (a known class matches, settled), unknown-platform, or inconclusive.
    Either way wrong-model when the endpoint does not serve the model at all."""
    if status is MatchStatus.WRONG_MODEL:
        return Verdict.WRONG_MODEL
    if status is MatchStatus.UNKNOWN:
        return Verdict.UNKNOWN_PLATFORM
    if status is MatchStatus.NO_EVIDENCE:
        return Verdict.INCONCLUSIVE
    if not claim:
        return Verdict.IDENTIFIED if settled and not cut_short else Verdict.INCONCLUSIVE
    overall = Verdict(overall_verdict(verdicts))
    if cut_short and overall is Verdict.CONSISTENT:
        return Verdict.INCONCLUSIVE  # an audit cut short confirms nothing
    return overall
