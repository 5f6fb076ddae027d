"""When an audit may say `match`: an e-process that bounds the chance of matching a platform never collected.

The classifier's posterior only ranks the *known* classes: after two answers it can be 1.000 for a
class whose near twin (a platform never collected, e.g. real AMX bf16 beside the AMD bf16 classes)
would have answered both probes the same.  This module adds a test whose false-match rate is
bounded at any stopping time.

Null hypothesis H0, per known class c: the target is a platform never collected whose answer to each
asked probe p is bit-identical to c's stored answer with probability at most a_p(c), given
everything asked before (the probe itself may be chosen from the answers so far).  The estimate:
the level L_p(c) is how many of c's k nearest known classes (most pool probes answered alike at
this tier) answer p like c does, and

    a_p(c) = A[L_p(c)],   A[l] = (agreeing + prior_agree) / (probes + prior_agree + prior_part)

tallied by leaving each known class h out in turn: when h's nearest other class c is a near twin
(agreement in [twin_agreement, 1)), c's levels are recomputed without h and, per level l, `probes`
counts c's pool probes at level l and `agreeing` those where h answers like c (then A is made
non-decreasing in l).  So a_p is how often a real near twin, unseen by the rest of the book,
agreed with its nearest class on probes like p.  The pseudo-counts keep a_p off 0 and 1.

Per candidate, E_c = Π over answered probes of 1[answer equals c's stored answer] / a_p(c) is a test
supermartingale under H0 (E[factor | past] ≤ a_p / a_p = 1).  The audit reports the uniform mixture
E = (1/C) Σ_c E_c, itself a test supermartingale, so by Ville's inequality P(sup_t E_t ≥ 1/α) ≤ α:
declaring `match` once E ≥ 1/α mis-declares an unseen platform with probability at most α, however
many answers the audit takes and whichever leader it ends with (the mixture pays for choosing the
leader after the fact: a single leader needs E_c ≥ C/α).  The number of answers follows: about
log(C/α) / mean(-log a_p) over the probes the audit asks, which is large where near twins agree
on most probes (measured in `benchmarks/results/verdicts.json`).

Assumptions, stated plainly (they are what the bound rests on, and they are not proven):
- the unseen platform agrees with c at most as often, per level, as the known near twins did when
  left out (an unseen platform closer to c than those were is not bounded at the stated α; a book
  with no near-twin pair calibrates nothing and a_p falls back to the prior, 1/2);
- answers to different probes are independent given the probes (the product needs it: rounding that
  is fragile on one probe may be fragile on the next in the same way).  `benchmarks/verdicts.py`
  checks both empirically, leaving known classes out and replaying a second vendor's real outputs.
Agreement is bit-identity of the answer as the tier shows it (the same signatures `ReferenceBook`
compares): a server whose log-softmax rounds otherwise than the references' never agrees, and
never matches under this rule (a missed match, not a false one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel

__all__ = [
    "BoundReading",
    "MatchBound",
    "agreement_levels",
    "agreement_rates",
    "level_rates",
    "answer_agreement",
    "candidate_log_evalues",
    "decide",
    "answers_to_bound",
]


@dataclass(frozen=True)
class MatchBound:
    """The false-match rate α an audit tolerates, and how a_p is estimated from the known classes."""

    alpha: float = 0.01
    neighbours: int = 3  # k: how many of the candidate's nearest known classes estimate a_p
    prior_agree: float = 1.0  # Beta pseudo-counts: a_p is never 0 ...
    prior_part: float = 1.0  # ... nor 1
    twin_agreement: float = 0.5  # a known class this close to its nearest other one calibrates a_p

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), not {self.alpha}")
        if self.neighbours < 0 or self.prior_agree <= 0 or self.prior_part <= 0:
            raise ValueError("neighbours must be >= 0 and both pseudo-counts > 0")

    @property
    def log_threshold(self) -> float:
        return math.log(1.0 / self.alpha)


class BoundReading(BaseModel):
    """What the bound says after the answers so far (reported as `evidence_bound`)."""

    alpha: float
    log_evalue: float | None  # log of the mixture e-value E = (1/C) Σ_c E_c (None: every candidate parted, E = 0)
    log_threshold: float  # log(1/α): match once log_evalue reaches it
    leader_log_evalue: float | None  # log E_c of the candidate with the largest e-value
    leader: int  # that candidate's index (-1: no answer, or every candidate parted)
    answers: int
    met: bool


def neighbour_indices(agreement: np.ndarray, candidate: int, k: int) -> np.ndarray:
    """The k classes other than `candidate` that answer most pool probes like it (ties: lower index)."""
    others = np.array([j for j in range(agreement.shape[0]) if j != candidate], dtype=np.int64)
    order = np.argsort(-agreement[candidate, others], kind="stable")
    return others[order[:k]]


def agreement_levels(same: np.ndarray, k: int) -> np.ndarray:
    """(C, n_pool) int: how many of candidate c's k nearest known classes answer probe p like c does."""
    same = np.asarray(same, dtype=bool)
    agreement = same.mean(axis=2)
    levels = np.zeros((same.shape[0], same.shape[2]), dtype=np.int64)
    for c in range(same.shape[0]):
        near = neighbour_indices(agreement, c, k)
        if len(near):
            levels[c] = same[c, near, :].sum(axis=0)
    return levels


