"""Answers under dynamic batching: the batch plans, and how an answer is read against a class's set."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hspi.classifier.batched import BatchedAnswers, read_answer_signature
from hspi.classifier.sequential import ReferenceBook, answer_signatures
from hspi.collector.batch_compositions import batch_plan
from hspi.errors import ConfigError
from hspi.features.tiers import tier_view


@given(st.integers(1, 60), st.integers(1, 16))
def test_batch_plan_answers_every_probe_once_in_full_batches(n: int, size: int) -> None:
    batches = batch_plan(n, size)
    assert all(len(b) == size for b in batches)
    first = {}
    for b in batches:
        for position, index in enumerate(b):
            first.setdefault(int(index), position)
    assert sorted(first) == list(range(n))
    assert len(batches) == -(-n // size)  # as few batches as the size allows


def test_batch_plan_moves_a_probe_between_sizes_and_refuses_bad_sizes() -> None:
    def position(size: int) -> int:
        return next(p for b in batch_plan(10, size) for p, i in enumerate(b) if i == 0)

    assert len({position(s) for s in (2, 3, 4, 5)}) > 1
    with pytest.raises(ConfigError, match="batch size 0"):
        batch_plan(10, 0)


def sizes_answers() -> BatchedAnswers:
    return BatchedAnswers([1, 2, 3, 4], np.array([0]), [])


def test_an_answer_of_a_class_under_batching_fits_it_and_a_static_class_keeps_its_own() -> None:
    batched = sizes_answers()
    # signature 7: class 0's answer alone; 8: its answer in batches of 2-4; class 1 (static, no set) answers 8
    primary = np.array([7, 8, 9])
    alternates = [(np.array([7, 8]), np.array([0b0001, 0b1110])), None, (np.array([9]), np.array([0b1111]))]
    alone = read_answer_signature(7, primary, alternates, batched)
    assert alone.fits.tolist() == [True, False, False] and alone.log_weight[0] == 0.0
    in_batch = read_answer_signature(8, primary, alternates, batched)
    assert in_batch.fits.tolist() == [True, True, False]
    # the static class explains a batch-of-8 answer with probability 1, the batching class with (0 + 3/4)/2
    assert in_batch.log_weight[1] == 0.0 and in_batch.log_weight[0] == pytest.approx(np.log(0.375))
    assert in_batch.masks.tolist() == [0b1110, 0, 0]
    nothing = read_answer_signature(5, primary, alternates, batched)
    assert not nothing.fits.any() and (nothing.log_weight == 0).all()


def test_the_book_matches_an_answer_under_batching_against_the_member_it_equals() -> None:
    rng = np.random.default_rng(0)
    refs = [rng.normal(size=(3, 32)).astype(np.float32) for _ in range(2)]
    in_batch = refs[0][1] + np.float32(1e-3)  # class 0's answer to pool row 1 in a batch of 2
    batched = BatchedAnswers(
        [1, 2], np.array([11]), [{1: (np.stack([refs[0][1], in_batch]), np.array([0b01, 0b10]))}, {}]
    )
    labels = [{"full": "a", "dtype": "fp32"}, {"full": "b", "dtype": "fp32"}]
    book = ReferenceBook(refs, labels, "topk20", np.array([10, 11, 12]), batched=batched)
    assert sorted({row for _, row in book.alternates}) == [1]
    shown = int(answer_signatures(tier_view(in_batch[None], "topk20"))[0])
    assert book.fits(np.array([1]), np.array([shown])).tolist() == [[True, False]]
    member = book.reference_for(0, 1, shown)
    assert np.array_equal(member, book.alternates[(0, 1)][2][1:2])
    # without answers under batching the same answer fits nothing
    plain = ReferenceBook(refs, labels, "topk20", np.array([10, 11, 12]))
    assert plain.fits(np.array([1]), np.array([shown])).tolist() == [[False, False]] and plain.alternates == {}
