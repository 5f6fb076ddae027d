"""Bring your own model: a registered Hugging Face model's probes, collection, serving and audit.

Models are made here (random weights, tokenizers trained on generated text; nothing downloaded) and
registered under a temporary HSPI_HOME, which the subprocesses (collection workers, servers) inherit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
pytest.importorskip("transformers")
pytest.importorskip("sentencepiece")

from hspi.audit.model_check import ModelReading, read_answer, wrong_model_reason  # noqa: E402
from hspi.collector.grid import grid_platforms  # noqa: E402
from hspi.collector.models import model_spec  # noqa: E402
from hspi.collector.probes import ProbeSet  # noqa: E402
from hspi.collector.prompt_codec import codec_for  # noqa: E402
from hspi.collector.registry import HOME_ENV, ModelRegistry  # noqa: E402
from hspi.collector.targets.http_client import QueryBudget  # noqa: E402
from hspi.collector.targets.openai import answers_from_tokens  # noqa: E402
from hspi.collector.targets.openai_parse import FirstToken, parse_completion  # noqa: E402
from hspi.errors import ConfigError  # noqa: E402
from hspi.responses import AMBIGUOUS_TOKEN, FOREIGN_TOKEN  # noqa: E402
from tests.tiny_models import llama_dir, qwen2_dir, sharpen_output_layer  # noqa: E402


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A registry with three models: byo-llama, byo-llama-other (same tokenizer, other weights), byo-qwen."""
    root = tmp_path_factory.mktemp("byo")
    before = os.environ.get(HOME_ENV)
    os.environ[HOME_ENV] = str(root / "home")
    codec_for.cache_clear()
    registry = ModelRegistry()
    registry.add("byo-llama", hf=sharpen_output_layer(llama_dir(root / "llama", seed=5)))
    registry.add("byo-llama-other", hf=sharpen_output_layer(llama_dir(root / "llama-other", seed=6)))
    registry.add("byo-qwen", hf=sharpen_output_layer(qwen2_dir(root / "qwen", seed=7, tied=False)))
    try:
        yield root
    finally:
        codec_for.cache_clear()
        if before is None:
            os.environ.pop(HOME_ENV, None)
        else:
            os.environ[HOME_ENV] = before


# ---------------------------------------------------------------- probes in the model's vocabulary


def test_registered_spec_pins_weights_and_tokenizer(home: Path) -> None:
    spec, other = model_spec("byo-llama"), model_spec("byo-llama-other")
    assert spec.source == "registered" and spec.input_kind == "tokens" and spec.n_outputs == 400
    assert spec.version != other.version  # other weights: other probe sets, never mixed references
    assert ProbeSet(spec, "pool", 4).version.startswith(spec.version)


@pytest.mark.parametrize("model", ["byo-llama", "byo-qwen"])
def test_probes_round_trip_and_differ(home: Path, model: str) -> None:
    spec, codec = model_spec(model), codec_for(model)
    pool = ProbeSet(spec, "pool", 64)
    prompts = pool.inputs(pool.ids)
    assert np.array_equal(prompts, pool.inputs(pool.ids))  # a pure function of the probe id
    special = set(codec.special_ids)  # type: ignore[attr-defined]
    for ids in prompts:
        assert np.array_equal(codec.encode(codec.decode(ids)), ids)
        assert not special & {int(i) for i in ids}
    assert (prompts[1:, 0] != prompts[:-1, 0]).all()  # consecutive probes never share a first token
    fresh = ProbeSet(spec, "fresh", 64)
    assert not np.array_equal(fresh.inputs(fresh.ids[:4]), prompts[:4])


@settings(max_examples=25, deadline=None)
@given(probe_id=st.integers(min_value=0, max_value=2**31 - 2), kind=st.sampled_from(["pool", "fresh"]))
def test_any_probe_id_round_trips(home: Path, probe_id: int, kind: str) -> None:
    spec, codec = model_spec("byo-qwen"), codec_for("byo-qwen")
    ids = ProbeSet(spec, kind, 2**31 - 1).inputs(np.array([probe_id]))[0]
    assert len(ids) == spec.input_shape[0]
    assert np.array_equal(codec.encode(codec.decode(ids)), ids)


