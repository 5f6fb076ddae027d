"""Sequential evidence over pool probes: update after each answer, pick the next probe that splits.

`ReferenceEvidence` holds, for one model and tier, every candidate class's stored view of every
pool probe.  After each answer it scores all candidates with the trained `ReferenceMatcher`, sums
log-odds over the answers so far and exposes the posterior.  `next_probe` picks the unused probe on
which the current candidates' stored answers disagree most (expected Gini impurity of what the
target will show under the posterior): probes where every likely candidate answers identically say
nothing, so an audit does not spend budget on them.

Once the likely candidates are settled (no probe splits them), the next probes *verify* the
leader: the probes on which its stored answer differs from its known neighbours, or they differ
from each other, the rarest partings first.  Those are the inputs where this platform's rounding
is fragile, so a platform never collected that is a near twin of the leader (e.g. another ISA in
the same dtype) is most likely to show there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from hspi.classifier.batched import AnswerReading, BatchedAnswers, read_answer_signature
from hspi.classifier.evidence import group_sum, log_odds, softmax
from hspi.classifier.reference import SCORE_TOLERANCE, CalibratedMatcher, ReferenceMatcher
from hspi.errors import ConfigError
from hspi.features.relative import relative_features
from hspi.features.tiers import TierView, shown_and_full

# Below this chance that two likely candidates answer any probe differently, the candidates are
# settled and further probes verify the leader instead of splitting.
SETTLED_BELOW = 1e-6


def answer_signatures(view: TierView) -> np.ndarray:
    """(n,) int64 hash of each row's shown ids and value bits: equal rows, equal signatures."""
    ids = np.ascontiguousarray(view.ids, dtype=np.int64)
    bits = np.ascontiguousarray(view.values, dtype=np.float32).view(np.uint32).astype(np.int64)
    mixed = ids * np.int64(0x9E3779B1) ^ bits
    weights = np.int64(1_000_003) ** np.arange(mixed.shape[1], dtype=np.int64)  # wraps: a hash, not a number
    return (mixed * weights).sum(axis=1)


class ReferenceBook:
    """Every candidate's stored answers at one tier, precomputed once and shared by many audits."""

    def __init__(
        self,
        references: Sequence[np.ndarray],
        labels: Sequence[dict[str, str]],
        tier: str,
        pool_ids: np.ndarray,
        *,
        batched: BatchedAnswers | None = None,
        conventions: Sequence[str] | None = None,
    ) -> None:
        """`references[c]` (n_pool, V): candidate c's stored outputs, rows in `pool_ids` order; `batched`:
        their answers under dynamic batching, where collected (`classifier.batched`); `conventions[c]`: how
        candidate c's server shows logprobs (default numpy's)."""
        if not references:
            raise ConfigError("no candidate platforms to compare with")
        self.labels, self.tier = list(labels), tier
        self.conventions = list(conventions) if conventions is not None else ["numpy"] * len(references)
        if len(self.conventions) != len(references):
            raise ConfigError(f"{len(self.conventions)} logprob conventions for {len(references)} candidates")
        self.pool_ids = np.asarray(pool_ids)
        self.row = {int(p): i for i, p in enumerate(self.pool_ids)}
        shown = [shown_and_full(r, tier, c) for r, c in zip(references, self.conventions)]
        # tier units (logits or logprobs), as each candidate's server shows them
        self.reference_full = [full for _, full in shown]
        # what each candidate would show for each probe, hashed: where candidates split
        self.signatures = np.stack([answer_signatures(view) for view, _ in shown])  # (C, n_pool)
        self.same = same_answers(self.signatures)  # (C, C, n_pool): candidates i and j answer alike
        self.agreement = self.same.mean(axis=2)  # (C, C): share of probes they answer alike
        self._prior_scores: np.ndarray | None = None
        self.batched = batched
        # per (candidate, row): signatures, size masks and tier-unit values of its answers under batching
        self.alternates: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for c, rows in enumerate(batched.per_class if batched is not None else []):
            for row, (values, masks) in rows.items():
                view, full = shown_and_full(values, tier, self.conventions[c])
                self.alternates[(c, row)] = (answer_signatures(view), masks, full)

    def read(self, row: int, shown: int) -> AnswerReading | None:
        """One answer (its signature) read against every candidate's answers under batching; None without them."""
        if self.batched is None:
            return None
        alternates = [self.alternates.get((c, row)) for c in range(len(self.labels))]
        return read_answer_signature(
            shown, self.signatures[:, row], [None if a is None else (a[0], a[1]) for a in alternates], self.batched
        )

    def fits(self, rows: np.ndarray, shown: np.ndarray) -> np.ndarray:
        """(n_answers, C): whether each answer equals candidate c's stored answer at its row, or one of its
        answers under batching."""
        agree = self.signatures[:, np.asarray(rows, dtype=np.int64)].T == np.asarray(shown)[:, None]
        for i, (row, sig) in enumerate(zip(rows, shown)):
            reading = self.read(int(row), int(sig))
            if reading is not None:
                agree[i] |= reading.fits
        return agree

    def reference_for(self, candidate: int, row: int, shown: int) -> np.ndarray:
        """(1, V) the candidate's answer to compare an answer with: the one under batching equal to it,
        else the stored one."""
        alt = self.alternates.get((candidate, row))
        if alt is not None and self.signatures[candidate, row] != shown:
            hit = np.flatnonzero(alt[0] == shown)
            if len(hit):
                return alt[2][hit[0] : hit[0] + 1]
        return self.reference_full[candidate][row : row + 1]

    def prior_split_scores(self) -> np.ndarray:
        """Split scores before any answer (uniform prior), computed once."""
        if self._prior_scores is None:
            n = self.signatures.shape[0]
            self._prior_scores = split_scores(self.same, np.full(n, 1.0 / n))
        return self._prior_scores

    def fragility(self, candidate: int) -> np.ndarray:
        """(n_pool,) per probe: how likely an unknown near twin of `candidate` is to part from it there.

        Two terms, each parting weighed by its surprise 1/(1 - a), a the share of probes the two
        answer alike: where a twin that parts on 0.5% of probes parts counts 12 times more than where
        a sibling group that parts on 6% does (weights linear in a picked the group partings, where
        an unknown twin answers like its group, and missed the twins).
        - Σ_j over the other candidates j that answer the probe differently from `candidate`; one
          that never agrees adds 1 to every probe, so a leader without close neighbours is still
          verified on further probes, not left alone.
        - Σ_{i<j} a_ci a_cj over pairs of its neighbours that part from each other there: rounding
          is fragile on few probes (an output near a rounding boundary), and there every close pair
          is likely to part.  On the CPU dataset the rare cnn bf16 twins part only on probes where
          other bf16 twins do (avx2/sse42 on 1 stored pool probe, 349, where amx/avx512 part too).
        """
        surprise = np.divide(1.0, 1.0 - self.agreement, out=np.zeros_like(self.agreement), where=self.agreement < 1.0)
        weights = surprise[candidate].copy()
        weights[candidate] = 0.0
        own = weights @ ~self.same[candidate]
        # partings between two of the leader's neighbours, weighted by how close both are to it
        close = self.agreement[candidate].copy()
        close[candidate] = 0.0
        pair = np.outer(close, close) * surprise
        return own + np.einsum("ij,ijn->n", pair, ~self.same) / 2.0


