"""`create_target_app`: the reference OpenAI-compatible server serves exactly the dataset's tiers,
caps them as asked, refuses bad requests with a clear 400, and batches concurrent requests."""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from reproducing import identified
from servers import serve_asgi

from hspi.collector.models import model_spec
from hspi.collector.probes import ProbeSet
from hspi.collector.target_server import create_target_app
from hspi.collector.targets.http_client import QueryBudget
from hspi.collector.targets.local import LocalTarget
from hspi.collector.targets.openai import OpenAICompatibleTarget, answers_from_tokens
from hspi.collector.vocabulary import decode, token_text
from hspi.errors import ConfigError
from hspi.features.tiers import tier_view
from hspi.platform import Platform

FP32 = Platform()
BF16 = Platform.parse("cpu:native/bf16/torch-eager")
LM = model_spec("lm-small")
POOL = ProbeSet(LM, "pool", 1000)
IDS = np.array([0, 3, 41, 999])
VOCAB = LM.n_outputs


def prompt(probe: int) -> str:
    return decode(POOL.inputs(np.array([probe]))[0], VOCAB)


def bits(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float32).view(np.uint32)


def ask(client: TestClient, probe: int, **fields) -> httpx.Response:
    return client.post("/v1/completions", json={"prompt": prompt(probe), "max_tokens": 1, "temperature": 0, **fields})


def ask_chat(client: TestClient, probe: int, **fields) -> httpx.Response:
    return client.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": prompt(probe)}], "max_tokens": 1, "temperature": 0, **fields},
    )


def error_of(response: httpx.Response) -> str:
    assert response.status_code == 400, (response.status_code, response.text)
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and "\n" not in error["message"]
    return error["message"]


@pytest.fixture(scope="module")
def apps() -> dict:
    return {cap: create_target_app("lm-small", FP32, top_logprobs=cap) for cap in (20, 5, 1, 0)}


@pytest.fixture(scope="module")
def client(apps: dict) -> TestClient:
    with TestClient(apps[20]) as c:
        yield c


@pytest.fixture(scope="module")
def capped(apps: dict) -> dict:
    with TestClient(apps[5]) as c5, TestClient(apps[1]) as c1, TestClient(apps[0]) as c0:
        yield {5: c5, 1: c1, 0: c0}


# -- exactly the dataset's tier derivation --------------------------------------------------------


@pytest.mark.parametrize("platform", [FP32, BF16], ids=lambda p: p.id)
def test_served_logprobs_are_the_tier_derivation_bit_for_bit(platform: Platform) -> None:
    expected_logits = LocalTarget("lm-small", platform).answer(POOL, IDS).as_float32()
    views = {tier: tier_view(expected_logits, tier) for tier in ("topk20", "topk5", "top1")}
    with TestClient(create_target_app("lm-small", platform)) as client:
        for row, probe in enumerate(IDS):
            for k, tier in ((20, "topk20"), (5, "topk5")):
                body = ask(client, int(probe), logprobs=k).json()
                logprobs = body["choices"][0]["logprobs"]
                top = list(logprobs["top_logprobs"][0].items())  # JSON objects keep the server's order
                ids, values = views[tier].ids[row], views[tier].values[row]
                assert [t for t, _ in top] == [token_text(int(i), VOCAB) for i in ids]
                assert np.array_equal(bits([v for _, v in top]), bits(values))
                assert [float(v) for _, v in top] == [float(v) for v in values]  # as float(np.float32) in JSON
                assert logprobs["tokens"] == [token_text(int(ids[0]), VOCAB)] == [body["choices"][0]["text"]]
                assert bits(logprobs["token_logprobs"]) == bits(views["top1"].values[row])
            chat = ask_chat(client, int(probe), logprobs=True, top_logprobs=20).json()
            content = chat["choices"][0]["logprobs"]["content"][0]
            assert [a["token"] for a in content["top_logprobs"]] == [
                token_text(int(i), VOCAB) for i in views["topk20"].ids[row]
            ]
            assert np.array_equal(
                bits([a["logprob"] for a in content["top_logprobs"]]), bits(views["topk20"].values[row])
            )
            assert content["token"] == chat["choices"][0]["message"]["content"]


