"""llama.cpp's C++ llama-server: its logprob convention bit for bit, its slots and batch compositions
in-process, and audits of the real server on loopback."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hspi.collector.grid import grid_platforms
from hspi.collector.llama_cpp_compositions import COMPOSITIONS, mate_lengths, sequences, usable_compositions
from hspi.collector.models import model_spec
from hspi.collector.probes import ProbeSet
from hspi.collector.targets.llama_cpp import llama_cpp_available
from hspi.collector.targets.local import check_supported
from hspi.collector.targets.openai_parse import parse_completion
from hspi.errors import ConfigError
from hspi.features.logprob_conventions import _partial_sort_order, llama_server_logprobs
from hspi.features.tiers import log_softmax_f32, tier_view, top_ids
from hspi.platform import Platform


def _server_available() -> bool:
    if not llama_cpp_available():
        return False
    from hspi.collector.llama_server import llama_server_binary

    try:
        llama_server_binary()
    except ConfigError:
        return False
    return True


needs_llama_server = pytest.mark.skipif(
    not _server_available(), reason="llama-server is not built (make setup builds it with llama-cpp-python)"
)
F32_SLOTS = "cpu:native/F32/llama.cpp/bs=512/threads=1/fa=on/slots=4"


# --- the logprob convention --------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(-40, 40), min_size=1, max_size=60),
    st.integers(0, 70),
)
def test_partial_sort_order_is_a_permutation_with_the_top_first(values: list[int], n_top: int) -> None:
    array = np.asarray(values, dtype=np.float32) / 4  # quarters: many ties
    n_top = min(n_top, len(values))
    order = _partial_sort_order(array, n_top)
    assert sorted(order.tolist()) == list(range(len(values)))
    head = array[order[:n_top]]
    assert (np.diff(head) <= 0).all()  # the first n_top in descending order ...
    if n_top < len(values):  # ... and none of the rest is larger than the smallest of them
        assert n_top == 0 or array[order[n_top:]].max() <= head[-1]


def test_server_logprobs_are_a_log_softmax_to_a_few_ulps_and_depend_on_how_many_are_asked() -> None:
    logits = np.random.default_rng(3).normal(0, 3, size=(6, 300)).astype(np.float32)
    ids5, lp5 = llama_server_logprobs(logits, 5)
    ids20, lp20 = llama_server_logprobs(logits, 20)
    reference = log_softmax_f32(logits)
    assert np.array_equal(ids5, top_ids(reference, 5)) and np.array_equal(ids20[:, :5], ids5)
    assert np.abs(lp5.view(np.int32) - reference.view(np.int32)).max() < 64  # the same numbers, other roundings
    # the normaliser is summed in the order partial_sort leaves the array in: another k, another order
    assert not np.array_equal(lp5.view(np.uint32), lp20.view(np.uint32))
    view = tier_view(logits, "topk5", "llama-server")
    assert np.array_equal(view.ids, ids5) and np.array_equal(view.values, np.take_along_axis(lp5, ids5, 1))
    with pytest.raises(ConfigError, match="unknown logprob convention 'vllm'"):
        tier_view(logits, "topk5", "vllm")


def test_llama_server_completion_body_is_parsed() -> None:
    """llama-server answers a completion's logprobs in the chat format (`content`), with ids and bytes."""
    body = {
        "choices": [
            {
                "text": "主",
                "logprobs": {
                    "content": [
                        {
                            "id": 59,
                            "token": "主",
                            "bytes": [228, 184, 187],
                            "logprob": -1.81791090965271,
                            "top_logprobs": [
                                {"id": 59, "token": "主", "bytes": [228, 184, 187], "logprob": -1.81791090965271},
                                {"id": 250, "token": "仺", "bytes": [228, 187, 186], "logprob": -2.8676555156707764},
                            ],
                        }
                    ]
                },
            }
        ],
        "usage": {"prompt_tokens": 16, "completion_tokens": 1, "total_tokens": 17},
    }
    first = parse_completion(json.dumps(body).encode())
    assert first.text == "主" and first.top is not None and [t for t, _ in first.top] == ["主", "仺"]
    assert first.top[1][1] == np.float32(-2.8676555156707764) and first.usage is not None


# --- platforms, grids and compositions -----------------------------------------------------------


def test_slots_are_a_llama_cpp_knob_with_their_own_convention() -> None:
    platform = Platform.parse(F32_SLOTS)
    assert platform.slots == 4 and platform.id == F32_SLOTS and platform.logprob_convention == "llama-server"
    assert "slots=4" in platform.kernel
    assert Platform.parse("cpu:native/F32/llama.cpp").logprob_convention == "numpy"
    with pytest.raises(ConfigError, match="slots"):
        check_supported(Platform.parse("cpu:native/fp32/torch-eager/slots=2"), "lm-small")
    with pytest.raises(ConfigError, match="slots must be in 0..64"):
        Platform.parse("cpu:native/F32/llama.cpp/slots=65")
    for platform in grid_platforms("llama-server"):
        check_supported(platform, "lm-gpt2")
        assert platform.slots == 4 and platform.batch_size == 512


def test_compositions_name_their_mates() -> None:
    assert mate_lengths("alone", 16) == ([], [])
    assert mate_lengths("after:n-1", 16) == ([], [15])
    assert mate_lengths("before:1,1|after:n", 16) == ([1, 1], [16])
    assert mate_lengths("after:n-8", 4) == ([], [1])  # never shorter than one token
    assert sequences("before:1,1,1") == 4 and len(usable_compositions(4)) == len(COMPOSITIONS)
    assert all(sequences(c) <= 2 for c in usable_compositions(2))
    with pytest.raises(ConfigError, match="bad batch composition 'beside:3'"):
        mate_lengths("beside:3", 16)


