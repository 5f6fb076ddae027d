"""End to end through the real CLI: collect a small grid in fresh subprocesses, inspect, resume,
merge, evaluate, train, identify; and bad input ends in one clear line with a non-zero exit."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hspi.dataset import load_manifest, save_manifest

pytestmark = pytest.mark.slow

SMALL = ["--pool", "40", "--fresh", "24", "--replay", "32"]


def hspi(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hspi", *args], capture_output=True, text=True, cwd=cwd, timeout=900)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data") / "smoke"
    proc = hspi("collect", "--grid", "cpu-smoke", "--models", "mlp,lm-small", "--out", str(out), *SMALL)
    assert proc.returncode == 0, proc.stderr
    return out


def test_collect_records_measured_provenance(smoke: Path) -> None:
    manifest = load_manifest(smoke)
    assert len(manifest.configs) == 4
    capped = manifest.configs["cpu:sse42/fp32/torch-eager"]
    provenance = capped.runs["reference"].provenance
    assert provenance["requested_env"]["ONEDNN_MAX_CPU_ISA"] == "SSE41"
    assert provenance["aten_capability"] == "DEFAULT"  # what ATen reported, not what was asked
    assert provenance["onednn_isa"]  # oneDNN said which ISA it runs at
    assert capped.labels["hardware"].endswith("x86-sse42")
    for config_id, record in manifest.configs.items():  # every process reported what it ran at
        assert record.runs["reference"].provenance["aten_capability"], config_id
        assert "unreported" not in record.labels["hardware"], config_id
    native = manifest.configs["cpu:native/fp32/torch-eager"].runs["reference"].provenance
    assert native["onednn_isa"] != provenance["onednn_isa"] or native["aten_capability"] != "DEFAULT"


def test_platforms_lists_distinct_classes(smoke: Path) -> None:
    proc = hspi("platforms", "--dataset", str(smoke), "--model", "lm-small")
    assert proc.returncode == 0, proc.stderr
    assert "4 equivalence classes" in proc.stdout


def test_dataset_info_verifies_every_shard(smoke: Path) -> None:
    proc = hspi("dataset", "info", str(smoke))
    assert proc.returncode == 0, proc.stderr
    assert "all hashes verified" in proc.stdout


def test_interrupted_collection_resumes_and_reproduces_bits(smoke: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(smoke, copy)
    manifest = load_manifest(copy)
    lost = "cpu:native/bf16/torch-eager"
    before = manifest.configs.pop(lost)  # as if the run stopped before this configuration was recorded
    save_manifest(copy, manifest)
    proc = hspi("collect", "--grid", "cpu-smoke", "--models", "mlp,lm-small", "--out", str(copy), *SMALL)
    assert proc.returncode == 0, proc.stderr
    after = load_manifest(copy)
    assert set(after.configs) == set(load_manifest(smoke).configs)
    for run in ("reference", "replay", "fresh"):  # a fresh process reproduces the stored outputs bit for bit
        assert {m: r.shard for m, r in after.configs[lost].runs[run].shards.items()} == {
            m: r.shard for m, r in before.runs[run].shards.items()
        }
    untouched = "cpu:native/fp32/torch-eager"
    assert (
        after.configs[untouched].runs["reference"].seconds
        == load_manifest(smoke).configs[untouched].runs["reference"].seconds
    )


def test_evaluate_writes_the_contract(smoke: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    proc = hspi(
        "evaluate",
        "--dataset",
        str(smoke),
        "--json",
        str(out),
        "--models",
        "lm-small,mlp",
        "--tiers",
        "logits,top1",
        "--no-open-set",
        "--plots",
        str(tmp_path / "plots"),
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert {"dataset", "n_classes", "classes", "results", "open_set", "throughput"} <= set(result)
    rows = result["results"]
    assert {r["split"] for r in rows} == {"reference-match", "heldout-probes"}
    assert {r["method"] for r in rows} == {"lightgbm", "lightgbm-sequential", "hspi-ld-svm", "exact-match"}
    best = {(r["model"], r["split"], r["tier"], r["head"], r["method"], r["queries"]): r["accuracy"] for r in rows}
    assert best[("lm-small", "reference-match", "logits", "full", "lightgbm", 1)] >= 0.95
    assert best[("lm-small", "heldout-probes", "logits", "dtype", "lightgbm", 1)] >= 0.95
    assert list((tmp_path / "plots").glob("confusion-*.png"))


def test_open_set_leaves_each_class_out_for_both_audit_kinds(smoke: Path) -> None:
    from hspi.classifier.evaluation import Evaluation
    from hspi.dataset import Dataset

    result = Evaluation(Dataset(smoke), models=["mlp"], tiers=["logits"]).run()
    rows, classes = result["open_set"], result["models"]["mlp"]["classes"]
    assert len(classes) >= 3
    assert {(r["held_out_class"], r["queries"]) for r in rows if r["method"] == "lightgbm-sequential"} == {
        (c, q) for c in classes for q in (1, 4, 16)
    }
    assert {r["held_out_class"] for r in rows if r["method"] == "lightgbm"} == set(classes)
    # these classes differ in dtype or ISA everywhere: each left-out one is told from the rest
    assert all(r["auroc"] >= 0.95 for r in rows), [r for r in rows if r["auroc"] < 0.95]
    assert all(r["known_rejected_rate"] <= 0.05 for r in rows)  # the threshold accepts the known ones


def test_train_then_demo_identifies_a_hidden_platform(smoke: Path, tmp_path: Path) -> None:
    proc = hspi("train", "--dataset", str(smoke), "--out", str(tmp_path / "clf"), "--tiers", "logits")
    assert proc.returncode == 0, proc.stderr
    assert not list((tmp_path / "clf").rglob("*.pkl"))
    proc = hspi(
        "demo",
        "--dataset",
        str(smoke),
        "--classifier",
        str(tmp_path / "clf"),
        "--model",
        "lm-small",
        "--queries",
        "4",
        "--seed",
        "3",
    )
    assert proc.returncode == 0, proc.stderr
    assert "the hidden platform was" in proc.stdout
    full_row = next(line for line in proc.stdout.splitlines() if line.strip().startswith("│ full"))
    assert "✓" in full_row


def test_merge_keeps_every_configuration(smoke: Path, tmp_path: Path) -> None:
    proc = hspi("dataset", "merge", str(tmp_path / "merged"), str(smoke))
    assert proc.returncode == 0, proc.stderr
    assert len(load_manifest(tmp_path / "merged").configs) == 4


@pytest.mark.parametrize(
    "args, needle, code",
    [
        (["collect", "--grid", "nope", "--out", "X"], "unknown grid 'nope'", 2),
        (["collect", "--grid", "cpu-smoke", "--models", "gpt9", "--out", "X"], "unknown model 'gpt9'", 2),
        (["evaluate", "--dataset", "does-not-exist", "--json", "x.json"], "no dataset at does-not-exist", 3),
        (["evaluate", "--dataset", ".", "--json", "x.json", "--tiers", "top3"], "unknown tier 'top3'", 2),
    ],
)
def test_bad_input_is_one_line(args: list[str], needle: str, code: int, tmp_path: Path) -> None:
    proc = hspi(*args, cwd=tmp_path)
    assert proc.returncode == code
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_corrupt_shard_is_named(smoke: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(smoke, copy)
    victim = sorted((copy / "shards").glob("*.parquet"))[0]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    proc = hspi("dataset", "info", str(copy))
    assert proc.returncode == 3
    assert victim.name in proc.stderr and "Traceback" not in proc.stderr


def test_one_class_dataset_is_refused(smoke: Path, tmp_path: Path) -> None:
    copy = tmp_path / "one"
    shutil.copytree(smoke, copy)
    manifest = load_manifest(copy)
    manifest.configs = {k: v for k, v in manifest.configs.items() if k == "cpu:native/fp32/torch-eager"}
    save_manifest(copy, manifest)
    proc = hspi(
        "evaluate", "--dataset", str(copy), "--json", str(tmp_path / "x.json"), "--models", "mlp", "--no-open-set"
    )
    assert proc.returncode == 3
    assert "one equivalence class" in proc.stderr


def test_mismatched_probe_sets_refuse_to_merge(smoke: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(smoke, other)
    manifest = load_manifest(other)
    manifest.probe_sets = {
        m: {k.replace("probes-v1", "probes-v0"): n for k, n in s.items()} for m, s in manifest.probe_sets.items()
    }
    save_manifest(other, manifest)
    proc = hspi("dataset", "merge", str(tmp_path / "m"), str(smoke), str(other))
    assert proc.returncode == 3
    assert "probe sets" in proc.stderr and "Traceback" not in proc.stderr


def test_splitting_replay_answers_resumes_and_reaches_the_evaluation(smoke: Path, tmp_path: Path, monkeypatch) -> None:
    from hspi.classifier.evaluation import load_model_data
    from hspi.collector import reproduction, splitting_replay
    from hspi.dataset import SPLITTING_RUN, Dataset

    copy = tmp_path / "split"
    shutil.copytree(smoke, copy)
    # the smoke grid has no near twins at 5%: its classes differ on many of the 40 pool probes
    proc = hspi("dataset", "replay-splitting", str(copy))
    if proc.returncode != 0:
        assert proc.returncode == 2 and "no two classes are near twins" in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    ids = splitting_replay.collect_splitting_replay(copy, rare_share=1.0)  # every probe that splits any pair
    ds = Dataset(copy)
    assert set(ids) == set(ds.models)
    for model, chosen in ids.items():
        assert chosen == sorted(splitting_replay.splitting_probes(ds, model, 1.0).tolist()) and chosen
    union = sorted({i for v in ids.values() for i in v})
    for cid, _record in ds.manifest.configs.items():
        for model in ds.models:
            got = ds.responses(cid, SPLITTING_RUN, model)
            assert sorted(got.probe_ids.tolist()) == union
            # another process, other batches: still its reference, bit for bit
            want = ds.responses(cid, "reference", model).select(got.probe_ids)
            assert got.native.tobytes() == want.native.tobytes()
    data = load_model_data(ds, "lm-small")
    assert sorted(data.targeted_ids.tolist()) == union and set(data.targeted) == set(data.replay)

    # interrupted after some configurations: a rerun answers only the ones missing
    manifest = load_manifest(copy)
    dropped = sorted(manifest.configs)[:2]
    for cid in dropped:
        del manifest.configs[cid].runs[SPLITTING_RUN]
    save_manifest(copy, manifest)
    ran: list[str] = []
    real = reproduction.run_worker
    monkeypatch.setattr(reproduction, "run_worker", lambda job, wd: ran.append(job.platform.id) or real(job, wd))
    splitting_replay.collect_splitting_replay(copy, rare_share=1.0)
    assert sorted(ran) == dropped
    ran.clear()
    splitting_replay.collect_splitting_replay(copy, rare_share=1.0)
    assert ran == []


def test_splitting_replay_refuses_another_machines_dataset(smoke: Path, tmp_path: Path) -> None:
    from hspi.collector import splitting_replay
    from hspi.errors import CollectionError

    copy = tmp_path / "other"
    shutil.copytree(smoke, copy)
    # pretend the stored references came from elsewhere: point one config's reference at another class's shard
    manifest = load_manifest(copy)
    a, b = sorted(manifest.configs)[:2]
    ref_a, ref_b = manifest.configs[a].runs["reference"], manifest.configs[b].runs["reference"]
    if all(ref_a.shards[m].shard == ref_b.shards[m].shard for m in ref_a.shards):
        pytest.skip("the first two smoke configurations are one class")
    manifest.configs[a].runs["reference"] = ref_b
    save_manifest(copy, manifest)
    with pytest.raises(CollectionError, match="does not reproduce"):
        splitting_replay.collect_splitting_replay(copy, rare_share=1.0)


def test_splitting_search_extends_the_pool_resumes_and_reaches_audits(smoke: Path, tmp_path: Path, monkeypatch) -> None:
    from hspi.classifier.evaluation import load_model_data
    from hspi.collector import reproduction, splitting_search
    from hspi.dataset import SEARCHED_REFERENCE_RUN, SEARCHED_REPLAY_RUN, Dataset
    from hspi.equivalence import equivalence_classes

    copy = tmp_path / "search"
    shutil.copytree(smoke, copy)
    found = splitting_search.collect_searched_probes(copy, models=["mlp"], n_candidates=40, keep=4, near_share=1.0)
    search = found["mlp"]
    assert search.candidates == (40, 80) and 0 < len(search.selected) <= 4
    scores = [p.pairs_split for p in search.selected]
    assert scores == sorted(scores, reverse=True) and all(40 <= p.id < 80 for p in search.selected)
    assert splitting_search.load_selection(copy)["mlp"] == search  # the selection is kept with the dataset
    ds = Dataset(copy)
    chosen = sorted(p.id for p in search.selected)
    classes = equivalence_classes(ds, "mlp")
    words = {c.name: ds.pool_references(c.members[0], "mlp") for c in classes}
    for p in search.selected:  # the search's score is what every class's stored answers show
        row = {name: r.select(np.array([p.id])).native.tobytes() for name, r in words.items()}
        assert len(set(row.values())) >= p.distinct
    for cid in ds.manifest.configs:
        ref, again = ds.responses(cid, SEARCHED_REFERENCE_RUN, "mlp"), ds.responses(cid, SEARCHED_REPLAY_RUN, "mlp")
        assert ref.probe_ids.tolist() == chosen == sorted(again.probe_ids.tolist())
        assert again.select(ref.probe_ids).native.tobytes() == ref.native.tobytes()  # another process, same bits
        pool = ds.pool_references(cid, "mlp")
        assert pool.probe_ids.tolist() == list(range(40)) + chosen
        assert ds.pool_references(cid, "lm-small").probe_ids.tolist() == list(range(40))  # not searched: unchanged
    data = load_model_data(ds, "mlp")
    assert data.pool_ids.tolist() == list(range(40)) + chosen and data.pool_size == 40
    assert set(chosen) <= set(data.targeted_ids.tolist())
    assert data.pool_f64.shape[0] == 40 + len(chosen)
    # open-set audits run with the searched probes and, to measure what they add, without them
    from hspi.classifier.evaluation import Evaluation

    rows = Evaluation(ds, models=["mlp"], tiers=["logits"]).run()["open_set"]
    audited = {
        m: {(r["held_out_class"], r["queries"]) for r in rows if r["method"] == m}
        for m in ("lightgbm-sequential", "lightgbm-sequential-untargeted")
    }
    assert (
        audited["lightgbm-sequential"] and audited["lightgbm-sequential"] == audited["lightgbm-sequential-untargeted"]
    )

    # audits build their reference book over the extended pool, so they may ask a searched probe
    from hspi.audit.references import ModelReferences

    context = ModelReferences.load(copy, "mlp")
    assert context.pool_ids.tolist() == list(range(40)) + chosen
    assert context.book("logits").prior_split_scores().shape == (40 + len(chosen),)

    # interrupted after some configurations: the pool stays as it was until every one has the probes
    manifest = load_manifest(copy)
    dropped = sorted(manifest.configs)[:2]
    for cid in dropped:
        del manifest.configs[cid].runs[SEARCHED_REPLAY_RUN]
    del manifest.configs[dropped[0]].runs[SEARCHED_REFERENCE_RUN]
    save_manifest(copy, manifest)
    assert not Dataset(copy).has_searched_pool("mlp")
    assert Dataset(copy).pool_references(dropped[1], "mlp").probe_ids.tolist() == list(range(40))
    ran: list[str] = []
    real = reproduction.run_worker
    monkeypatch.setattr(reproduction, "run_worker", lambda job, wd: ran.append(job.platform.id) or real(job, wd))
    splitting_search.collect_searched_probes(copy, models=["mlp"], n_candidates=40, keep=4, near_share=1.0)
    assert sorted(ran) == sorted(dropped * 2)  # the stored search is reused: two processes per configuration, no more
    ran.clear()
    splitting_search.collect_searched_probes(copy, models=["mlp"], n_candidates=40, keep=4, near_share=1.0)
    assert ran == []
    assert Dataset(copy).has_searched_pool("mlp")


def test_collect_batched_stores_each_probes_distinct_answers_per_batch_size(smoke: Path, tmp_path: Path) -> None:
    from hspi.audit.references import ModelReferences
    from hspi.collector.batched_collect import batchable_configs, batched_selection
    from hspi.collector.models import model_spec
    from hspi.collector.probes import ProbeSet
    from hspi.collector.targets.local import LocalTarget
    from hspi.dataset import BATCHED_RUN, Dataset
    from hspi.platform import Platform

    copy = tmp_path / "batched"
    shutil.copytree(smoke, copy)
    proc = hspi("dataset", "collect-batched", str(copy), "--model", "lm-small", "--probes", "8", "--max-batch", "4")
    assert proc.returncode == 0, proc.stderr
    ds = Dataset(copy)
    ids = batched_selection(ds, "lm-small", 8)
    replayed = {
        int(p)
        for c in ds.complete_configs("lm-small", ("replay",))
        for p in ds.responses(c, "replay", "lm-small").probe_ids
    }
    assert not set(ids.tolist()) & replayed  # the matcher's training probes stay out
    configs = batchable_configs(ds, "lm-small")
    assert configs == list(ds.manifest.configs)  # the smoke grid has batch size 1 only
    pool = ProbeSet(model_spec("lm-small"), "pool", 40)
    for cid in configs:
        run = ds.manifest.configs[cid].runs[BATCHED_RUN]
        got = ds.responses(cid, BATCHED_RUN, "lm-small")
        masks = run.answer_sizes["lm-small"]
        assert run.batch_sizes == [1, 2, 3, 4] and len(masks) == len(got.probe_ids)
        assert run.batch_mates["lm-small"]["checked"] == 8
        if ds.manifest.configs[cid].platform.dtype == "fp32":  # MKL's row results do not depend on the other rows
            assert run.batch_mates["lm-small"]["changed"] == 0
        reference = ds.responses(cid, "reference", "lm-small")
        for probe in ids:
            rows = np.flatnonzero(got.probe_ids == probe)
            covered = 0
            for r in rows:
                assert not covered & masks[r]  # each size gave one answer
                covered |= masks[r]
            assert covered == 0b1111
            alone = next(r for r in rows if masks[r] & 1)  # batch size 1: the stored reference, bit for bit
            assert got.native[alone].tobytes() == reference.select(np.array([probe])).native[0].tobytes()
            assert len({got.native[r].tobytes() for r in rows}) == len(rows)  # distinct answers only
    # the in-process fp32 platform, answered here in a batch of 4 beside other probes: one of its stored answers
    target = LocalTarget("lm-small", Platform.parse("cpu:native/fp32/torch-eager"))
    out = target.run_inputs(pool.inputs(np.concatenate([ids[:1], np.arange(3)])))
    stored = ds.responses("cpu:native/fp32/torch-eager", BATCHED_RUN, "lm-small")
    four = [i for i, p in enumerate(stored.probe_ids) if p == ids[0] and stored_mask(ds, i) & 0b1000]
    assert stored.native[four[0]].tobytes() == out[0].tobytes()

    refs = ModelReferences.load(copy, "lm-small")
    assert refs.batched is not None and refs.batched.probe_ids.tolist() == sorted(ids.tolist())
    book = refs.book("topk20")
    # every batched probe's row has its answers under batching, for every class of batch size 1
    rows = [int(np.flatnonzero(refs.pool_ids == p)[0]) for p in sorted(ids.tolist())]
    assert sorted({row for _, row in book.alternates}) == rows

    # resumable: a second run does nothing
    before = (copy / "dataset.json").read_text()
    proc = hspi("dataset", "collect-batched", str(copy), "--model", "lm-small", "--probes", "8", "--max-batch", "4")
    assert proc.returncode == 0 and (copy / "dataset.json").read_text() == before


def stored_mask(ds, row: int) -> int:
    from hspi.dataset import BATCHED_RUN

    return ds.manifest.configs["cpu:native/fp32/torch-eager"].runs[BATCHED_RUN].answer_sizes["lm-small"][row]


def test_collect_batched_bad_input_is_one_line(smoke: Path) -> None:
    proc = hspi("dataset", "collect-batched", str(smoke), "--model", "no-such-model")
    assert proc.returncode != 0 and "no-such-model" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_an_audit_under_dynamic_batching_matches_the_class_and_sees_batching(smoke: Path, tmp_path: Path) -> None:
    from servers import serve_asgi

    from hspi.audit import AuditSettings, run_audit
    from hspi.audit.endpoint_evaluation import background_load
    from hspi.collector.target_server import create_target_app
    from hspi.dataset import Dataset
    from hspi.equivalence import equivalence_classes
    from hspi.platform import Platform
    from hspi.terms import Tier

    copy, classifier = tmp_path / "batched", tmp_path / "clf"
    shutil.copytree(smoke, copy)
    assert hspi("dataset", "collect-batched", str(copy), "--model", "lm-small", "--probes", "8").returncode == 0
    proc = hspi("train", "--dataset", str(copy), "--out", str(classifier), "--tiers", "topk20")
    assert proc.returncode == 0, proc.stderr
    # fp32 through MKL: its answers change with the batch size (measured: 3 distinct per probe for sizes 1..8)
    platform = "cpu:native/fp32/torch-eager"
    # a 50 ms window: the audit's requests share batches with the strangers' on a busy CI machine too
    app = create_target_app("lm-small", Platform.parse(platform), dynamic_batching=True, batch_window_ms=50.0)

    def audit(url: str, batched: bool):
        settings = AuditSettings(
            endpoint=url,
            model="lm-small",
            budget_queries=8,
            max_tier=Tier.TOPK20,
            seed=3,
            dataset=copy,
            classifier=classifier,
            false_match_rate=None,
            batched_references=batched,
        )
        return run_audit(settings)

    with serve_asgi(app) as url, background_load(url, "lm-small"):
        with_sets, without = audit(url, True), audit(url, False)
    assert max(app.state.runner.batch_sizes) > 1  # the server did batch the audit's requests with strangers'
    assert {r.probe_id for r in with_sets.evidence} <= set(range(40))
    served = next(c for c in equivalence_classes(Dataset(copy), "lm-small") if platform in c.members)
    assert with_sets.heads["full"].guesses[0].label == served.labels["full"], with_sets.heads["full"]
    assert with_sets.status == "match", with_sets.reason
    assert with_sets.batching is not None and with_sets.batching.state == "observed", with_sets.batching
    assert set(with_sets.batching.sizes) <= set(range(2, 9)) and with_sets.batching.from_batches >= 1
    assert without.batching is not None and without.batching.state == "unknown"
