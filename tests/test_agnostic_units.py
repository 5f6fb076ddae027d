"""Model-agnostic audit, the pure parts: bitwise determinism, engine tells, answers read as sent, the budget's lock."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch

from hspi.audit.agnostic import precision_check
from hspi.audit.determinism import Observation, read_determinism
from hspi.audit.engine_tells import id_format, read_engine, tells_from
from hspi.audit.raw_answer import read_answer
from hspi.collector.targets.http_client import BudgetExhausted, QueryBudget
from hspi.features.tiers import log_softmax_f32

TEXTS = ("a", "a", "b", "c")
VALUES = (-0.5, -0.5, -1.25, -3.0)


def obs(label: str, context: str = "alone", values: tuple = VALUES, texts: tuple = TEXTS) -> Observation:
    return Observation(label, context, texts, values)  # type: ignore[arg-type]


def nudged(values: tuple, i: int) -> tuple:
    """The same values with one float32 moved by one ulp: a bitwise difference, nothing else."""
    arr = np.asarray(values, dtype=np.float32)
    arr[i] = np.nextafter(arr[i], np.float32(0))
    return tuple(float(v) for v in arr)


def test_identical_answers_read_deterministic() -> None:
    reading = read_determinism([obs("first"), obs("repeat"), obs("burst-1", "burst"), obs("burst-2", "burst")])
    assert reading.verdict == "deterministic"
    assert reading.probability == pytest.approx(5 / 6, abs=1e-4)
    assert reading.groups == [["first", "repeat", "burst-1", "burst-2"]]


def test_burst_that_differs_from_agreeing_alone_answers_is_batch_variant() -> None:
    other = nudged(VALUES, 2)
    reading = read_determinism(
        [obs("first"), obs("repeat"), obs("burst-1", "burst", other), obs("burst-2", "burst", other)]
    )
    assert reading.verdict == "batch-variant"
    assert reading.groups == [["first", "repeat"], ["burst-1", "burst-2"]]
    diff = reading.differences[0]
    assert diff["values_differ"] == 1 and diff["max_ulps"] == 1 and "texts_differ_at" not in diff


def test_all_answers_distinct_read_nondeterministic() -> None:
    answers = [obs(f"a{i}", "alone" if i < 2 else "burst", nudged(VALUES, i)) for i in range(4)]
    reading = read_determinism(answers)
    assert reading.verdict == "nondeterministic"
    assert len(reading.groups) == 4


def test_a_cold_first_answer_then_agreeing_repeats_is_a_cache_path() -> None:
    warm = nudged(VALUES, 3)
    reading = read_determinism([obs("first"), obs("repeat", values=warm), obs("burst-1", "burst", warm)])
    assert reading.verdict == "batch-variant" and reading.cache_path


def test_a_changed_token_text_is_a_difference() -> None:
    reading = read_determinism([obs("first"), obs("repeat", texts=("a", "a", "c", "b"))])
    assert reading.verdict == "nondeterministic"
    assert reading.differences[0]["texts_differ_at"] == [2, 3]


@pytest.mark.parametrize(
    "answers, needle",
    [
        ([], "0 answer(s)"),
        ([obs("first")], "1 answer(s)"),
        ([obs("first", values=()), obs("repeat", values=())], "text only"),
        ([obs("first", values=(float("nan"),) * 4), obs("repeat")], "not a finite number"),
    ],
)
def test_determinism_unknown_names_why(answers: list, needle: str) -> None:
    reading = read_determinism(answers)
    assert reading.verdict == "unknown" and needle in reading.reason


def completion_body(**extra: object) -> bytes:
    body = {
        "id": "cmpl-7",
        "object": "text_completion",
        "model": "m",
        "choices": [
            {
                "text": "x",
                "index": 0,
                "logprobs": {"tokens": ["x"], "token_logprobs": [-0.25], "top_logprobs": [{"y": -2.0, "x": -0.25}]},
                "finish_reason": "length",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
    body.update(extra)
    return json.dumps(body).encode()


def test_completion_read_as_sent_and_ranked() -> None:
    answer = read_answer(completion_body())
    assert answer.top == [("x", -0.25), ("y", -2.0)]
    assert answer.observation_texts() == ("x", "x", "y")
    assert answer.fields["usage_total"] == 4 and answer.fields["id"] == "cmpl-7"


@pytest.mark.parametrize(
    "body, field",
    [
        (b"<html>", "problem"),
        (b"[1, 2]", "problem"),
        (json.dumps({"choices": []}).encode(), "problem"),
        (json.dumps({"choices": [{"text": "x"}]}).encode(), "logprobs_problem"),
        (
            json.dumps(
                {"choices": [{"text": "x", "logprobs": {"tokens": ["x"], "top_logprobs": [{"x": "hi"}]}}]}
            ).encode(),
            "logprobs_problem",
        ),
    ],
)
def test_bad_bodies_never_raise(body: bytes, field: str) -> None:
    assert getattr(read_answer(body), field)


def test_chat_list_keeps_the_order_sent() -> None:
    body = {
        "choices": [
            {
                "message": {"content": "x"},
                "logprobs": {
                    "content": [
                        {
                            "token": "x",
                            "logprob": -1.0,
                            "top_logprobs": [{"token": "y", "logprob": -2.0}, {"token": "x", "logprob": -1.0}],
                        }
                    ]
                },
            }
        ]
    }
    answer = read_answer(json.dumps(body).encode(), "chat")
    assert answer.top == [("y", -2.0), ("x", -1.0)]  # unsorted as sent: the precision check will say so


def test_id_formats() -> None:
    assert id_format("cmpl-1733de0c-f7ce-458a-87b2-66fc60e6d3f4") == "cmpl-uuid"
    assert id_format("cmpl-12") == "cmpl-int"
    assert id_format("chatcmpl-0123456789abcdef0123") == "chatcmpl-hex"
    assert id_format(None) == "absent"


def llama_like() -> dict[str, str]:
    answer = read_answer(completion_body(id="cmpl-1733de0c-f7ce-458a-87b2-66fc60e6d3f4", model="/x/m-F16.gguf"))
    headers = {"server": "uvicorn", "openai-processing-ms": "8", "x-request-id": "0" * 32}
    models = (200, {}, b'{"object":"list","data":[{"id":"m","object":"model","owned_by":"me","permissions":[]}]}')
    error = (500, {}, b'{"error":{"message":"...","type":"internal_server_error","param":null,"code":null}}')
    return tells_from([(headers, answer)], models, error)


def test_engine_rules_name_llama_cpp_and_hspi_target() -> None:
    reading = read_engine(llama_like())
    assert reading.verdict == "llama.cpp" and reading.probability > 0.99
    answer = read_answer(completion_body(model="lm-small"))
    models = (200, {}, b'{"object":"list","data":[{"id":"lm-small","object":"model","owned_by":"hspi"}]}')
    error = (400, {}, b'{"error":{"message":"max_tokens: bad","type":"invalid_request_error"}}')
    reading = read_engine(tells_from([({"server": "uvicorn"}, answer)], models, error))
    assert reading.verdict == "hspi-target" and reading.probability > 0.99


def test_engine_without_known_tells_is_unknown() -> None:
    answer = read_answer(completion_body(id="cmpl-abcdefabcdefabcdefabcdefabcdefab"))
    models = (404, {}, b'{"detail":"Not Found"}')
    reading = read_engine(tells_from([({"server": "nginx"}, answer)], models, None))
    assert reading.verdict == "unknown" and "no tell" in reading.reason
    assert read_engine({}).verdict == "unknown"


def test_budget_holds_across_threads() -> None:
    budget = QueryBudget(50, 10_000)
    spent, refused = [], []
    lock = threading.Lock()

    def spend() -> None:
        for _ in range(20):
            try:
                reserved = budget.spend(3)
            except BudgetExhausted:
                with lock:
                    refused.append(1)
                continue
            budget.settle(reserved, 4)
            with lock:
                spent.append(1)

    threads = [threading.Thread(target=spend) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(spent) == 50 and budget.queries == 50 and len(refused) == 8 * 20 - 50
    assert budget.tokens <= budget.max_tokens


def test_seeded_prompts_are_plain_cjk_text_and_b_starts_elsewhere() -> None:
    from hspi.audit.agnostic import PROMPT_A, PROMPT_B, audit_prompts

    assert audit_prompts(None) == (PROMPT_A, PROMPT_B)
    for seed in range(50):
        a, b = audit_prompts(seed)
        assert all(0x4E00 <= ord(c) < 0x5000 for c in a + b) and 6 <= len(a) <= 12 and 6 <= len(b) <= 12
        assert a[0] != b[0]
    assert audit_prompts(3) == audit_prompts(3) != audit_prompts(4)


def test_precision_check_reports_fp8_with_the_group_probability() -> None:
    # lm-small-like fp8-e5m2 logits (top near 7.5, the 20th near 5): the two fp8 grids fit every answer
    # equally coarsely, so the check names the group "fp8" and its probability is the group's, not 0.5
    z = (torch.randn(6, 512, generator=torch.Generator().manual_seed(13)) * 2.5).to(torch.float8_e5m2).float()
    lp = -np.sort(-log_softmax_f32(z.numpy()), axis=1)[:, :20]
    check = precision_check([(f"answer-{i}", [float(v) for v in row], "") for i, row in enumerate(lp)], "topk20")
    assert check.verdict == "fp8", check.reason
    assert check.probability >= 0.95
    posterior = check.evidence["posterior"]
    assert check.probability == pytest.approx(posterior["fp8-e4m3"] + posterior["fp8-e5m2"], abs=1e-3)
