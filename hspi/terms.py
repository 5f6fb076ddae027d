"""The typed vocabulary every stage shares: access tiers, why an audit stopped, what it concluded.

String enums: each member equals its value (`Tier.TOPK20 == "topk20"`), so JSON, the database and
the API keep their plain strings while code names a fixed set.  `TIER_WIDTH` is the one tier table.
"""

from __future__ import annotations

from enum import StrEnum


class Tier(StrEnum):
    """What an auditor sees of one answer, richest first."""

    LOGITS = "logits"  # the full output vector (white box, or a JSON-logits endpoint)
    TOPK20 = "topk20"  # the top-20 log-probabilities of the first token
    TOPK5 = "topk5"
    TOP1 = "top1"  # the sampled token's log-probability only
    TEXT = "text"  # the greedy token only


# values one answer shows at each tier (None: every output, for the logits tier)
TIER_WIDTH: dict[Tier, int | None] = {Tier.LOGITS: None, Tier.TOPK20: 20, Tier.TOPK5: 5, Tier.TOP1: 1, Tier.TEXT: 1}
# what an OpenAI-compatible request asks for at each tier: top_logprobs (0: the sampled token's), None for text
TOP_LOGPROBS: dict[Tier, int | None] = {Tier.TOPK20: 20, Tier.TOPK5: 5, Tier.TOP1: 0, Tier.TEXT: None}


class StopReason(StrEnum):
    CONFIDENT = "confident"  # one candidate is certain and matches
    NO_SPLITTING_PROBE = "no-splitting-probe"  # no unused probe separates the candidates still likely
    NO_MATCH = "no-match"  # the answers fit no known platform
    BUDGET = "budget"
    POOL_EXHAUSTED = "pool-exhausted"
    TARGET_ERROR = "target-error"
    INTERRUPTED = "interrupted"  # stopped from outside (Ctrl-C, a cancel, a shutdown): the evidence is kept
    WRONG_MODEL = "wrong-model"  # the endpoint does not serve the model named (its vocabulary or its weights)
    # a candidate fits, but the false-match bound cannot be met within the budget or the pool
    BOUND_OUT_OF_REACH = "bound-out-of-reach"


class MatchStatus(StrEnum):
    """How the answers relate to the known platforms."""

    MATCH = "match"
    UNKNOWN = "unknown"  # no known platform fits
    # a known platform fits every answer, but the false-match bound against one never collected is not met
    UNBOUNDED = "unbounded"
    NO_EVIDENCE = "no-evidence"
    WRONG_MODEL = "wrong-model"  # the answers cannot come from this model: no platform of it is asked about


class Verdict(StrEnum):
    """An audit's overall word: against a claim, or (without one) what was found."""

    CONSISTENT = "consistent"
    INCONSISTENT = "inconsistent"
    INCONCLUSIVE = "inconclusive"
    UNKNOWN_PLATFORM = "unknown-platform"
    IDENTIFIED = "identified"  # no claim: the answers match a known class
    WRONG_MODEL = "wrong-model"  # the endpoint serves another model (or another tokenizer) than the one named
    # the answers fit nothing known, and one prompt asked again never gives the same answer twice
    NONDETERMINISTIC = "nondeterministic"


class AuditStatus(StrEnum):
    """Where an audit of the service is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"


class Scope(StrEnum):
    """API-key scopes, each including the ones before it."""

    READ = "read"
    WRITE = "write"
    ADMIN = "admin"
