"""The splitting-probe search's pure parts, and how searched probes join a dataset's reference pool."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hspi.collector.splitting_search import near_twins, pairs_split
from hspi.dataset import (
    SEARCHED_REFERENCE_RUN,
    ConfigRecord,
    Dataset,
    Manifest,
    RunRecord,
    save_manifest,
    write_shard,
)
from hspi.equivalence import distinct_answers
from hspi.errors import DatasetError
from hspi.platform import Platform
from hspi.responses import Responses

answers = hnp.arrays(
    np.uint32, st.tuples(st.integers(2, 5), st.integers(1, 12), st.integers(1, 3)), elements=st.integers(0, 2)
)  # few values: many ties between classes


@given(answers)
@settings(max_examples=60, deadline=None)
def test_split_counts_agree_with_brute_force(words):
    C, n, _ = words.shape
    pairs = list(combinations(range(C), 2))
    split = pairs_split(words, pairs)
    distinct = distinct_answers(words)
    for p in range(n):
        rows = [tuple(words[c, p]) for c in range(C)]
        assert split[p] == sum(rows[a] != rows[b] for a, b in pairs)
        assert distinct[p] == len(set(rows))


def test_near_twins_are_classes_that_differ_rarely_but_not_never():
    n = 100
    base = np.zeros((n, 2), np.uint32)
    twin = base.copy()
    twin[:3, 0] = 1  # differs on 3% of probes
    far = base + 7  # differs everywhere
    same = base.copy()  # identical: not a twin, one class
    members, pairs = near_twins(np.stack([base, far, twin, same]), 0.05)
    assert members == [0, 2, 3] and pairs == [(0, 1), (0, 2), (1, 2)]
    assert near_twins(np.stack([base, far]), 0.05) == ([], [])


def _dataset(tmp_path: Path, searched: dict[str, list[int]] | None) -> Path:
    manifest = Manifest(name="t", probe_sets={"mlp": {"mlp-v1/probes-v1/pool": 4}})
    rng = np.random.default_rng(0)
    for cid in ("a", "b"):
        record = ConfigRecord(platform=Platform(), labels={})
        ref = Responses(
            "mlp",
            "mlp-v1/probes-v1/pool",
            np.arange(4, dtype=np.int32),
            rng.standard_normal((4, 3)).astype(np.float32),
            "float32",
        )
        record.runs["reference"] = RunRecord(shards={"mlp": write_shard(tmp_path, ref)}, provenance={}, seconds=0)
        if searched and cid in searched:
            ids = np.array(searched[cid], dtype=np.int32)
            extra = Responses(
                "mlp", "mlp-v1/probes-v1/pool", ids, rng.standard_normal((len(ids), 3)).astype(np.float32), "float32"
            )
            record.runs[SEARCHED_REFERENCE_RUN] = RunRecord(
                shards={"mlp": write_shard(tmp_path, extra)}, provenance={}, seconds=0
            )
        manifest.configs[cid] = record
    save_manifest(tmp_path, manifest)
    return tmp_path


def test_pool_references_join_searched_probes_sorted_once_every_config_has_them(tmp_path):
    ds = Dataset(_dataset(tmp_path, {"a": [90, 17], "b": [90, 17]}))
    assert ds.has_searched_pool("mlp")
    pool = ds.pool_references("a", "mlp")
    assert pool.probe_ids.tolist() == [0, 1, 2, 3, 17, 90]
    searched = ds.responses("a", SEARCHED_REFERENCE_RUN, "mlp")
    assert pool.select(searched.probe_ids).native.tobytes() == searched.native.tobytes()
    assert pool.select(np.arange(4)).native.tobytes() == ds.responses("a", "reference", "mlp").native.tobytes()


def test_a_search_in_progress_leaves_the_pool_as_it_was(tmp_path):
    ds = Dataset(_dataset(tmp_path, {"a": [90]}))
    assert not ds.has_searched_pool("mlp")
    assert ds.pool_references("a", "mlp").probe_ids.tolist() == [0, 1, 2, 3]


def test_searched_probes_that_repeat_the_pool_are_refused(tmp_path):
    ds = Dataset(_dataset(tmp_path, {"a": [2], "b": [2]}))
    with pytest.raises(DatasetError, match="repeats reference probes"):
        ds.pool_references("a", "mlp")