def test_token_texts_map_back_and_ambiguous_ones_are_marked(home: Path) -> None:
    codec = codec_for("byo-llama")
    words = codec.word_ids()  # type: ignore[attr-defined]
    for i in words[:20]:
        assert codec.token_id(codec.token_text(int(i))) == int(i)
    # SentencePiece byte-fallback pieces of non-ASCII bytes all read U+FFFD: known, but no single id
    assert codec.knows("\ufffd") and codec.token_id("\ufffd") is None
    texts = [codec.token_text(int(i)) for i in words[:3]] + ["\ufffd", "ζζζ"]
    top = [(text, np.float32(-0.1 - i)) for i, text in enumerate(texts)]
    answers = answers_from_tokens("byo-llama", "v", np.array([0]), "topk5", [FirstToken(texts[0], top[0][1], top)])
    assert not answers.complete[0]
    assert answers.ids[0, 0] == int(words[0]) and AMBIGUOUS_TOKEN in answers.ids[0] and FOREIGN_TOKEN in answers.ids[0]


def test_unknown_model_names_the_registry() -> None:
    with pytest.raises(ConfigError, match="unknown model 'no-such-model'.*hspi model add"):
        model_spec("no-such-model")


# ---------------------------------------------------------------- grids written by the user


def test_grid_file(tmp_path: Path) -> None:
    good = tmp_path / "grid.yaml"
    good.write_text("platforms:\n  - cpu:native/fp32/torch-eager\n  - cpu:avx2/bf16/torch-eager\n")
    assert [p.id for p in grid_platforms(str(good))] == ["cpu:native/fp32/torch-eager", "cpu:avx2/bf16/torch-eager"]
    cases = {
        "missing.yaml": (None, "does not exist"),
        "bad.yaml": ("platforms: [unclosed\n", "not readable YAML"),
        "empty.yaml": ("other: 1\n", "expected 'platforms:'"),
        "number.yaml": ("platforms:\n  - 3\n", r"platforms\[0\] is 3"),
        "wrong.yaml": ("platforms:\n  - cpu:native/fp99/torch-eager\n", r"platforms\[0\]"),
        "twice.yaml": ("platforms:\n  - cpu:native/fp32/torch-eager\n  - cpu:native/fp32/torch-eager\n", "twice"),
    }
    for name, (text, message) in cases.items():
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        with pytest.raises(ConfigError, match=message):
            grid_platforms(str(path))


def test_registered_models_skip_onnx_platforms(home: Path) -> None:
    from hspi.collector.collect import unsupported_platforms

    platforms = grid_platforms("cpu-default")
    skipped = unsupported_platforms(platforms, ["byo-llama"])
    assert skipped and all("onnxruntime" in pid for pid in skipped)
    with pytest.raises(ConfigError):  # a built-in model that cannot run its grid is a mistake, not a skip
        unsupported_platforms(grid_platforms("llama-cpp-smoke"), ["lm-small"])


# ---------------------------------------------------------------- what the server bills


def test_usage_is_billed() -> None:
    body = {"choices": [{"text": "a", "logprobs": {"tokens": ["a"], "token_logprobs": [-0.5]}}]}
    body["usage"] = {"prompt_tokens": 48, "completion_tokens": 1, "total_tokens": 49}
    token = parse_completion(json.dumps(body).encode())
    assert token.usage is not None and (token.usage.prompt_tokens, token.usage.total_tokens) == (48, 49)
    budget = QueryBudget(max_queries=10, max_tokens=100)
    reserved = budget.spend(17)
    budget.settle(reserved, 49)  # the server counted 49, not hspi's 17
    assert budget.tokens == 49
    assert budget.spend(17) == 49  # the next estimate includes what the server adds
    with pytest.raises(Exception, match="budget spent"):
        budget.spend(17)  # 98 + 49 > 100: refused before sending
    for usage in ({"total_tokens": -1}, {"total_tokens": "49"}, {"prompt_tokens": True}, []):
        body["usage"] = usage
        assert parse_completion(json.dumps(body).encode()).usage is None


# ---------------------------------------------------------------- right model first


def test_model_check_readings() -> None:
    logits = np.arange(50, dtype=np.float32)  # the reference ranks 49, 48, 47, ... first
    same = read_answer(np.array([49, 48, 47, 46, 44]), [logits])
    assert same.overlap == 0.8 and not same.other_weights and wrong_model_reason([same]) is None
    other = read_answer(np.array([1, 2, 3, 4, 5]), [logits])
    assert other.overlap == 0.0 and other.other_weights
    assert wrong_model_reason([other]) is None  # one flat answer could be a reordering
    assert "other weights" in (wrong_model_reason([same, other, other]) or "")
    foreign = read_answer(np.array([49, FOREIGN_TOKEN, FOREIGN_TOKEN, FOREIGN_TOKEN, 5]), [logits])
    assert "another tokenizer" in (wrong_model_reason([foreign]) or "")  # decisive at once
    assert ModelReading(foreign=0, shown=1, overlap=None).other_weights is False  # top1: not measurable


# ---------------------------------------------------------------- the whole way, on loopback


