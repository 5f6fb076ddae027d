"""Border prompts and the text tier: the border candidate stream, margins and selection, the
on-disk border store, the greedy vote (properties), and a small real collection of 2 configurations."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reproducing import reproducing
from typer.testing import CliRunner

from hspi.classifier.greedy_vote import GreedyVote, load_text_vote, rank_probes, text_vote_path
from hspi.collector.border_store import (
    INDEX_FILE,
    SELECTION_FILE,
    BorderIndex,
    BorderSelection,
    BorderStore,
    SelectionFile,
    border_dir,
    load_selection,
    read_answers,
    save_index,
    save_selection,
    selection_sha256,
    write_answers,
)
from hspi.collector.models import MODEL_SPECS, model_spec
from hspi.collector.probes import ARC_STEP_BITS, BORDER_STREAM_SIZE, ProbeSet
from hspi.collector.worker import RunPlan, plan_ids
from hspi.errors import ConfigError, DatasetError, HspiError, ModelError
from hspi.features.border import TextAnswers, bf16_spacing, greedy_top2, relative_margin, select_smallest
from hspi.platform import HEADS

SHIPPED = Path(__file__).resolve().parents[1] / "datasets" / "cpu-amd-epyc"


@pytest.fixture(autouse=True)
def _two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def border(model: str) -> ProbeSet:
    return ProbeSet(model_spec(model), "border", BORDER_STREAM_SIZE)


# --- the border candidate stream ----------------------------------------------------------------


@pytest.mark.parametrize("model", list(MODEL_SPECS))
def test_border_candidates_regenerate_bit_for_bit(model):
    ids = np.array([0, 7, 2**30 + 5, BORDER_STREAM_SIZE - 1, 7], dtype=np.int64)
    first = border(model).inputs(ids)
    again = ProbeSet(model_spec(model), "border", BORDER_STREAM_SIZE).inputs(ids[::-1].copy())[::-1]
    assert first.tobytes() == again.tobytes()
    assert first.shape == (5, *model_spec(model).input_shape)
    np.testing.assert_array_equal(first[1], first[4])
    assert border(model).version == f"{model_spec(model).version}/probes-v1/border"


def test_token_lattice_layout():
    spec = model_spec("lm-small")
    ps = border("lm-small")
    ids = np.array([3 * 512 + 0, 3 * 512 + 511, 4 * 512 + 9])
    x = ps.inputs(ids)
    assert x[:, -1].tolist() == [0, 511, 9]
    np.testing.assert_array_equal(x[0, :-1], x[1, :-1])
    np.testing.assert_array_equal(x[0, :-1], ps.border_prefix(3))
    assert not np.array_equal(x[0, :-1], x[2, :-1])
    assert x.dtype == np.int64 and x.min() >= 0 and x.max() < spec.n_outputs


def test_arc_layout_starts_at_the_first_endpoint_and_stays_standard_normal():
    ps = border("mlp")
    a, b = ps.border_arc(5)
    start = ps.inputs(np.array([5 << ARC_STEP_BITS]))[0]
    np.testing.assert_array_equal(start, a.astype(np.float32))
    steps = np.arange(0, 2**ARC_STEP_BITS, 2**14)
    points = ps.inputs((5 << ARC_STEP_BITS) + steps).astype(np.float64)
    # c^2 + s^2 = 1: the norm of the (a, b) mixture stays that of a standard normal vector
    assert 0.5 < points.std() < 1.5 and abs(points.mean()) < 0.5
    near = ps.inputs(np.array([(5 << ARC_STEP_BITS) + 1000, (5 << ARC_STEP_BITS) + 1001]))
    assert 0 < np.abs(near[0] - near[1]).max() < 1e-4  # adjacent lattice points are close but distinct


def test_pool_and_fresh_streams_are_unchanged():
    spec = model_spec("mlp")
    rng = np.random.default_rng([sum(map(ord, spec.version)), 1, 3])
    np.testing.assert_array_equal(
        ProbeSet(spec, "pool", 8).inputs(np.array([3]))[0], rng.standard_normal(spec.input_shape).astype(np.float32)
    )
    assert not np.array_equal(
        border("mlp").inputs(np.array([3]))[0], ProbeSet(spec, "pool", 8).inputs(np.array([3]))[0]
    )


def test_border_stream_bad_ids_and_sizes():
    with pytest.raises(ConfigError, match="0..9"):
        ProbeSet(model_spec("mlp"), "border", 10).inputs(np.array([10]))
    with pytest.raises(ConfigError, match="0..9"):
        ProbeSet(model_spec("mlp"), "border", 10).inputs(np.array([-1]))
    with pytest.raises(ConfigError, match="too many to list"):
        _ = border("mlp").ids
    with pytest.raises(ConfigError, match="border stream"):
        ProbeSet(model_spec("mlp"), "border", 0)
    np.testing.assert_array_equal(ProbeSet(model_spec("mlp"), "border", 4).ids, np.arange(4))


def test_run_plan_explicit_ids():
    plan = RunPlan(name="b", probe_set="border", size=BORDER_STREAM_SIZE, ids=[9, 4, 2**30])
    assert plan_ids(plan).tolist() == [9, 4, 2**30]
    shuffled = plan_ids(
        RunPlan(name="b", probe_set="border", size=BORDER_STREAM_SIZE, ids=list(range(50)), shuffle=True, seed=3)
    )
    assert sorted(shuffled.tolist()) == list(range(50)) and shuffled.tolist() != list(range(50))
    legacy = RunPlan(name="replay", probe_set="pool", size=100, subset=10, shuffle=True, seed=7)
    assert plan_ids(legacy).tolist() == plan_ids(RunPlan(**legacy.model_dump())).tolist()
    assert len(set(plan_ids(legacy).tolist())) == 10


# --- margins and selection ----------------------------------------------------------------------


def test_greedy_ties_go_to_the_lower_id_and_margins_are_exact():
    out = np.array([[1.0, 3.0, 3.0, 0.0], [0.5, 0.25, 2.0, 2.0 - 2**-20]], dtype=np.float32)
    greedy, second, margin = greedy_top2(out)
    assert greedy.tolist() == [1, 2] and second.tolist() == [2, 3]
    assert margin.tolist() == [0.0, 2**-20]
    assert margin.dtype == np.float64


@settings(max_examples=60, deadline=None)
@given(st.integers(-20, 20), st.floats(1.0, 1.99), st.floats(0, 1e-2))
def test_relative_margin_is_in_bf16_steps_and_scale_free(exponent, top, gap):
    out = np.array([[top, top - gap, -1.0]]) * 2.0**exponent
    rel = relative_margin(out)[0]
    assert rel == pytest.approx(gap / 2**-7, rel=1e-9, abs=1e-12)
    assert bf16_spacing(np.array([top * 2.0**exponent]))[0] == 2.0 ** (exponent - 7)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.floats(0, 1)), min_size=1, max_size=40), st.integers(1, 50))
def test_select_smallest_keeps_the_smallest_distinct_ids(pairs, n):
    ids = np.array([p[0] for p in pairs])
    scores = np.array([p[1] for p in pairs])
    keep = select_smallest(ids, scores, n)
    chosen = ids[keep]
    assert len(set(chosen.tolist())) == len(chosen) == min(n, len(set(ids.tolist())))
    assert np.all(np.diff(scores[keep]) >= 0)
    best = {i: scores[ids == i].min() for i in set(ids.tolist())}
    assert all(scores[k] == best[ids[k]] for k in keep)
    left_out = [best[i] for i in best if i not in set(chosen.tolist())]
    assert not left_out or max(scores[keep]) <= min(left_out)


def test_search_finds_near_ties_with_oracle_margins():
    from hspi.collector.border_search import search_border
    from hspi.collector.targets.oracle import float64_outputs

    found = search_border("mlp", n=4, arcs=2)
    assert len(found["ids"]) >= 2 and found["scanned"] > 1000
    assert max(found["margin"]) < 1e-4  # arc bisection walks to the tie
    outputs = float64_outputs(border("mlp"), np.array(found["ids"]))
    greedy, second, margin = greedy_top2(outputs)
    np.testing.assert_array_equal(margin, found["margin"])  # every stored margin is its regenerated id's
    assert greedy.tolist() == found["greedy"] and second.tolist() == found["second"]
    assert found["relative_margin"] == sorted(found["relative_margin"])


def test_last_token_scan_matches_the_module():
    from hspi.collector.border_search import last_token_outputs
    from hspi.collector.models import build_model

    module = build_model("lm-small", attention="manual")
    ps = border("lm-small")
    fast = last_token_outputs(module, np.stack([ps.border_prefix(0), ps.border_prefix(1)])).reshape(-1, 512)
    ids = np.array([0, 300, 512 + 17])
    with torch.inference_mode():
        slow = module(torch.from_numpy(ps.inputs(ids))).numpy()
    np.testing.assert_allclose(fast[ids].numpy(), slow, atol=2e-5)


# --- the border store ---------------------------------------------------------------------------


def answers(n: int = 6, seed: int = 0) -> TextAnswers:
    out = np.random.default_rng(seed).standard_normal((n, 9)).astype(np.float32)
    return TextAnswers.from_outputs("mlp-v1/probes-v1/border", np.arange(100, 100 + n), out)


def test_answers_round_trip_and_dedupe(tmp_path):
    a = answers()
    ref = write_answers(tmp_path, "mlp", a)
    assert write_answers(tmp_path, "mlp", a) == ref
    assert len(list((tmp_path / "shards").glob("*.parquet"))) == 1
    back = read_answers(tmp_path, ref)
    for field in ("probe_ids", "greedy", "second", "margin"):
        np.testing.assert_array_equal(getattr(back, field), getattr(a, field))
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize("damage", ["truncate", "flip", "rename"])
def test_corrupt_border_shard_is_one_line(tmp_path, damage):
    ref = write_answers(tmp_path, "mlp", answers())
    path = tmp_path / "shards" / f"{ref.sha256}.parquet"
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        other = write_answers(tmp_path, "mlp", answers(seed=1))
        os.replace(tmp_path / "shards" / f"{other.sha256}.parquet", path)  # valid file, wrong content
    else:
        path.unlink()
    with pytest.raises(DatasetError) as info:
        read_answers(tmp_path, ref)
    assert "\n" not in str(info.value) and ("border shard" in str(info.value))


def test_any_byte_flip_is_caught_or_harmless(tmp_path):
    a = answers()
    ref = write_answers(tmp_path, "mlp", a)
    path = tmp_path / "shards" / f"{ref.sha256}.parquet"
    data = bytearray(path.read_bytes())
    for position in range(0, len(data), max(1, len(data) // 40)):
        damaged = bytearray(data)
        damaged[position] ^= 0xFF
        path.write_bytes(bytes(damaged))
        try:
            back = read_answers(tmp_path, ref)
        except DatasetError as exc:
            assert "\n" not in str(exc)
            continue
        np.testing.assert_array_equal(back.greedy, a.greedy)  # the flip hit metadata that does not matter


def test_store_refuses_an_index_of_another_selection(tmp_path):
    selection = SelectionFile(
        models={
            "mlp": BorderSelection(
                model="mlp",
                probe_set="mlp-v1/probes-v1/border",
                stream_size=BORDER_STREAM_SIZE,
                method="test",
                scanned=1,
                bases=1,
                seconds=0.0,
                ids=[1],
                greedy=[0],
                second=[1],
                margin=[0.0],
                relative_margin=[0.0],
            )
        }
    )
    save_selection(tmp_path, selection)
    save_index(tmp_path, BorderIndex(dataset="x", selections={"mlp": "0" * 64}))
    with pytest.raises(DatasetError, match="mlp answers .* another selection.json"):
        BorderStore(tmp_path)
    save_index(tmp_path, BorderIndex(dataset="x", selections={"mlp": selection_sha256(selection.models["mlp"])}))
    assert BorderStore(tmp_path).models == ["mlp"]
    (tmp_path / INDEX_FILE).write_text("{not json", encoding="utf-8")
    with pytest.raises(DatasetError, match="corrupt border index"):
        BorderStore(tmp_path)
    (tmp_path / SELECTION_FILE).write_text(json.dumps({"format": "other/9", "models": {}}), encoding="utf-8")
    with pytest.raises(DatasetError, match="unsupported format"):
        load_selection(tmp_path)


# --- the greedy vote ----------------------------------------------------------------------------


def labels_for(n_classes: int) -> list[dict[str, str]]:
    return [
        {
            "hardware": f"hw{i % 2}",
            "dtype": ["fp32", "bf16", "fp16"][i % 3],
            "engine": "torch-eager",
            "kernel": f"k{i % 4}",
            "full": f"c{i}",
        }
        for i in range(n_classes)
    ]


def make_vote(greedy: np.ndarray, *, vocab: int = 16, repeated: dict | None = None, **params) -> GreedyVote:
    n_classes, n = greedy.shape
    second = (greedy + 1) % vocab
    ids = np.arange(10, 10 + n)
    return GreedyVote(**params).fit(
        {"border": (ids, greedy, second)},
        repeated or {},
        classes=[f"c{i}" for i in range(n_classes)],
        labels=labels_for(n_classes),
        vocab_size=vocab,
    )


tables = st.integers(2, 6).flatmap(
    lambda c: st.integers(1, 12).flatmap(
        lambda n: st.lists(st.integers(0, 15), min_size=c * n, max_size=c * n).map(lambda v: np.array(v).reshape(c, n))
    )
)


@settings(max_examples=80, deadline=None)
@given(tables, st.data())
def test_log_likelihoods_are_at_most_zero_and_the_true_class_wins(greedy, data):
    vote = make_vote(greedy)
    truth = data.draw(st.integers(0, greedy.shape[0] - 1))
    ids = vote.probe_ids_["border"]
    ll = vote.log_likelihood("border", ids, greedy[truth])
    assert ll.shape == (greedy.shape[1], greedy.shape[0])
    assert (ll <= 0).all()
    total = ll.sum(axis=0)
    assert total[truth] == total.max()
    post = vote.class_posterior({"border": (ids, greedy[truth])})
    assert post.sum() == pytest.approx(1.0) and post[truth] == post.max()
    for values, p in vote.head_posteriors(post).values():
        assert p.sum() == pytest.approx(1.0) and len(values) == len(p)
    observed = data.draw(st.lists(st.integers(-1, 20), min_size=len(ids), max_size=len(ids)))
    assert (vote.log_likelihood("border", ids, observed) <= 0).all()
    assert (vote.unknown_log_likelihood("border", ids, observed) <= 0).all()


@settings(max_examples=60, deadline=None)
@given(tables, st.data())
def test_information_gain_is_bounded_and_zero_where_classes_agree(greedy, data):
    greedy = np.concatenate(
        [greedy, np.full((greedy.shape[0], 1), 3)], axis=1
    )  # a last probe every class answers alike
    vote = make_vote(greedy)
    weights = np.array(data.draw(st.lists(st.floats(0.01, 1), min_size=len(greedy), max_size=len(greedy))))
    post = weights / weights.sum()
    gain = vote.information_gain(post, "border")
    entropy = -(post * np.log(post)).sum()
    assert (gain >= 0).all() and (gain <= entropy + 1e-9).all()
    assert gain[-1] < 1e-9
    split = np.flatnonzero((greedy != greedy[:1]).any(axis=0))
    if len(split):
        assert gain[split].max() > gain[-1]
    ranked = rank_probes(vote, post, used={"border": [int(vote.probe_ids_["border"][0])]})
    assert len(ranked) == greedy.shape[1] - 1
    assert [g for _, _, g in ranked] == sorted((g for _, _, g in ranked), reverse=True)


def test_epsilon_from_repeats_with_a_floor():
    greedy = np.array([[1, 2, 3, 4], [1, 2, 3, 5]])
    ids = np.arange(10, 14)
    repeated = {"border": (np.array([0, 0, 0, 0, 1, 1, 1, 1]), np.r_[ids, ids], np.array([1, 2, 3, 9, 1, 2, 3, 5]))}
    vote = make_vote(greedy, repeated=repeated)
    assert vote.disagreements_.tolist() == [1, 0] and vote.repeats_.tolist() == [4, 4]
    assert vote.epsilon_.tolist() == [0.25, 0.01]
    with pytest.raises(ConfigError, match="epsilon_floor"):
        make_vote(greedy, epsilon_floor=0.0)


def test_unknown_platform_is_flagged_and_known_is_not():
    rng = np.random.default_rng(0)
    greedy = rng.integers(0, 16, size=(5, 64))
    vote = make_vote(greedy[:4])  # class 4 is left out: a platform nobody collected
    ids = vote.probe_ids_["border"]
    known = [
        vote.match_score({"border": (ids[s : s + 16], greedy[c, s : s + 16])})
        for c in range(4)
        for s in (0, 16, 32, 48)
    ]
    vote.calibrate(known)
    assert vote.threshold_ <= 0
    assert not vote.predict({"border": (ids[:16], greedy[2, :16])}).unknown
    verdict = vote.predict({"border": (ids[:16], greedy[4, :16])})
    assert verdict.unknown and verdict.score < vote.threshold_
    right = vote.predict({"border": (ids, greedy[1])})
    assert right.ranked[0][0] == "c1" and right.heads["full"][0] == "c1" and right.heads["dtype"][0] == "bf16"
    assert set(right.heads) == set(HEADS)


def test_vote_json_round_trip_and_errors(tmp_path):
    greedy = np.random.default_rng(1).integers(0, 16, size=(3, 20))
    vote = make_vote(greedy).calibrate([-0.2, 0.1, 0.3])
    path = vote.save(text_vote_path(tmp_path, "mlp"), {"model": "mlp"})
    back = load_text_vote(tmp_path, "mlp")
    assert back.metadata_ == {"model": "mlp"} and path == tmp_path / "mlp" / "text" / "greedy-vote.json"
    ids = vote.probe_ids_["border"]
    np.testing.assert_array_equal(
        back.log_likelihood("border", ids, greedy[0]), vote.log_likelihood("border", ids, greedy[0])
    )
    assert back.threshold_ == vote.threshold_ and back.get_params() == vote.get_params()
    np.testing.assert_array_equal(
        back.information_gain(np.full(3, 1 / 3), "border"), vote.information_gain(np.full(3, 1 / 3), "border")
    )
    with pytest.raises(ModelError, match="not fitted"):
        GreedyVote().log_likelihood("border", ids, greedy[0])
    with pytest.raises(ConfigError, match="unknown probe kind"):
        vote.log_likelihood("pool", ids, greedy[0])
    with pytest.raises(ConfigError, match="without a reference answer"):
        vote.log_likelihood("border", [999], [1])
    path.write_text(path.read_text()[:100], encoding="utf-8")
    with pytest.raises(ModelError, match="corrupt greedy-vote file"):
        GreedyVote.load(path)
    with pytest.raises(ModelError, match="missing"):
        GreedyVote.load(tmp_path / "nope.json")


# --- a real collection of two configurations ----------------------------------------------------

# an fp32 and a bf16 configuration (a static batch of 8 where it reproduces): border collection first
# checks that this machine reproduces a configuration's references, so both are picked by measurement
FP32_CANDIDATES = ("cpu:native/fp32/torch-eager", "cpu:native/fp32/onnxruntime-basic")
BF16_CANDIDATES = ("cpu:native/bf16/torch-eager/bs=8", "cpu:avx2/bf16/torch-eager", "cpu:sse42/bf16/torch-eager")


def two_configs() -> list[str]:
    models = ("mlp", "lm-small")
    return [reproducing(models, FP32_CANDIDATES), reproducing(models, BF16_CANDIDATES)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset of two shipped configurations (their stored shards) with a small real border search."""
    from hspi.collector.border_search import search_border
    from hspi.dataset import load_manifest, save_manifest

    out = tmp_path_factory.mktemp("border") / "two"
    manifest = load_manifest(SHIPPED)
    manifest.configs = {c: r for c, r in manifest.configs.items() if c in two_configs()}
    save_manifest(out, manifest)
    os.symlink(SHIPPED / "shards", out / "shards")
    selection = SelectionFile(
        models={
            "mlp": BorderSelection(**search_border("mlp", n=6, arcs=2)),
            "lm-small": BorderSelection(**search_border("lm-small", n=6, prefixes=1)),
        }
    )
    save_selection(border_dir(out), selection)
    return out


