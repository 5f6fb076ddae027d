"""When an audit may say `match`: an e-process that bounds the chance of matching a platform never collected.

The classifier's posterior only ranks the *known* classes: after two answers it can be 1.000 for a
class whose near twin (a platform never collected, e.g. real AMX bf16 beside the AMD bf16 classes)
would have answered both probes the same.  This module adds a test whose false-match rate is
bounded at any stopping time.

Null hypothesis H0, per known class c: the target is a platform never collected whose answer to each
asked probe p is bit-identical to c's stored answer with probability at most a_p(c), given
everything asked before (the probe itself may be chosen from the answers so far).  The estimate

    a_p(c) = (s_p(c) + prior_agree) / (k + prior_agree + prior_part)

where s_p(c) counts, among c's k nearest known classes (most pool probes answered alike at this
tier), those that answer p like c does.  A platform never collected is modelled as one more of c's
near neighbours: where c's known neighbours part from it, a new one is likely to part too; where all
of them agree with c, it is likely to agree as well, and such a probe is worth little (factor
(k + prior_agree + prior_part) / (k + prior_agree) at most).  The pseudo-counts keep a_p off 0 and 1.

Per candidate, E_c = Π over answered probes of 1[answer equals c's stored answer] / a_p(c) is a test
supermartingale under H0 (E[factor | past] ≤ a_p / a_p = 1).  The audit reports the uniform mixture
E = (1/C) Σ_c E_c, itself a test supermartingale, so by Ville's inequality P(sup_t E_t ≥ 1/α) ≤ α:
declaring `match` once E ≥ 1/α mis-declares an unseen platform with probability at most α, however
many answers the audit takes and whichever leader it ends with (the mixture pays for choosing the
leader after the fact: a single leader needs E_c ≥ C/α).  The number of answers follows: with k = 3
and the (1, 1) prior a_p ≥ 0.2, so at least ⌈log(C/α) / log 5⌉ answers.

Assumptions, stated plainly (they are what the bound rests on, and they are not proven):
- the unseen platform agrees with c at most as often as c's known near neighbours do, probe by probe
  (an unseen platform closer to c than any known one is not bounded at the stated α);
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

__all__ = ["BoundReading", "MatchBound", "agreement_rates", "answer_agreement", "candidate_log_evalues", "decide"]


@dataclass(frozen=True)
class MatchBound:
    """The false-match rate α an audit tolerates, and how a_p is estimated from the known classes."""

    alpha: float = 0.01
    neighbours: int = 3  # k: how many of the candidate's nearest known classes estimate a_p
    prior_agree: float = 1.0  # Beta pseudo-counts: a_p is never 0 ...
    prior_part: float = 1.0  # ... nor 1

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


def agreement_rates(same: np.ndarray, bound: MatchBound) -> np.ndarray:
    """(C, n_pool): a_p(c), the chance an unseen near twin of candidate c answers probe p like c does."""
    same = np.asarray(same, dtype=bool)
    agreement = same.mean(axis=2)
    rates = np.empty((same.shape[0], same.shape[2]))
    for c in range(same.shape[0]):
        near = neighbour_indices(agreement, c, bound.neighbours)
        agreeing = same[c, near, :].sum(axis=0) if len(near) else np.zeros(same.shape[2])
        rates[c] = (agreeing + bound.prior_agree) / (len(near) + bound.prior_agree + bound.prior_part)
    return rates


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
