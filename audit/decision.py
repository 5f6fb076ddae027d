"""When an audit may say `match`: an e-process that bounds the chance of matching a platform never collected.

The classifier's posterior only ranks the *known* classes: after two answers it can be 1.000 for a
class whose near twin (a platform never collected, e.g. real AMX bf16 beside the AMD bf16 classes)
would have answered both probes the same.  This module adds a test whose false-match rate is
bounded at any stopping time.

Null hypothesis H0, per known class c: the target is a platform never collected whose answer to each
asked probe p is bit-identical to c's stored answer with probability at most a_p(c), given
everything asked before (the probe itself may be chosen from the answers so far).  The estimate
reads c's near twins: those of its k nearest known classes that answer at least `twin_agreement`
of the pool alike.  A probe falls in one of four cells: c has no near twin; all of them part from c
on p; some do; none do.  Per cell, a = (agreeing + s·m) / (probes + s), tallied by leaving each known
class h out in turn: when h's nearest other class c is a near twin (agreement in [twin_agreement,
1)), c's near twins are recomputed without h, and per cell `probes` counts c's pool probes and
`agreeing` those where h answers like c.  The prior m is the closest pair of distinct known classes'
agreement (s = prior_agree + prior_part pseudo-probes): where nothing calibrates a cell, an unseen
platform is taken to come as close to c as the two closest collected platforms come to each other.
That matters most for a class with no near twin: its neighbours part from it everywhere, which says
nothing about where an unseen twin of it would part (an Intel fp16 platform answers like the AMD
fp16 `mlp` class, which has no near twin, on 98 % of probes).

Per candidate, E_c = Π over answered probes of 1[answer equals c's stored answer] / a_p(c) is a test
supermartingale under H0 (E[factor | past] ≤ a_p / a_p = 1).  The audit reports the uniform mixture
E = (1/C) Σ_c E_c, itself a test supermartingale, so by Ville's inequality P(sup_t E_t ≥ 1/α) ≤ α:
declaring `match` once E ≥ 1/α mis-declares an unseen platform with probability at most α, however
many answers the audit takes and whichever leader it ends with (the mixture pays for choosing the
leader after the fact: a single leader needs E_c ≥ C/α).  The number of answers follows: about
log(C/α) / mean(-log a_p) over the probes the audit asks, which is large where near twins agree
on most probes (measured in `benchmarks/results/verdicts.json`).

Heads (`decide_heads`): the same test for "the target's value of head h is not v", with one rate b
per head, the closest pair of known classes with different values of h (in any model of the
dataset, `ReferenceStore.head_closeness`): E_v = (1/C) Σ over candidates c of value v of
Π 1[agree] / b.  A dtype whose values never answer alike is decided in two or three answers while
the class, whose near twins agree on 92-99.6 % of probes, needs 80-160 or more.

Assumptions, stated plainly (they are what the bound rests on, and they are not proven):
- the unseen platform agrees with c at most as often, per cell, as the known near twins did when
  left out, or as the closest known pair where no twin calibrates the cell (an unseen platform
  closer to c than that is not bounded at the stated α: the Intel fp16 twin above, 98 % alike where
  the closest AMD `mlp` pair is 91 %, would be matched about 0.98^78 = 21 % of the time by an audit
  given the budget to reach the bound; at the default budget the bound is out of reach);
- for a head, that no unseen platform with another value comes closer than the closest known pair
  with different values (leave cnn's only bf16 torch.compile class out and nothing collected shows
  that compile and eager can agree on 99.6 % of probes: its engine is then decided wrongly);
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
    "agreement_rates",
    "level_rates",
    "candidate_log_evalues",
    "decide",
    "answers_to_bound",
    "HeadBoundReading",
    "closest_pair_rate",
    "head_closeness",
    "decide_heads",
    "answers_to_decide",
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


class HeadBoundReading(BaseModel):
    """One head's bound: whether the answers exclude, at α, a platform never collected whose value differs."""

    value: str | None  # the value whose e-value leads (None: no candidate fits every answer)
    log_evalue: float | None  # log E_v of that value (None: E = 0)
    log_threshold: float  # log(H/α): the heads share α (Bonferroni), so all decided heads hold together
    closeness: float  # b: how often a platform with another value may answer a probe like a candidate
    met: bool