@pytest.mark.slow
def test_collect_two_configs_resume_report_and_corruption(tiny: Path, tmp_path: Path) -> None:
    from hspi.classifier.text_tier import border_report
    from hspi.cli.border import border_app
    from hspi.collector.border_collect import collect_border, verify_border
    from hspi.dataset import Dataset

    configs = two_configs()
    seen = []
    index = collect_border(tiny, on_progress=lambda c, d, n: seen.append(c))
    assert set(index.configs) == set(configs) and seen[-1] == "done"
    store = BorderStore(border_dir(tiny))
    for cid in configs:
        first, again = store.answers(cid, "border", "mlp"), store.answers(cid, "border-replay", "mlp")
        np.testing.assert_array_equal(first.probe_ids, sorted(store.selection.models["mlp"].ids))
        np.testing.assert_array_equal(first.greedy, again.greedy)  # CPU kernels: the same answer twice
        assert index.configs[cid].runs["border-replay"].order == "shuffled"
        assert index.configs[cid].runs["border"].provenance["aten_capability"]
    fp32 = store.answers(configs[0], "border", "lm-small")
    assert (fp32.margin > 0).all()
    assert verify_border(tiny) == 8
    assert store.size_bytes() < 100_000

    before = (border_dir(tiny) / INDEX_FILE).read_text()
    collect_border(tiny)  # resumes: everything recorded, nothing runs
    assert (border_dir(tiny) / INDEX_FILE).read_text() == before

    result, votes = border_report(Dataset(tiny), store, seeds=2, open_set=True)
    mlp = result["models"]["mlp"]
    assert mlp["n_classes"] == 2 and mlp["pairs"]["total"] == 1
    assert {r["queries"] for r in mlp["accuracy"]} >= {1, 4}
    assert mlp["epsilon"]["min"] == mlp["epsilon"]["max"] == 0.01
    pool = Dataset(tiny).responses(configs[0], "replay", "lm-small")
    seen_pool = TextAnswers.from_outputs(pool.probe_set, pool.probe_ids, pool.as_float32())
    verdict = votes["lm-small"].predict(
        {"pool": (seen_pool.probe_ids, seen_pool.greedy), "border": (fp32.probe_ids, fp32.greedy)}
    )
    assert verdict.heads["dtype"][0] == "fp32" and not verdict.unknown

    # a damaged shard ends in one DatasetError line, through the library and through the CLI
    ref = index.configs[configs[0]].runs["border"].shards["mlp"]
    path = border_dir(tiny) / "shards" / f"{ref.sha256}.parquet"
    good = path.read_bytes()
    try:
        path.write_bytes(good[:40])
        with pytest.raises(DatasetError) as info:
            BorderStore(border_dir(tiny)).answers(configs[0], "border", "mlp")
        assert "\n" not in str(info.value)
        run = CliRunner().invoke(
            border_app,
            ["report", "--dataset", str(tiny), "--json", str(tmp_path / "r.json"), "--no-plot", "--no-votes"],
            standalone_mode=False,
        )
        assert isinstance(run.exception, DatasetError) and "border shard" in str(run.exception)
    finally:
        path.write_bytes(good)