class ReferenceEvidence:
    def __init__(self, matcher: ReferenceMatcher | CalibratedMatcher, book: ReferenceBook) -> None:
        self.matcher, self.book = matcher, book
        self.labels, self.tier, self.pool_ids = book.labels, book.tier, book.pool_ids
        self.reference_full, self._row = book.reference_full, book.row
        self.probs: dict[str, list[np.ndarray]] = {}
        self.used: list[int] = []
        self.asked: set[int] = set()  # probes asked whose answers could not be scored: not asked again
        self.readings: list[AnswerReading | None] = []  # per used answer: read against answers under batching

    @property
    def n_candidates(self) -> int:
        return len(self.labels)

    def row_of(self, probe_id: int) -> int:
        if int(probe_id) not in self._row:
            raise ConfigError(f"probe {probe_id} is not in the reference pool")
        return self._row[int(probe_id)]

    def update(self, probe_id: int, view: TierView) -> None:
        """Add one complete answer (a one-row `TierView`) to the evidence."""
        row = self.row_of(probe_id)
        shown = int(answer_signatures(view)[0])
        references = [self.book.reference_for(c, row, shown) for c in range(self.n_candidates)]
        features = np.stack([relative_features(view, ref) for ref in references], axis=1)
        self.add(
            probe_id,
            {head: p[0] for head, p in self.matcher.pair_probabilities(features).items()},
            self.book.read(row, shown),
        )

    def add(self, probe_id: int, probabilities: Mapping[str, np.ndarray], reading: AnswerReading | None = None) -> None:
        """Add one answer already scored by the matcher: per head, (C,) match probabilities; `reading`: the
        answer read against the candidates' answers under batching, where the book has them."""
        self.row_of(probe_id)
        for head, p in probabilities.items():
            self.probs.setdefault(head, []).append(np.asarray(p, dtype=np.float64))
        self.used.append(int(probe_id))
        self.readings.append(reading)

    def log_weights(self) -> np.ndarray:
        """(C,) Σ over the answers of each candidate's log mixture weight (`classifier.batched`): 0 without
        answers under batching."""
        out = np.zeros(self.n_candidates)
        for reading in self.readings:
            if reading is not None:
                out += reading.log_weight
        return out

    def _stacked(self) -> dict[str, np.ndarray]:
        return {h: np.stack(v) for h, v in self.probs.items()}

    def posterior(self) -> np.ndarray:
        """(C,) posterior over candidates from the answers so far (uniform before any)."""
        if not self.used:
            return np.full(self.n_candidates, 1.0 / self.n_candidates)
        evidence = group_sum(log_odds(self._stacked()["full"]), np.zeros(len(self.used), dtype=np.int64))[0]
        return softmax(evidence + self.log_weights())

    def match_score(self) -> float:
        if not self.used:
            return 0.0
        return float(
            ReferenceMatcher.match_scores(self._stacked()["full"], np.zeros(len(self.used), dtype=np.int64))[0]
        )

    def matches(self) -> bool:
        """Does the best candidate match?  Answers bit-identical to a reference always do, whatever
        their number: a threshold calibrated at the best attainable score must not fall one rounding
        step above a mean of equal probabilities."""
        return bool(self.used) and score_matches(self.match_score(), self.matcher.threshold_)

    def head_posteriors(self) -> dict[str, tuple[list[str], np.ndarray]]:
        """Per head: label values and their posterior; each head's own model when nothing matches."""
        known = self.matches()
        groups = np.zeros(len(self.used), dtype=np.int64)
        return {
            h: (values, post[0])
            for h, (values, post) in self.matcher.posteriors(
                self._stacked(), self.labels, groups, from_full=known, offset=self.log_weights()[None, :]
            ).items()
        }

    def _used_rows(self) -> list[int]:
        return [self._row[u] for u in (set(self.used) | self.asked) if u in self._row]

    def split_scores(self, posterior: np.ndarray | None = None) -> np.ndarray:
        """(n_pool,) expected disagreement Σ_{i<j} p_i p_j [answers differ] per probe; 0 once used."""
        scores = split_scores(self.book.same, self.posterior() if posterior is None else posterior)
        scores[self._used_rows()] = 0.0
        return scores

    def verification_scores(self) -> np.ndarray:
        """(n_pool,) the leading candidate's fragility per probe; 0 once used."""
        scores = self.book.fragility(int(np.argmax(self.posterior())))
        scores[self._used_rows()] = 0.0
        return scores

    def next_probe(
        self,
        rng: np.random.Generator,
        *,
        exclude_first_token: int | None = None,
        first_tokens: np.ndarray | None = None,
        confidence: float | None = None,
    ) -> int | None:
        """The unused pool probe that best splits the likely candidates (ties at random); once they are
        settled, the one that best verifies the leader; None when no probe does either.

        With `confidence`, settled candidates whose leader is below it end the audit (None): they
        answer every unused probe alike, so no further answer can make one of them certain, and
        verifying a leader that will never be reported would only spend the budget.
        `exclude_first_token` keeps consecutive prompts from sharing a first token, so a server's
        prefix cache cannot serve part of a prompt from the previous one.
        """
        scores = self.split_scores()
        if scores.max() <= SETTLED_BELOW:
            if confidence is not None and self.posterior().max() < confidence:
                return None
            scores = self.verification_scores()
        return most_splitting_probe(
            self.book, scores, rng, exclude_first_token=exclude_first_token, first_tokens=first_tokens
        )