class BoundReading(BaseModel):
    """What the bound says after the answers so far (reported as `evidence_bound`)."""

    alpha: float
    log_evalue: float | None  # log of the mixture e-value E = (1/C) Σ_c E_c (None: every candidate parted, E = 0)
    log_threshold: float  # log(1/α): match once log_evalue reaches it
    leader_log_evalue: float | None  # log E_c of the candidate with the largest e-value
    leader: int  # that candidate's index (-1: no answer, or every candidate parted)
    answers: int
    met: bool
    heads: dict[str, HeadBoundReading] = {}  # per head: its own bound (`decide_heads`)


def neighbour_indices(agreement: np.ndarray, candidate: int, k: int) -> np.ndarray:
    """The k classes other than `candidate` that answer most pool probes like it (ties: lower index)."""
    others = np.array([j for j in range(agreement.shape[0]) if j != candidate], dtype=np.int64)
    order = np.argsort(-agreement[candidate, others], kind="stable")
    return others[order[:k]]


CELLS = 4  # a-table cells: no near twin | every near twin parts | some part | none part


def cell(twins: np.ndarray | int, level: np.ndarray | int) -> np.ndarray:
    """The a-table cell of a probe for a candidate with `twins` near twins, `level` of them agreeing on it:
    0 no near twin (its levels say nothing), 1 all of them part, 2 some part, 3 all agree.  Pooled over
    how many twins there are: leaving one out leaves a class one twin short of how it stands in the book,
    so per-count cells would be calibrated where no audit reads them."""
    n, lv = np.asarray(twins), np.asarray(level)
    return np.where(n == 0, 0, np.where(lv == 0, 1, np.where(lv >= n, 3, 2)))


def twin_levels(same: np.ndarray, k: int, twin_agreement: float) -> tuple[np.ndarray, np.ndarray]:
    """(C,) how many near twins each candidate has among its k nearest known classes (agreement over the
    pool >= twin_agreement), and (C, n_pool) how many of those answer probe p like the candidate does."""
    same = np.asarray(same, dtype=bool)
    agreement = same.mean(axis=2)
    twins = np.zeros(same.shape[0], dtype=np.int64)
    levels = np.zeros((same.shape[0], same.shape[2]), dtype=np.int64)
    for c in range(same.shape[0]):
        near = neighbour_indices(agreement, c, k)
        near = near[agreement[c, near] >= twin_agreement]
        twins[c] = len(near)
        if len(near):
            levels[c] = same[c, near, :].sum(axis=0)
    return twins, levels


def smoothed(agreement: float, n_pool: int, bound: MatchBound) -> float:
    """A share of pool probes answered alike, with the bound's pseudo-counts: never 0 or 1."""
    return (agreement * n_pool + bound.prior_agree) / (n_pool + bound.prior_agree + bound.prior_part)


def closest_pair_rate(same: np.ndarray, bound: MatchBound) -> float:
    """How alike two distinct platforms can be, from the book: the closest pair of known classes that are
    not identical at this tier, their share of pool probes answered alike, smoothed by the pseudo-counts.

    The prior of every a-cell: where the book has no left-out twin to calibrate a cell (above all a class
    with no near twin, whose levels say nothing about where an unseen twin would part), an unseen
    platform is taken to agree with it as often as the closest known pair agree with each other."""
    same = np.asarray(same, dtype=bool)
    agreement = same.mean(axis=2)
    distinct = agreement[(agreement < 1.0) & ~np.eye(len(agreement), dtype=bool)]
    return smoothed(float(distinct.max()) if len(distinct) else 0.0, same.shape[2], bound)