def test_cli_bad_inputs_are_hspi_errors(tmp_path: Path) -> None:
    from hspi.cli.border import border_app

    run = CliRunner().invoke(border_app, ["collect", "--dataset", str(tmp_path)], standalone_mode=False)
    assert isinstance(run.exception, DatasetError) and "dataset.json" in str(run.exception)
    run = CliRunner().invoke(
        border_app, ["search", "--dataset", str(SHIPPED), "--models", "resnet"], standalone_mode=False
    )
    assert isinstance(run.exception, ConfigError) and "resnet" in str(run.exception)
    assert all(isinstance(e, type) and issubclass(e, HspiError) for e in (DatasetError, ConfigError))


def test_index_grows_with_new_models_and_refuses_a_changed_selection(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from hspi.collector.border_collect import _missing, _open_index
    from hspi.collector.border_store import BorderConfig, BorderRun, BorderShardRef
    from hspi.platform import Platform

    def chosen(model: str, ids: list[int]) -> BorderSelection:
        return BorderSelection(
            model=model,
            probe_set=f"{model}-v1/probes-v1/border",
            stream_size=BORDER_STREAM_SIZE,
            method="test",
            scanned=1,
            bases=1,
            seconds=0.0,
            ids=ids,
            greedy=[0] * len(ids),
            second=[1] * len(ids),
            margin=[0.0] * len(ids),
            relative_margin=[0.0] * len(ids),
        )

    ds = SimpleNamespace(manifest=SimpleNamespace(name="tiny"))
    index = _open_index(ds, tmp_path, SelectionFile(models={"mlp": chosen("mlp", [1, 2])}), restart=False)
    run = BorderRun(
        shards={"mlp": BorderShardRef(sha256="a" * 64, n_probes=2)}, order="sorted", seed=0, seconds=1.0, provenance={}
    )
    index.configs["cpu:native/fp32/torch-eager"] = BorderConfig(
        platform=Platform(), runs={"border": run, "border-replay": run}
    )
    save_index(tmp_path, index)
    grown = _open_index(
        ds, tmp_path, SelectionFile(models={"mlp": chosen("mlp", [1, 2]), "cnn": chosen("cnn", [5])}), restart=False
    )
    assert sorted(grown.selections) == ["cnn", "mlp"]
    assert _missing(grown, "cpu:native/fp32/torch-eager", ["cnn", "mlp"]) == ["cnn"]  # only the new model runs
    assert _missing(grown, "cpu:sse42/fp32/torch-eager", ["cnn", "mlp"]) == ["cnn", "mlp"]
    changed = SelectionFile(models={"mlp": chosen("mlp", [1, 3]), "cnn": chosen("cnn", [5])})
    with pytest.raises(DatasetError, match="mlp answers to another selection"):
        _open_index(ds, tmp_path, changed, restart=False)
    restarted = _open_index(ds, tmp_path, changed, restart=True)
    assert _missing(restarted, "cpu:native/fp32/torch-eager", ["cnn", "mlp"]) == ["cnn", "mlp"]
    with pytest.raises(DatasetError, match="belongs to dataset"):
        _open_index(SimpleNamespace(manifest=SimpleNamespace(name="other")), tmp_path, changed, restart=False)