def same_answers(signatures: np.ndarray) -> np.ndarray:
    """(C, C, n) whether candidates i and j answer each probe alike, from (C, n) answer signatures."""
    return signatures[:, None, :] == signatures[None, :, :]


def split_scores(same: np.ndarray, posterior: np.ndarray) -> np.ndarray:
    """Per probe: Σ_{i<j} p_i p_j [i and j answer differently], from the (C, C, n) same-answer matrix."""
    # 1 - Σ_groups mass² = 1 - pᵀ S_n p: the same-answer matrix groups candidates per probe
    return (1.0 - np.einsum("i,ijn,j->n", np.asarray(posterior, dtype=np.float64), same, posterior)) / 2.0


def most_splitting_probe(
    book: ReferenceBook,
    scores: np.ndarray | None,
    rng: np.random.Generator,
    *,
    exclude_first_token: int | None = None,
    first_tokens: np.ndarray | None = None,
) -> int | None:
    """The probe with the highest split score (ties at random: an endpoint cannot predict the audit's
    prompts); with no scores yet, under a uniform prior.  None when no probe splits anything."""
    if scores is None:
        scores = book.prior_split_scores()
    if exclude_first_token is not None and first_tokens is not None:
        scores = np.where(first_tokens == exclude_first_token, 0.0, scores)
    best = scores.max()
    if best <= 1e-12:
        return None
    choices = np.flatnonzero(scores >= best * (1 - 1e-9))
    return int(book.pool_ids[rng.choice(choices)])


def score_matches(score: float, threshold: float) -> bool:
    """A match score at or above the threshold, up to the rounding of a mean (`SCORE_TOLERANCE`)."""
    return score >= threshold - SCORE_TOLERANCE