def level_rates(same: np.ndarray, bound: MatchBound) -> np.ndarray:
    """(CELLS,) a per cell (`cell`), calibrated by leaving each known class out in turn.

    Each class h whose nearest other class c is a near twin (agreement in [twin_agreement, 1)) plays
    the platform never collected: c's near twins and levels are recomputed without h, and per cell the
    share of probes on which h answers like c is tallied.  A cell's rate is that share with
    prior_agree + prior_part pseudo-probes at `closest_pair_rate` (so a cell no twin calibrates, often
    the one for classes without near twins, is the closest-pair rate); cells 1-3 are made
    non-decreasing (more near twins agreeing never makes agreement less likely)."""
    same = np.asarray(same, dtype=bool)
    n_classes, k = same.shape[0], bound.neighbours
    agree, total = np.zeros(CELLS), np.zeros(CELLS)
    agreement = same.mean(axis=2)
    for h in range(n_classes):
        keep = np.array([j for j in range(n_classes) if j != h], dtype=np.int64)
        if not len(keep):
            continue
        c_local = int(np.argmax(agreement[h, keep]))
        closeness = agreement[h, keep[c_local]]
        if not bound.twin_agreement <= closeness < 1.0:
            continue
        twins, levels = twin_levels(same[np.ix_(keep, keep)], k, bound.twin_agreement)
        cells = cell(twins[c_local], levels[c_local])
        parted = same[h, keep[c_local]]
        agree += np.bincount(cells, weights=parted.astype(np.float64), minlength=CELLS)
        total += np.bincount(cells, minlength=CELLS)
    strength = bound.prior_agree + bound.prior_part
    rates = (agree + strength * closest_pair_rate(same, bound)) / (total + strength)
    rates[1:] = np.maximum.accumulate(rates[1:])
    return rates


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
    twins, levels = twin_levels(same, k, bound.twin_agreement)
    return level_rates(same, calibrated)[cell(twins[:, None], levels)]


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


def head_closeness(same: np.ndarray, values: list[str], bound: MatchBound) -> float:
    """b for one head: how alike the closest pair of known classes with *different* values of it answer
    the pool (smoothed like `closest_pair_rate`); the prior 1/2 when no two values exist to compare.

    A platform never collected whose value differs from candidate c's is taken to agree with c on any
    probe at most this often: the dtype head is settled in a few answers where no bf16 class ever answers
    like an fp32 one, while a hardware head whose ISA variants agree on 99 % of probes is not."""
    same = np.asarray(same, dtype=bool)
    labels = np.asarray(values)
    other = labels[:, None] != labels[None, :]
    if not other.any():
        return bound.prior_agree / (bound.prior_agree + bound.prior_part)
    return smoothed(float(same.mean(axis=2)[other].max()), same.shape[2], bound)


def decide_heads(
    agree: np.ndarray, labels: list[dict[str, str]], closeness: dict[str, float], bound: MatchBound
) -> dict[str, HeadBoundReading]:
    """Per head, the e-value of each value v: E_v = (1/C) Σ over candidates c with value v of
    Π_answers 1[answer equals c's] / b.  Under H0_u (an unseen platform whose value is u), each E_c with
    c's value ≠ u is a test supermartingale, so Σ_{v≠u} E_v is one too (started at <= 1): by Ville, some
    wrong value reaches 1/α with probability <= α, whatever u, the stopping time or the value read.  The H
    heads share α (each is decided at H/α), so every head a report states as decided holds together with
    probability >= 1 - α."""
    agree = np.asarray(agree, dtype=bool).reshape(-1, len(labels))
    fits: list[bool] = np.asarray(agree.all(axis=0)).astype(bool).tolist()
    threshold = bound.log_threshold + math.log(max(len(closeness), 1))
    out: dict[str, HeadBoundReading] = {}
    for head, b in closeness.items():
        values = [lab[head] for lab in labels]
        standing: dict[str, int] = {}
        for value, fit in zip(values, fits, strict=True):
            standing[value] = standing.get(value, 0) + int(fit)
        best = max(standing, key=lambda v: (standing[v], v)) if any(standing.values()) else None
        log_e = None
        if best is not None:
            log_e = math.log(standing[best] / len(labels)) - agree.shape[0] * math.log(b)
        out[head] = HeadBoundReading(
            value=best,
            log_evalue=log_e,
            log_threshold=threshold,
            closeness=b,
            met=bool(agree.shape[0] and log_e is not None and log_e >= threshold - 1e-12),
        )
    return out


def answers_to_decide(reading: HeadBoundReading, bound: MatchBound) -> int | None:
    """The fewest further answers that could lift the leading value's e-value to 1/α (each agreeing
    answer multiplies it by 1/b); None when no candidate fits (E = 0 for good) or b = 1."""
    if reading.met:
        return 0
    if reading.log_evalue is None or reading.closeness >= 1.0:
        return None
    return max(math.ceil((reading.log_threshold - reading.log_evalue) / -math.log(reading.closeness) - 1e-9), 1)