@pytest.mark.parametrize(
    "candidates",
    [
        # a static batch of 8 (padded with a filler probe) and the usual batch of one, fp32
        ("cpu:native/fp32/torch-eager/bs=8", "cpu:native/fp32/onnxruntime-basic"),
        ("cpu:native/bf16/torch-eager", "cpu:native/fp32/torch-eager", "cpu:native/fp32/onnxruntime-all"),
    ],
)
def test_served_topk_equals_the_shipped_datasets_references(candidates: tuple[str, ...]) -> None:
    """The server answers what the dataset recorded for the configuration whose answers this machine
    gives for the served platform (measured: on another CPU that may be another configuration's)."""
    from hspi.dataset import Dataset
    from hspi.shipped import CPU_DATASET

    platform_id, config_id = identified("lm-small", candidates)
    platform = Platform.parse(platform_id)
    ids = np.arange(8)
    reference = Dataset(CPU_DATASET).responses(config_id, "reference", "lm-small").select(ids).as_float32()
    expected = tier_view(reference, "topk20")
    with TestClient(create_target_app("lm-small", platform)) as client:
        for row, probe in enumerate(ids):
            top = list(ask(client, int(probe), logprobs=20).json()["choices"][0]["logprobs"]["top_logprobs"][0].items())
            assert [t for t, _ in top] == [token_text(int(i), VOCAB) for i in expected.ids[row]]
            assert np.array_equal(bits([v for _, v in top]), bits(expected.values[row]))


def test_over_http_the_client_reads_back_the_exact_tier_view(apps: dict) -> None:
    """Server -> JSON -> parser -> `answers_from_tokens`: the ids and float32 bits of `tier_view`."""
    expected = tier_view(LocalTarget("lm-small", FP32).answer(POOL, IDS).as_float32(), "topk20")
    budget = QueryBudget(10, 1000)
    with serve_asgi(apps[20]) as url, OpenAICompatibleTarget(url, "lm-small", budget) as target:
        tier, first = target.detect_tier(POOL.inputs(IDS[:1])[0])
        tokens = [first] + [target.first_token(POOL.inputs(np.array([p]))[0], 20) for p in IDS[1:]]
    assert tier == "topk20" and budget.queries == len(IDS)
    answers = answers_from_tokens("lm-small", POOL.version, IDS, "topk20", tokens)
    assert answers.complete.all()
    assert np.array_equal(answers.ids, expected.ids)
    assert np.array_equal(bits(answers.values), bits(expected.values))


# -- tier caps ---------------------------------------------------------------------------------------


def test_cap_20(client: TestClient) -> None:
    assert len(ask(client, 1, logprobs=20).json()["choices"][0]["logprobs"]["top_logprobs"][0]) == 20
    assert "logprobs" in error_of(ask(client, 1, logprobs=21))
    assert ask(client, 1).json()["choices"][0]["logprobs"] is None  # not asked, not given