@pytest.fixture(scope="module")
def collected(home: Path) -> tuple[Path, Path]:
    from hspi.classifier.training import train
    from hspi.collector.collect import collect
    from hspi.dataset import Dataset

    grid = home / "grid.yaml"
    grid.write_text("platforms:\n  - cpu:native/fp32/torch-eager\n  - cpu:native/bf16/torch-eager\n")
    dataset, classifier = home / "dataset", home / "classifier"
    collect(str(grid), "byo-llama", dataset, pool=48, fresh=16, replay=24)
    train(Dataset(dataset), classifier, tiers=["topk20"])
    return dataset, classifier


def audit(url: str, dataset: Path, classifier: Path, seed: int, claim: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    from hspi.audit import AuditSettings, run_audit
    from hspi.terms import Tier

    settings = AuditSettings(
        endpoint=url,
        model="byo-llama",
        budget_queries=16,
        max_tier=Tier.TOPK20,
        seed=seed,
        dataset=dataset,
        classifier=classifier,
        timeout_s=30.0,
        claim=claim or {},
    )
    return run_audit(settings)


@pytest.mark.slow
def test_collect_serve_audit_and_wrong_models(home: Path, collected: tuple[Path, Path]) -> None:
    from hspi.audit.endpoint_evaluation import served_target
    from hspi.dataset import Dataset
    from hspi.terms import StopReason, Verdict

    dataset, classifier = collected
    manifest = Dataset(dataset).manifest
    assert set(manifest.configs) == {"cpu:native/fp32/torch-eager", "cpu:native/bf16/torch-eager"}
    assert set(manifest.probe_sets) == {"byo-llama"}
    with served_target("byo-llama", "cpu:native/bf16/torch-eager", log_path=home / "serve-bf16.log") as url:
        for seed in (1, 2):
            report = audit(url, dataset, classifier, seed, claim={"dtype": "bf16"})
            assert report.verdict == Verdict.CONSISTENT, report.reason
            assert report.heads["dtype"].guesses[0].label == "bf16" and report.queries <= 16
        report = audit(url, dataset, classifier, 3, claim={"dtype": "fp32"})
        assert report.verdict == Verdict.INCONSISTENT, report.reason
        # no references for the model in this dataset: reference-free, the dtype from the logits' format only
        report = audit(url, home / "no-dataset", classifier, 5, claim={"dtype": "bf16"})
        assert report.verdict == Verdict.CONSISTENT and report.queries <= 4, report.reason
        assert report.heads["dtype"].basis == "logit-precision" and not report.heads["full"].decided
        # and its model-agnostic section, read free from the same answers
        assert report.agnostic is not None and report.agnostic.checks["precision"].verdict == "bf16"
    # other weights behind the same tokenizer, and another tokenizer: wrong-model within two queries
    for served in ("byo-llama-other", "byo-qwen"):
        with served_target(served, "cpu:native/fp32/torch-eager", log_path=home / f"serve-{served}.log") as url:
            report = audit(url, dataset, classifier, 4, claim={"dtype": "fp32"})
        assert report.verdict == Verdict.WRONG_MODEL and report.stop == StopReason.WRONG_MODEL, report.reason
        assert report.queries <= 2 and "wrong model" in report.reason
        assert all(not h.decided and not h.guesses for h in report.heads.values())
        assert report.heads["dtype"].verdict == "inconclusive"


@pytest.mark.slow
def test_cli_exit_code_for_wrong_model(home: Path, collected: tuple[Path, Path]) -> None:
    from hspi.audit.endpoint_evaluation import served_target

    dataset, classifier = collected
    with served_target("byo-qwen", "cpu:native/fp32/torch-eager") as url:
        run = subprocess.run(
            [sys.executable, "-m", "hspi", "audit", "--endpoint", url, "--model", "byo-llama", "--budget", "8"]
            + ["--dataset", str(dataset), "--classifier", str(classifier), "--seed", "1"],
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert run.returncode == 13, run.stdout + run.stderr
    assert "wrong-model" in run.stdout and "Traceback" not in run.stderr


@pytest.mark.slow
def test_service_catalog_offers_registered_models_it_has_references_for(
    home: Path, collected: tuple[Path, Path]
) -> None:
    from hspi.api.catalog import Catalog
    from hspi.audit.references import ReferenceStore

    dataset, classifier = collected
    catalog = Catalog(ReferenceStore(dataset=dataset, classifier=classifier))
    assert "byo-llama" in catalog.models() and "byo-qwen" not in catalog.models()  # no references for byo-qwen
    assert {c.labels["dtype"] for c in catalog.classes("byo-llama")} == {"fp32", "bf16"}
    with pytest.raises(ConfigError, match="no reference dataset and classifier for byo-qwen"):
        catalog.check_model("byo-qwen")
