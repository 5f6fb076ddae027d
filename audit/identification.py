"""`Identification`: ranked guesses per head for answers collected elsewhere, how well the best
candidate matches, or a plain no-match."""

from __future__ import annotations

from pydantic import BaseModel

from hspi.terms import MatchStatus


class Guess(BaseModel):
    label: str
    probability: float


class Identification(BaseModel):
    model: str
    tier: str
    queries: int
    status: MatchStatus
    match_score: float  # mean probability that the best candidate ran the target, in [0, 1]
    threshold: float  # below it the answer is "unknown"
    heads: dict[str, list[Guess]]  # best first
    reason: str = ""