def level_rates(same: np.ndarray, bound: MatchBound) -> np.ndarray:
    """(k + 1,) a per agreement level, calibrated by leaving each known class out in turn.

    Each class h whose nearest other class c is a near twin (agreement in [twin_agreement, 1)) plays
    the platform never collected: the levels of c are recomputed without h, and per level the share
    of probes on which h answers like c is tallied, smoothed with the prior pseudo-counts, and made
    non-decreasing in the level (more neighbours agreeing never makes agreement less likely)."""
    same = np.asarray(same, dtype=bool)
    n_classes, k = same.shape[0], bound.neighbours
    agree, total = np.zeros(k + 1), np.zeros(k + 1)
    agreement = same.mean(axis=2)
    for h in range(n_classes):
        keep = np.array([j for j in range(n_classes) if j != h], dtype=np.int64)
        if not len(keep):
            continue
        c_local = int(np.argmax(agreement[h, keep]))
        closeness = agreement[h, keep[c_local]]
        if not bound.twin_agreement <= closeness < 1.0:
            continue
        levels = agreement_levels(same[np.ix_(keep, keep)], k)[c_local]
        parted = same[h, keep[c_local]]
        agree += np.bincount(levels, weights=parted.astype(np.float64), minlength=k + 1)[: k + 1]
        total += np.bincount(levels, minlength=k + 1)[: k + 1]
    rates = (agree + bound.prior_agree) / (total + bound.prior_agree + bound.prior_part)
    return np.maximum.accumulate(rates)


def agreement_rates(same: np.ndarray, bound: MatchBound) -> np.ndarray:
    """(C, n_pool): a_p(c), the chance an unseen near twin of candidate c answers probe p like c does."""
    k = min(bound.neighbours, max(np.asarray(same).shape[0] - 1, 0))
    calibrated = MatchBound(
        alpha=bound.alpha,
        neighbours=k,
        prior_agree=bound.prior_agree,
        prior_part=bound.prior_part,
        twin_agreement=bound.twin_agreement,
    )
    return level_rates(same, calibrated)[agreement_levels(same, k)]


def answer_agreement(signatures: np.ndarray, rows: np.ndarray, answers: np.ndarray) -> np.ndarray:
    """(n_answers, C): whether each answer (its signature) equals each candidate's stored one at its row."""
    return np.asarray(signatures)[:, np.asarray(rows, dtype=np.int64)].T == np.asarray(answers)[:, None]


def candidate_log_evalues(rates: np.ndarray, rows: np.ndarray, agree: np.ndarray) -> np.ndarray:
    """(C,) log E_c = Σ_answers log(1[agree] / a_p(c)); -inf for a candidate some answer parts from."""
    rows = np.asarray(rows, dtype=np.int64)
    agree = np.asarray(agree, dtype=bool).reshape(len(rows), rates.shape[0])
    log_e = -np.log(rates[:, rows]).sum(axis=1)
    return np.where(agree.all(axis=0), log_e, -np.inf)


def decide(rates: np.ndarray, rows: np.ndarray, agree: np.ndarray, bound: MatchBound) -> BoundReading:
    """The mixture e-value of the answers so far (a_p from `agreement_rates`) and whether it reaches 1/α."""
    log_e = candidate_log_evalues(rates, rows, agree)
    finite = log_e[np.isfinite(log_e)]
    mixture = float(np.logaddexp.reduce(finite) - math.log(len(log_e))) if len(finite) else None
    leader = int(np.argmax(log_e)) if len(rows) and len(finite) else -1
    return BoundReading(
        alpha=bound.alpha,
        log_evalue=mixture,
        log_threshold=bound.log_threshold,
        leader_log_evalue=float(log_e[leader]) if leader >= 0 else None,
        leader=leader,
        answers=len(rows),
        met=bool(len(rows) and mixture is not None and mixture >= bound.log_threshold - 1e-12),
    )


def answers_to_bound(
    rates: np.ndarray, reading: BoundReading, free_rows: np.ndarray, log_evalues: np.ndarray
) -> int | None:
    """The fewest further answers that could lift the mixture e-value to 1/α; None if none can.

    Optimistic on purpose (so an audit is never stopped while the bound is still within reach): every
    candidate still standing is assumed to agree with all further answers, each on its own best unused
    probes (the largest -log a_p), so the mixture after m answers is at most
    (1/C) Σ_c exp(log E_c + the sum of c's m largest -log a_p over `free_rows`)."""
    if reading.met:
        return 0
    standing = np.flatnonzero(np.isfinite(log_evalues))
    free_rows = np.asarray(free_rows, dtype=np.int64)
    if not len(standing) or not len(free_rows):
        return None
    gains = np.sort(-np.log(rates[np.ix_(standing, free_rows)]), axis=1)[:, ::-1]
    reach = log_evalues[standing, None] + np.concatenate([np.zeros((len(standing), 1)), np.cumsum(gains, axis=1)], 1)
    mixture = np.logaddexp.reduce(reach, axis=0) - math.log(rates.shape[0])
    hit = np.flatnonzero(mixture >= reading.log_threshold - 1e-12)
    return int(hit[0]) if len(hit) else None
