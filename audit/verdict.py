"""`Verdict`: ranked guesses per head, how well the best candidate matches, or a plain no-match."""

from __future__ import annotations

from pydantic import BaseModel


class Guess(BaseModel):
    label: str
    probability: float


class Verdict(BaseModel):
    model: str
    tier: str
    queries: int
    status: str  # "match" | "unknown"
    match_score: float  # mean probability that the best candidate ran the target, in [0, 1]
    threshold: float  # below it the answer is "unknown"
    heads: dict[str, list[Guess]]  # best first
    reason: str = ""