@pytest.mark.skipif(not llama_cpp_available(), reason="llama-cpp-python is not installed")
def test_llama_cpp_python_server_refuses_a_slots_platform(tmp_path: Path) -> None:
    from hspi.collector.llama_cpp_server import llama_cpp_server

    with pytest.raises(ConfigError, match="slots=4: a platform with slots is llama.cpp's llama-server"):
        with llama_cpp_server(Platform.parse(F32_SLOTS), export_dir=tmp_path):
            pass


def test_a_missing_llama_server_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from hspi.collector.llama_server import LLAMA_SERVER_ENV, llama_server_binary

    monkeypatch.setenv(LLAMA_SERVER_ENV, str(tmp_path / "nope"))
    with pytest.raises(ConfigError) as info:
        llama_server_binary()
    assert f"{LLAMA_SERVER_ENV}={tmp_path / 'nope'} is not an executable file" in str(info.value)


# --- the real server ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gguf")


def _top(client: httpx.Client, base_url: str, tokens: list[int], k: int) -> tuple[list[int], np.ndarray]:
    response = client.post(
        f"{base_url}/completions", json={"prompt": [tokens], "max_tokens": 1, "temperature": 0, "logprobs": k}
    )
    assert response.status_code == 200, response.text
    tops = response.json()["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
    return [t["id"] for t in tops], np.array([t["logprob"] for t in tops], dtype=np.float32)


@pytest.mark.slow
@needs_llama_server
@pytest.mark.parametrize(
    "platform_id, tier",
    [(F32_SLOTS, "topk5"), ("cpu:native/Q8_0/llama.cpp/bs=512/threads=1/slots=2", "top1")],
)
def test_the_real_llama_server_answers_the_in_process_references_bit_for_bit(
    export_dir: Path, platform_id: str, tier: str
) -> None:
    from hspi.collector.llama_server import llama_server
    from hspi.collector.targets.llama_cpp import LlamaCppTarget
    from hspi.features.tiers import TIERS

    platform = Platform.parse(platform_id)
    probes, ids = ProbeSet(model_spec("lm-gpt2"), "pool", 600), np.arange(8, dtype=np.int32)
    with LlamaCppTarget("lm-gpt2", platform, export_dir=export_dir) as target:
        expected = tier_view(target.answer(probes, ids).as_float32(), tier, platform.logprob_convention)
    numpy_view = tier_view(target.answer(probes, ids).as_float32(), tier)  # another convention: other bits
    k = int(TIERS[tier] or 0)
    with llama_server(platform, export_dir=export_dir) as base_url, httpx.Client(timeout=120) as client:
        assert base_url.startswith("http://127.0.0.1:")
        answers = [_top(client, base_url, probes.inputs(ids)[i].tolist(), k) for i in range(len(ids))]
    for i, (got_ids, got_values) in enumerate(answers):
        assert got_ids == expected.ids[i].tolist() and got_values.tobytes() == expected.values[i].tobytes(), i
    assert any(got.tobytes() != numpy_view.values[i].tobytes() for i, (_, got) in enumerate(answers))


@pytest.mark.slow
@needs_llama_server
def test_batch_compositions_part_f32_answers_and_the_audit_reads_the_real_server(tmp_path: Path) -> None:
    """collect the llama-server smoke grid, its answers in batch compositions, train, then audit a real
    llama-server of each class: the GGUF type and the class are named."""
    from hspi.audit import AuditSettings, run_audit
    from hspi.classifier.training import train
    from hspi.collector.batched_collect import collect_batched
    from hspi.collector.collect import collect
    from hspi.collector.llama_server import llama_server
    from hspi.dataset import BATCHED_RUN, Dataset

    dataset, models = tmp_path / "ds", tmp_path / "models"
    collect("llama-server-smoke", "lm-gpt2", dataset, pool=300, fresh=100, replay=150)
    collect_batched(dataset, "lm-gpt2", probes=24)
    ds = Dataset(dataset)
    distinct = {}
    for cid, record in ds.manifest.configs.items():
        run = record.runs[BATCHED_RUN]
        assert run.compositions == usable_compositions(4) and len(run.batch_sizes) == len(run.compositions)
        got = ds.responses(cid, BATCHED_RUN, "lm-gpt2")
        distinct[record.platform.dtype] = len(got.probe_ids) / len(set(got.probe_ids.tolist()))
        alone = ds.pool_references(cid, "lm-gpt2").select(np.unique(got.probe_ids))
        firsts = [i for i, m in enumerate(run.answer_sizes["lm-gpt2"]) if m & 1]  # each probe's alone answer
        assert np.array_equal(got.as_float32()[firsts], alone.as_float32())
    assert distinct["F32"] > 1 and distinct["Q8_0"] == 1  # measured: F32 parts beside a prompt of n-1 or n tokens
    train(ds, models, tiers=["topk5"])
    for cid in (F32_SLOTS, F32_SLOTS.replace("F32", "Q8_0")):
        with llama_server(Platform.parse(cid), export_dir=dataset / "exports") as base_url:
            report = run_audit(
                AuditSettings(
                    endpoint=base_url,
                    model="lm-gpt2",
                    max_tier="topk5",
                    budget_queries=16,
                    seed=0,
                    dataset=dataset,
                    classifier=models,
                    timeout_s=60.0,
                    false_match_rate=None,
                )
            )
        assert report.status == "match", report.reason
        assert report.heads["full"].guesses[0].label == cid
        assert report.heads["dtype"].guesses[0].label == Platform.parse(cid).dtype