def test_cap_5_refuses_20(capped: dict) -> None:
    c = capped[5]
    assert error_of(ask(c, 1, logprobs=20)) == "logprobs must be at most 5"
    assert error_of(ask_chat(c, 1, logprobs=True, top_logprobs=20)) == "logprobs must be at most 5"
    assert len(ask(c, 1, logprobs=5).json()["choices"][0]["logprobs"]["top_logprobs"][0]) == 5
    assert (
        len(
            ask_chat(c, 1, logprobs=True, top_logprobs=5).json()["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        )
        == 5
    )


def test_cap_1_gives_the_sampled_tokens_logprob_only(capped: dict) -> None:
    c = capped[1]
    for k in (0, 1):
        logprobs = ask(c, 1, logprobs=k).json()["choices"][0]["logprobs"]
        assert logprobs["top_logprobs"] is None and len(logprobs["token_logprobs"]) == 1
        assert logprobs["token_logprobs"][0] <= 0
    assert error_of(ask(c, 1, logprobs=5)) == "logprobs must be at most 1"
    content = ask_chat(c, 1, logprobs=True).json()["choices"][0]["logprobs"]["content"][0]
    assert content["top_logprobs"] == [] and content["logprob"] <= 0
    assert "at most 1" in error_of(ask_chat(c, 1, logprobs=True, top_logprobs=2))


def test_cap_0_gives_text_only(capped: dict) -> None:
    c = capped[0]
    body = ask(c, 1).json()["choices"][0]
    assert body["logprobs"] is None and len(body["text"]) == 1
    for k in (0, 1, 20):
        assert error_of(ask(c, 1, logprobs=k)) == "this endpoint returns no logprobs"
    assert error_of(ask_chat(c, 1, logprobs=True)) == "this endpoint returns no logprobs"
    chat = ask_chat(c, 1).json()["choices"][0]
    assert chat["logprobs"] is None and chat["message"]["content"] == body["text"]


@pytest.mark.parametrize("cap, tier, queries", [(20, "topk20", 1), (5, "topk5", 2), (1, "top1", 3), (0, "text", 4)])
def test_detect_tier_finds_each_cap(apps: dict, cap: int, tier: str, queries: int) -> None:
    budget = QueryBudget(10, 1000)
    with serve_asgi(apps[cap]) as url, OpenAICompatibleTarget(url, "lm-small", budget) as target:
        found, answer = target.detect_tier(POOL.inputs(IDS[:1])[0])
    assert found == tier and budget.queries == queries
    assert answer.text is not None


def test_a_cap_outside_the_tiers_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="top_logprobs cap 3"):
        create_target_app("lm-small", FP32, top_logprobs=3)


# -- bad requests --------------------------------------------------------------------------------------

T = token_text(7, VOCAB)


@pytest.mark.parametrize(
    "payload, words",
    [
        ({"prompt": "abc"}, ["'a'", "U+0061", "vocabulary"]),
        ({"prompt": T + "\u4e00x"}, ["'x'", "vocabulary"]),
        ({"prompt": T * 17}, ["1 to 16 tokens", "17"]),
        ({"prompt": ""}, ["1 to 16 tokens", "has 0"]),
        ({"prompt": []}, ["1 to 16 tokens", "has 0"]),
        ({"prompt": [512]}, ["0..511"]),
        ({"prompt": [3, -1]}, ["0..511"]),
        ({"prompt": [1.5]}, ["prompt"]),
        ({"prompt": None}, ["prompt"]),
        ({}, ["prompt", "required"]),
        ({"prompt": T, "max_tokens": 0}, ["max_tokens"]),
        ({"prompt": T, "max_tokens": 17}, ["max_tokens"]),
        ({"prompt": T, "temperature": -1}, ["temperature"]),
        ({"prompt": T, "logprobs": -1}, ["logprobs"]),
        ({"prompt": T, "logprobs": "all"}, ["logprobs"]),
    ],
)
def test_bad_completion_requests_are_400s_naming_the_problem(
    client: TestClient, payload: dict, words: list[str]
) -> None:
    message = error_of(client.post("/v1/completions", json=payload))
    assert all(w in message for w in words), message


@pytest.mark.parametrize(
    "payload, words",
    [
        ({"messages": []}, ["messages"]),
        ({"messages": [{"role": "user", "content": "hello"}]}, ["'h'", "vocabulary"]),
        ({"messages": [{"role": "user"}]}, ["content"]),
        (
            {"messages": [{"role": "user", "content": T * 9}, {"role": "user", "content": T * 8}]},
            ["1 to 16 tokens", "17"],
        ),
        ({"messages": [{"role": "user", "content": T}], "top_logprobs": 21, "logprobs": True}, ["top_logprobs"]),
    ],
)
def test_bad_chat_requests_are_400s(client: TestClient, payload: dict, words: list[str]) -> None:
    message = error_of(client.post("/v1/chat/completions", json=payload))
    assert all(w in message for w in words), message


def test_a_body_that_is_not_json_is_a_400(client: TestClient) -> None:
    response = client.post("/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
    error_of(response)


def test_models_lists_the_served_model(client: TestClient) -> None:
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["lm-small"]


@pytest.fixture(scope="module")
def mlp() -> TestClient:
    with TestClient(create_target_app("mlp", FP32)) as c:
        yield c


def _inputs(n: int = 1, width: int = 64, value: float = 0.5) -> list:
    return [[value] * width for _ in range(n)]


@pytest.mark.parametrize(
    "inputs, words",
    [
        (_inputs(width=2), ["shape [64]", "got [2]"]),
        (_inputs(width=65), ["shape [64]", "got [65]"]),
        ([0.5] * 64, ["shape [64]", "got []"]),
        ([_inputs()], ["shape [64]", "got [1, 64]"]),
        ([[0.5] * 64, [0.5] * 63], ["nested list of numbers"]),
        ([["a"] * 64], ["nested list of numbers"]),
        ([], ["inputs"]),
        (_inputs(65), ["inputs"]),
        (_inputs(value=1e39), ["finite"]),
    ],
)
def test_mlp_logits_with_bad_inputs_are_400s(mlp: TestClient, inputs: list, words: list[str]) -> None:
    message = error_of(mlp.post("/v1/logits", json={"inputs": inputs}))
    assert all(w in message for w in words), message


def test_mlp_logits_nan_inputs_are_a_400(mlp: TestClient) -> None:
    body = '{"inputs": [[NaN' + ", 0.5" * 63 + "]]}"
    message = error_of(mlp.post("/v1/logits", content=body, headers={"content-type": "application/json"}))
    assert "finite" in message


def test_mlp_logits_are_the_local_targets_bit_for_bit(mlp: TestClient) -> None:
    spec = model_spec("mlp")
    pool = ProbeSet(spec, "pool", 1000)
    ids = np.array([2, 9])
    x = pool.inputs(ids)
    answer = mlp.post("/v1/logits", json={"inputs": x.tolist()})
    assert answer.status_code == 200
    logits = np.asarray(answer.json()["logits"], dtype=np.float64)
    expected = LocalTarget("mlp", FP32).answer(pool, ids).as_float32()
    assert logits.shape == (2, spec.n_outputs)
    assert np.array_equal(bits(logits), bits(expected))
    assert "not a language model" in error_of(mlp.post("/v1/completions", json={"prompt": T}))


@pytest.mark.parametrize(
    "row, words",
    [
        ([600] * 16, ["token ids", "0..511"]),
        ([1.5] * 16, ["token ids"]),
        ([-1] * 16, ["token ids"]),
        ([1] * 17, ["shape [16]"]),
    ],
)
def test_lm_logits_with_bad_token_ids_are_400s(client: TestClient, row: list, words: list[str]) -> None:
    message = error_of(client.post("/v1/logits", json={"inputs": [row]}))
    assert all(w in message for w in words), message


def test_lm_logits_endpoint_matches_the_local_target(client: TestClient) -> None:
    x = POOL.inputs(IDS[:2])
    answer = client.post("/v1/logits", json={"inputs": x.tolist()})
    assert answer.status_code == 200
    expected = LocalTarget("lm-small", FP32).answer(POOL, IDS[:2]).as_float32()
    assert np.array_equal(bits(answer.json()["logits"]), bits(expected))


# -- chat, generation ---------------------------------------------------------------------------------


def test_chat_and_completions_give_the_same_first_token(client: TestClient) -> None:
    for probe in IDS[:2]:
        completion = ask(client, int(probe), logprobs=20).json()["choices"][0]["logprobs"]
        chat = ask_chat(client, int(probe), logprobs=True, top_logprobs=20).json()
        content = chat["choices"][0]["logprobs"]["content"][0]
        assert content["token"] == completion["tokens"][0]
        assert content["logprob"] == completion["token_logprobs"][0]
        assert [(a["token"], a["logprob"]) for a in content["top_logprobs"]] == list(
            completion["top_logprobs"][0].items()
        )
        assert all(a["bytes"] == list(a["token"].encode()) for a in content["top_logprobs"])
        assert chat["object"] == "chat.completion" and chat["choices"][0]["message"]["role"] == "assistant"
    # messages are joined without a template: split prompts are the same pool probe
    whole = prompt(int(IDS[0]))
    split = client.post(
        "/v1/chat/completions",
        json={
            "messages": [{"role": "system", "content": whole[:5]}, {"role": "user", "content": whole[5:]}],
            "max_tokens": 1,
            "temperature": 0,
        },
    ).json()
    assert split["choices"][0]["message"]["content"] == ask(client, int(IDS[0])).json()["choices"][0]["text"]


def test_greedy_generation_of_several_tokens(client: TestClient) -> None:
    body = ask(client, 3, max_tokens=3, logprobs=2).json()
    choice = body["choices"][0]
    assert len(choice["text"]) == 3 and choice["logprobs"]["tokens"] == list(choice["text"])
    assert len(choice["logprobs"]["top_logprobs"]) == 3 and choice["logprobs"]["text_offset"] == [16, 17, 18]
    assert choice["text"][0] == ask(client, 3).json()["choices"][0]["text"]
    assert body["usage"] == {"prompt_tokens": 16, "completion_tokens": 3, "total_tokens": 19}
    again = ask(client, 3, max_tokens=3).json()["choices"][0]["text"]
    assert again == choice["text"]  # greedy is deterministic
    sampled = [ask(client, 3, max_tokens=4, temperature=1.0, seed=5).json()["choices"][0]["text"] for _ in range(2)]
    assert sampled[0] == sampled[1] and len(sampled[0]) == 4  # a seed makes sampling repeatable


def test_short_prompts_run_with_static_batching() -> None:
    app = create_target_app("lm-small", Platform.parse("cpu:native/fp32/torch-eager/bs=8"))
    with TestClient(app) as c:
        for text in (T, T * 5, prompt(1)):
            response = c.post("/v1/completions", json={"prompt": text, "max_tokens": 2, "temperature": 0})
            assert response.status_code == 200, response.text
    assert set(app.state.runner.batch_sizes) == {8}  # every forward pass padded to the platform's batch


# -- dynamic batching ---------------------------------------------------------------------------------


async def _concurrently(app, requests: list[tuple[str, dict]]) -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://target") as c:
        return await asyncio.gather(*(c.post(path, json=payload) for path, payload in requests))


def test_dynamic_batching_runs_concurrent_requests_together() -> None:
    app = create_target_app("lm-small", FP32, dynamic_batching=True, max_batch=8, batch_window_ms=200)
    requests = [
        ("/v1/completions", {"prompt": prompt(int(p)), "max_tokens": 1, "temperature": 0, "logprobs": 5})
        for p in range(6)
    ]
    answers = asyncio.run(_concurrently(app, requests))
    assert [a.status_code for a in answers] == [200] * 6
    sizes = app.state.runner.batch_sizes
    assert max(sizes) > 1 and sum(sizes) == 6, sizes
    for answer in answers:
        top = answer.json()["choices"][0]["logprobs"]["top_logprobs"][0]
        assert len(top) == 5 and all(v <= 0 for v in top.values())
    # a second event loop (a restarted server) gets a batcher of its own
    again = asyncio.run(_concurrently(app, requests[:2]))
    assert [a.status_code for a in again] == [200, 200]


def test_dynamic_batching_mixed_lengths_and_a_bad_request_do_not_fail_batch_mates() -> None:
    app = create_target_app("lm-small", FP32, dynamic_batching=True, max_batch=8, batch_window_ms=200)
    requests = [
        ("/v1/completions", {"prompt": prompt(1), "max_tokens": 1, "temperature": 0}),
        ("/v1/completions", {"prompt": T * 3, "max_tokens": 1, "temperature": 0}),
        ("/v1/logits", {"inputs": [[600] * 16]}),
        ("/v1/completions", {"prompt": prompt(2), "max_tokens": 2, "temperature": 0}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": T}], "max_tokens": 1}),
    ]
    answers = asyncio.run(_concurrently(app, requests))
    assert [a.status_code for a in answers] == [200, 200, 400, 200, 200], [a.text for a in answers]
    assert max(app.state.runner.batch_sizes) > 1


def test_dynamic_batching_over_real_http_threads(apps: dict) -> None:
    import concurrent.futures

    app = create_target_app("lm-small", FP32, dynamic_batching=True, max_batch=8, batch_window_ms=150)
    with serve_asgi(app) as url:

        def one(p: int) -> int:
            return httpx.post(
                url + "/completions", json={"prompt": prompt(p), "max_tokens": 1, "logprobs": 1}, timeout=30
            ).status_code

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            codes = list(pool.map(one, range(6)))
    assert codes == [200] * 6
    assert max(app.state.runner.batch_sizes) > 1, app.state.runner.batch_sizes
    json.dumps(app.state.runner.batch_sizes)  # plain ints, reportable
