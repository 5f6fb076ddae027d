"""Black-box HTTP targets: the OpenAI-body parser, the budgeted client against real misbehaving
servers on 127.0.0.1, and `run_audit` ending cleanly (evidence kept, budget held) whatever they do."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reproducing import full_prompt, serving_platform
from servers import Reply, Request, serve_asgi, serve_handler

from hspi.audit import AuditSettings, run_audit
from hspi.collector.models import model_spec
from hspi.collector.probes import ProbeSet
from hspi.collector.target_server import create_target_app
from hspi.collector.targets.http_client import MAX_RESPONSE_BYTES, BudgetExhausted, QueryBudget, _retry_after
from hspi.collector.targets.json_logits import JSONLogitsTarget
from hspi.collector.targets.local import LocalTarget
from hspi.collector.targets.openai import OpenAICompatibleTarget, answers_from_tokens
from hspi.collector.targets.openai_parse import FirstToken, load_json, parse_chat_completion, parse_completion
from hspi.collector.vocabulary import decode, encode, token_id
from hspi.errors import ConfigError, TargetError

VOCAB = 512
PROMPT = np.arange(16, dtype=np.int64)  # any 16 token ids make a prompt
SECRET = "sk-test-0123456789abcdefSECRET"


def tok(i: int) -> str:
    return chr(0x4E00 + i)


def assert_target_error(exc: BaseException, *words: str) -> None:
    message = str(exc)
    assert isinstance(exc, TargetError), repr(exc)
    assert message.startswith("target-error:"), message
    assert "\n" not in message and "\r" not in message, message
    for word in words:
        assert word in message, (word, message)


def completion(top: dict[str, float] | None, *, token: str | None = None, logprob: float | None = None) -> dict:
    """A /v1/completions body for one generated token with these alternatives."""
    if top:
        best = max(top, key=lambda t: top[t])
        token = best if token is None else token
        logprob = top[best] if logprob is None else logprob
    logprobs = {
        "tokens": [token],
        "token_logprobs": [logprob],
        "top_logprobs": [top] if top else None,
        "text_offset": [16],
    }
    return {
        "id": "cmpl-1",
        "object": "text_completion",
        "model": "lm-small",
        "choices": [{"index": 0, "text": token, "logprobs": logprobs, "finish_reason": "length"}],
    }


def chat(top: list[tuple[str, float]] | None, *, token: str, logprob: float) -> dict:
    content = [
        {
            "token": token,
            "logprob": logprob,
            "bytes": list(token.encode()),
            "top_logprobs": [{"token": t, "logprob": v} for t, v in (top or [])],
        }
    ]
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "lm-small",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": token},
                "logprobs": {"content": content},
                "finish_reason": "length",
            }
        ],
    }


GOOD_TOP = {tok(i): -1.0 - 0.25 * i for i in range(20)}
GOOD = json.dumps(completion(GOOD_TOP)).encode()


def bits(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float32).view(np.uint32)


# -- the parser -----------------------------------------------------------------------------------


def test_parse_completion_ranks_alternatives_and_keeps_float32() -> None:
    shuffled = dict(reversed(list(GOOD_TOP.items())))
    answer = parse_completion(json.dumps(completion(shuffled)).encode())
    assert answer.text == tok(0)
    assert answer.logprob == np.float32(-1.0) and isinstance(answer.logprob, np.float32)
    assert [t for t, _ in answer.top] == [tok(i) for i in range(20)]
    assert all(isinstance(v, np.float32) for _, v in answer.top)


def test_parse_chat_completion_list_top_logprobs() -> None:
    top = [(tok(3), -2.5), (tok(1), -0.5), (tok(2), -1.5)]
    answer = parse_chat_completion(json.dumps(chat(top, token=tok(1), logprob=-0.5)).encode())
    assert answer.text == tok(1) and answer.logprob == np.float32(-0.5)
    assert answer.top == [(tok(1), np.float32(-0.5)), (tok(2), np.float32(-1.5)), (tok(3), np.float32(-2.5))]
    # the chat and completions forms of one answer parse to the same first token
    same = parse_completion(json.dumps(completion(dict(top))).encode())
    assert same == answer


@settings(max_examples=150, deadline=None)
@given(st.lists(st.floats(width=32, max_value=0.0, allow_nan=False, allow_infinity=False), min_size=1, max_size=20))
def test_float32_logprobs_round_trip_bit_exactly(values: list[float]) -> None:
    as32 = [np.float32(v) for v in values]
    top = {tok(i): float(v) for i, v in enumerate(as32)}  # what a float32 server writes: float(np.float32(x))
    answer = parse_completion(json.dumps(completion(top, token=tok(0), logprob=float(as32[0]))).encode())
    assert bits([answer.logprob]) == bits([as32[0]])
    got = dict(answer.top)
    assert all(bits([got[tok(i)]])[0] == bits([v])[0] for i, v in enumerate(as32))
    pairs = [(tok(i), float(v)) for i, v in enumerate(as32)]
    chat_answer = parse_chat_completion(json.dumps(chat(pairs, token=tok(0), logprob=float(as32[0]))).encode())
    assert dict(chat_answer.top) == got and bits([chat_answer.logprob]) == bits([as32[0]])


@settings(max_examples=150, deadline=None)
@given(st.floats(width=32, max_value=0.0, allow_nan=False, allow_infinity=False))
def test_shortest_float32_text_round_trips_too(value: float) -> None:
    """A server printing float32 with its shortest digits (e.g. -1.7707378) still gives the same bits."""
    x = np.float32(value)
    text = str(x)  # numpy prints a float32 with the fewest digits that identify it
    assert float(text) == float(np.float32(float(text))) or np.float32(float(text)) == x
    body = (
        f'{{"choices":[{{"text":"\u4e00","logprobs":{{"tokens":["\u4e00"],"token_logprobs":[{text}]}}}}]}}'
    ).encode()
    assert bits([parse_completion(body).logprob]) == bits([x])


def test_duplicate_token_texts_leave_the_row_incomplete() -> None:
    # two tokens that decode to one string: a JSON object keyed by text holds the key twice
    entries = ", ".join(f'"{tok(i)}": {-1.0 - i}' for i in range(19))
    body = (
        f'{{"choices":[{{"text":"{tok(0)}","logprobs":{{"tokens":["{tok(0)}"],"token_logprobs":[-1.0],'
        f'"top_logprobs":[{{{entries}, "{tok(5)}": -30.0}}]}}}}]}}'
    ).encode()
    answer = parse_completion(body)
    assert len(answer.top) == 19  # the last of each text survives
    assert dict(answer.top)[tok(5)] == np.float32(-30.0)
    rows = answers_from_tokens("lm-small", "pool", np.array([7]), "topk20", [answer])
    assert not rows.complete[0] and (rows.ids[0] == -1).all()
    # in the chat form the list keeps both: an id twice is no answer of this vocabulary either
    pairs = [(tok(i), -1.0 - i) for i in range(19)] + [(tok(5), -30.0)]
    answer = parse_chat_completion(json.dumps(chat(pairs, token=tok(0), logprob=-1.0)).encode())
    assert len(answer.top) == 20
    assert not answers_from_tokens("lm-small", "pool", np.array([7]), "topk20", [answer]).complete[0]
    assert answers_from_tokens("lm-small", "pool", np.array([7]), "topk20", [parse_completion(GOOD)]).complete[0]


def test_empty_and_foreign_token_texts() -> None:
    top = dict(GOOD_TOP)
    top.pop(tok(19))
    top[""] = -50.0
    answer = parse_completion(json.dumps(completion(top)).encode())
    assert ("", np.float32(-50.0)) in answer.top
    assert not answers_from_tokens("lm-small", "pool", np.array([1]), "topk20", [answer]).complete[0]
    # an empty generated token is a token with an empty text
    empty = parse_completion(json.dumps(completion(None, token="", logprob=-0.5)).encode())
    assert empty.text == "" and empty.logprob == np.float32(-0.5) and empty.top is None
    assert not answers_from_tokens("lm-small", "pool", np.array([1]), "top1", [empty]).complete[0]
    foreign = parse_completion(json.dumps(completion({"a": -0.1, tok(1): -3.0, tok(2): -4.0})).encode())
    assert not answers_from_tokens("lm-small", "pool", np.array([1]), "topk5", [foreign]).complete[0]
    ties = parse_completion(
        json.dumps(completion({tok(9): -1.0, tok(3): -1.0, tok(4): -2.0, tok(5): -3.0, tok(6): -4.0})).encode()
    )
    row = answers_from_tokens("lm-small", "pool", np.array([1]), "topk5", [ties])
    assert row.complete[0] and list(row.ids[0]) == [3, 9, 4, 5, 6]  # equal values: the lower id first


@pytest.mark.parametrize(
    "body, expected",
    [
        ({"choices": [{"text": tok(4)}]}, FirstToken(tok(4), None, None)),
        ({"choices": [{"text": tok(4), "logprobs": None}]}, FirstToken(tok(4), None, None)),
        ({"choices": [{"text": "", "logprobs": None}]}, FirstToken(None, None, None)),
        ({"choices": [{"text": tok(4), "logprobs": {"tokens": [tok(4)]}}]}, FirstToken(tok(4), None, None)),
        (
            {
                "choices": [
                    {"text": tok(4), "logprobs": {"tokens": [tok(4)], "token_logprobs": [-1.5], "top_logprobs": None}}
                ]
            },
            FirstToken(tok(4), np.float32(-1.5), None),
        ),
        (
            {
                "choices": [
                    {"text": tok(4), "logprobs": {"tokens": [tok(4)], "token_logprobs": [-1.5], "top_logprobs": [None]}}
                ]
            },
            FirstToken(tok(4), np.float32(-1.5), None),
        ),
        (
            {"choices": [{"text": "", "logprobs": {"tokens": [], "token_logprobs": [], "top_logprobs": []}}]},
            FirstToken(None, None, None),
        ),
    ],
)
def test_missing_and_null_fields_mean_less_shown(body: dict, expected: FirstToken) -> None:
    assert parse_completion(json.dumps(body).encode()) == expected


@pytest.mark.parametrize(
    "body, expected",
    [
        ({"choices": [{"message": {"role": "assistant", "content": tok(2)}}]}, FirstToken(tok(2), None, None)),
        (
            {"choices": [{"message": {"role": "assistant", "content": tok(2)}, "logprobs": None}]},
            FirstToken(tok(2), None, None),
        ),
        (
            {"choices": [{"message": {"role": "assistant", "content": tok(2)}, "logprobs": {"content": None}}]},
            FirstToken(tok(2), None, None),
        ),
        ({"choices": [{"message": None, "logprobs": {"content": []}}]}, FirstToken(None, None, None)),
        (
            {
                "choices": [
                    {
                        "message": {"content": tok(2)},
                        "logprobs": {"content": [{"token": tok(2), "logprob": -0.25, "top_logprobs": []}]},
                    }
                ]
            },
            FirstToken(tok(2), np.float32(-0.25), None),
        ),
    ],
)
def test_chat_missing_and_null_fields(body: dict, expected: FirstToken) -> None:
    assert parse_chat_completion(json.dumps(body).encode()) == expected


def _raw(logprob_text: str) -> bytes:
    return (
        f'{{"choices":[{{"text":"\u4e00","logprobs":{{"tokens":["\u4e00"],"token_logprobs":[{logprob_text}],'
        f'"top_logprobs":[{{"\u4e00": {logprob_text}}}]}}}}]}}'
    ).encode()


BAD_BODIES = {
    "nan": (_raw("NaN"), ["NaN", "not a number"]),
    "infinity": (_raw("-Infinity"), ["Infinity"]),
    "overflow": (_raw("-1e400"), ["not finite"]),
    "huge-int": (_raw("-" + "9" * 400), ["not finite"]),
    "positive": (_raw("0.5"), ["at most 0"]),
    "null-logprob": (_raw("null"), ["None", "not a number"]),
    "string-logprob": (_raw('"-1.0"'), ["not a number"]),
    "bool-logprob": (_raw("true"), ["not a number"]),
    "html": (b"<!DOCTYPE html>\n<html><body><h1>502 Bad Gateway</h1></body></html>", ["not JSON", "<!DOCTYPE"]),
    "truncated": (GOOD[: len(GOOD) // 2], ["not JSON"]),
    "empty": (b"", ["not JSON", "0 bytes"]),
    "binary": (b"\xff\xfe\x00garbage", ["not JSON"]),
    "list": (b"[1, 2, 3]", ["list", "not an object"]),
    "number": (b"42", ["int", "not an object"]),
    "string": (b'"hello"', ["str", "not an object"]),
    "null": (b"null", ["NoneType", "not an object"]),
    "error-object": (b'{"error": {"message": "model overloaded", "type": "server_error"}}', ["model overloaded"]),
    "error-string": (b'{"error": "quota exceeded"}', ["quota exceeded"]),
    "error-multiline": (b'{"error": {"message": "Traceback:\\n  File x\\r\\n boom"}}', ["Traceback: File x boom"]),
    "no-choices": (b'{"choices": []}', ["no choices"]),
    "choice-not-object": (b'{"choices": [3]}', ["no choices"]),
    "text-not-string": (b'{"choices": [{"text": 5}]}', ["text", "not a string"]),
    "tokens-not-list": (
        b'{"choices": [{"logprobs": {"tokens": {"a": 1}, "token_logprobs": [-1]}}]}',
        ["tokens", "not a list"],
    ),
    "token-logprobs-not-list": (
        b'{"choices": [{"logprobs": {"tokens": ["a"], "token_logprobs": {"a": 1}}}]}',
        ["token_logprobs", "not a list"],
    ),
    "token-not-string": (b'{"choices": [{"logprobs": {"tokens": [7], "token_logprobs": [-1]}}]}', ["not a string"]),
    "top-not-object": (
        b'{"choices": [{"logprobs": {"tokens": ["a"], "token_logprobs": [-1], "top_logprobs": [[1]]}}]}',
        ["top_logprobs[0]", "not an object"],
    ),
}


@pytest.mark.parametrize("name", sorted(BAD_BODIES))
def test_bad_completion_bodies_are_one_line_target_errors(name: str) -> None:
    body, words = BAD_BODIES[name]
    with pytest.raises(TargetError) as info:
        parse_completion(body)
    assert_target_error(info.value, *words)


@pytest.mark.parametrize(
    "body, words",
    [
        (b'{"choices":[{"message":{},"logprobs":{"content":[{"token":"a","logprob":NaN}]}}]}', ["NaN"]),
        (b'{"choices":[{"message":{},"logprobs":{"content":[{"token":"a","logprob":0.001}]}}]}', ["at most 0"]),
        (b'{"choices":[{"message":{},"logprobs":{"content":[{"token":"a","logprob":null}]}}]}', ["not a number"]),
        (b'{"choices":[{"message":{},"logprobs":{"content":[{"logprob":-1}]}}]}', ["no token string"]),
        (
            b'{"choices":[{"message":{},"logprobs":{"content":[{"token":"a","logprob":-1,"top_logprobs":[{"logprob":-1}]}]}}]}',
            ["top_logprobs[0]", "no token string"],
        ),
        (
            b'{"choices":[{"message":{},"logprobs":{"content":[{"token":"a","logprob":-1,"top_logprobs":[{"token":"a","logprob":1e999}]}]}}]}',
            ["not finite"],
        ),
        (b"<html>oops</html>", ["not JSON"]),
        (b'{"error": {"message": "bad request"}}', ["bad request"]),
    ],
)
def test_bad_chat_bodies_are_one_line_target_errors(body: bytes, words: list[str]) -> None:
    with pytest.raises(TargetError) as info:
        parse_chat_completion(body)
    assert_target_error(info.value, *words)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)


def _maybe(sane: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(sane, JSON_VALUES)


LOGPROB = st.floats(max_value=0.0, allow_nan=False, allow_infinity=False)


@st.composite
def completion_like(draw: st.DrawFn) -> bytes:
    top = draw(_maybe(st.dictionaries(st.sampled_from([tok(i) for i in range(30)] + ["", "a"]), LOGPROB, max_size=6)))
    logprobs = draw(
        _maybe(
            st.fixed_dictionaries(
                {
                    "tokens": _maybe(st.lists(st.sampled_from([tok(0), tok(1), ""]), max_size=2)),
                    "token_logprobs": _maybe(st.lists(LOGPROB, max_size=2)),
                    "top_logprobs": _maybe(st.lists(st.just(top), max_size=2)),
                }
            )
        )
    )
    choice = draw(_maybe(st.fixed_dictionaries({"text": _maybe(st.just(tok(0))), "logprobs": st.just(logprobs)})))
    payload = draw(_maybe(st.fixed_dictionaries({"choices": _maybe(st.lists(st.just(choice), max_size=2))})))
    return json.dumps(payload).encode()


@st.composite
def chat_like(draw: st.DrawFn) -> bytes:
    alt = _maybe(
        st.fixed_dictionaries({"token": _maybe(st.sampled_from([tok(0), tok(1), ""])), "logprob": _maybe(LOGPROB)})
    )
    entry = draw(
        _maybe(
            st.fixed_dictionaries(
                {
                    "token": _maybe(st.just(tok(0))),
                    "logprob": _maybe(LOGPROB),
                    "top_logprobs": _maybe(st.lists(alt, max_size=3)),
                }
            )
        )
    )
    choice = draw(
        _maybe(
            st.fixed_dictionaries(
                {
                    "message": _maybe(st.fixed_dictionaries({"content": _maybe(st.just(tok(0)))})),
                    "logprobs": _maybe(
                        st.fixed_dictionaries({"content": _maybe(st.lists(st.just(entry), max_size=2))})
                    ),
                }
            )
        )
    )
    return json.dumps({"choices": draw(_maybe(st.lists(st.just(choice), max_size=2)))}).encode()


def _parses_or_target_error(parse, body: bytes) -> None:
    try:
        answer = parse(body)
    except TargetError as exc:
        assert_target_error(exc)
        return
    assert isinstance(answer, FirstToken)
    if answer.logprob is not None:
        assert isinstance(answer.logprob, np.float32) and np.isfinite(answer.logprob) and answer.logprob <= 0
    for text, value in answer.top or []:
        assert isinstance(text, str) and isinstance(value, np.float32) and value <= 0


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(completion_like())
def test_any_completion_shaped_json_parses_or_is_a_target_error(body: bytes) -> None:
    _parses_or_target_error(parse_completion, body)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chat_like())
def test_any_chat_shaped_json_parses_or_is_a_target_error(body: bytes) -> None:
    _parses_or_target_error(parse_chat_completion, body)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64) | JSON_VALUES.map(lambda v: json.dumps(v).encode()))
def test_any_bytes_parse_or_are_a_target_error(body: bytes) -> None:
    _parses_or_target_error(parse_completion, body)
    _parses_or_target_error(parse_chat_completion, body)


def test_load_json_rejects_constants() -> None:
    assert load_json(b'{"a": -1.5}') == {"a": -1.5}
    for constant in (b"NaN", b"Infinity", b"-Infinity"):
        with pytest.raises(TargetError) as info:
            load_json(b'{"a": %s}' % constant)
        assert_target_error(info.value, constant.decode().lstrip("-"))


def test_vocabulary_round_trip() -> None:
    ids = np.array([0, 1, 511, 7])
    assert np.array_equal(encode(decode(ids, VOCAB), VOCAB), ids)
    assert token_id(tok(511), VOCAB) == 511 and token_id(tok(512), VOCAB) is None and token_id("", VOCAB) is None
    with pytest.raises(ConfigError, match="U\\+0061"):
        encode("a", VOCAB)


def test_budget_is_a_hard_cap() -> None:
    budget = QueryBudget(2, 40)
    budget.spend(17)
    budget.spend(17)
    with pytest.raises(BudgetExhausted):
        budget.spend(1)
    assert (budget.queries, budget.tokens) == (2, 34)
    tokens = QueryBudget(5, 20)
    tokens.spend(17)
    with pytest.raises(BudgetExhausted):
        tokens.spend(17)
    assert (tokens.queries, tokens.tokens) == (1, 17)
    for bad in ((0, 10), (10, 0)):
        with pytest.raises(ConfigError):
            QueryBudget(*bad)


def test_retry_after_values() -> None:
    assert _retry_after("1", 0.2) == 1.0
    assert _retry_after("2.5", 0.2) == 2.5
    assert _retry_after("-3", 0.2) == 0.0
    assert _retry_after("99999", 0.2) == 30.0  # capped
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 0.2) == 0.2
    assert _retry_after(None, 0.4) == 0.4


@pytest.mark.parametrize("url", ["ftp://x/v1", "http://[::1/v1", "http:///v1", "127.0.0.1:8000/v1"])
def test_bad_endpoints_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError):
        OpenAICompatibleTarget(url, "lm-small", QueryBudget(1, 100))
    with pytest.raises(ConfigError):
        JSONLogitsTarget(url, "mlp", QueryBudget(1, 100))


# -- misbehaving servers ----------------------------------------------------------------------------


def good(req: Request, reply: Reply) -> None:
    reply.send(200, GOOD)


def html(req: Request, reply: Reply) -> None:
    reply.send(200, "<!DOCTYPE html>\n<html><body>Service Unavailable</body></html>", content_type="text/html")


def truncated(req: Request, reply: Reply) -> None:
    reply.send(200, GOOD[: len(GOOD) // 2])


def nan(req: Request, reply: Reply) -> None:
    reply.send(200, GOOD.replace(b"-1.0,", b"NaN,", 1))


def positive(req: Request, reply: Reply) -> None:
    reply.send(200, json.dumps(completion({tok(0): 0.75, tok(1): -1.0})))


def no_tokens(req: Request, reply: Reply) -> None:
    reply.send(
        200,
        {
            "choices": [
                {
                    "index": 0,
                    "text": "",
                    "finish_reason": "length",
                    "logprobs": {"tokens": [], "token_logprobs": [], "top_logprobs": []},
                }
            ]
        },
    )


def always_500(req: Request, reply: Reply) -> None:
    reply.send(500, {"error": {"message": "internal overload", "type": "server_error"}})


def always_429(req: Request, reply: Reply) -> None:
    reply.send(429, {"error": {"message": "rate limited"}}, headers={"Retry-After": "0"})


def fail_twice_then_good(req: Request, reply: Reply) -> None:
    if reply.index < 2:
        reply.send(500 + reply.index * 2, "<html>upstream error</html>", content_type="text/html")
    else:
        good(req, reply)


def rate_limited_once(req: Request, reply: Reply) -> None:
    if reply.index == 0:
        reply.send(429, {"error": {"message": "slow down"}}, headers={"Retry-After": "1"})
    else:
        good(req, reply)


def huge(req: Request, reply: Reply) -> None:
    size = 100_000_000
    reply.start(200, length=size)
    chunk = b" " * 65536
    sent = 0
    while sent < size and not reply.state.stop.is_set():
        reply.write(chunk)
        sent += len(chunk)


def silent(req: Request, reply: Reply) -> None:
    reply.stall()


def trickle_body(req: Request, reply: Reply) -> None:
    reply.start(200, length=1_000_000)
    while not reply.state.stop.is_set():
        reply.write(b" ")
        time.sleep(0.2)


def trickle_everything(req: Request, reply: Reply) -> None:
    """One byte per 0.2 s from the status line on: the headers never end."""
    for byte in b"HTTP/1.1 200 OK\r\nX-Padding: " + b"a" * 10_000:
        if reply.state.stop.is_set():
            return
        reply.write(bytes([byte]))
        time.sleep(0.2)


def echo_key(req: Request, reply: Reply) -> None:
    auth = req.headers.get("authorization", "")
    reply.send(401, {"error": {"message": f"Incorrect API key provided: {auth}"}})


TIMEOUT = 0.3  # longer than the trickle's 0.2 s gaps: only the overall deadline stops a trickle


def target(url: str, budget: QueryBudget, **kwargs) -> OpenAICompatibleTarget:
    kwargs.setdefault("timeout_s", TIMEOUT)
    kwargs.setdefault("backoff_s", 0.05)
    return OpenAICompatibleTarget(url, "lm-small", budget, **kwargs)


# behaviour, words in the error, attempts billed (retries=2), seconds at most
FAILURES = {
    "html": (html, ["not JSON", "<!DOCTYPE"], 1, 2.0),
    "truncated": (truncated, ["not JSON"], 1, 2.0),
    "nan": (nan, ["NaN"], 1, 2.0),
    "positive": (positive, ["at most 0"], 1, 2.0),
    "always-500": (always_500, ["HTTP 500", "internal overload", "after 3 attempts"], 3, 2.0),
    "always-429": (always_429, ["HTTP 429", "rate limited", "after 3 attempts"], 3, 2.0),
    "huge": (huge, [f"more than {MAX_RESPONSE_BYTES} bytes"], 1, 5.0),
    "silent": (silent, [f"no answer within {TIMEOUT:g}s", "after 3 attempts"], 3, 3 * TIMEOUT + 0.15 + 1.0),
    "trickle-body": (trickle_body, [f"no answer within {TIMEOUT:g}s", "after 3 attempts"], 3, 3 * TIMEOUT + 0.15 + 1.0),
    "trickle-headers": (trickle_everything, [f"no answer within {TIMEOUT:g}s"], 3, 3 * TIMEOUT + 0.15 + 1.0),
}


@pytest.mark.parametrize("name", sorted(FAILURES))
def test_misbehaving_server_gives_a_named_target_error(name: str) -> None:
    behaviour, words, attempts, seconds = FAILURES[name]
    budget = QueryBudget(10, 1000)
    with serve_handler(behaviour) as (url, seen), target(url, budget, retries=2) as t:
        started = time.monotonic()
        with pytest.raises(TargetError) as info:
            t.first_token(PROMPT, 20)
        elapsed = time.monotonic() - started
        assert_target_error(info.value, *words)
        assert budget.queries == attempts == seen.count
        assert budget.tokens == attempts * 17
        assert elapsed < seconds, elapsed
        if name == "huge":  # stopped at the cap, not after 100 MB
            assert seen.bytes_sent < 40_000_000, seen.bytes_sent
        if name == "silent":
            assert elapsed >= 3 * TIMEOUT * 0.9


def test_no_server_listening_is_a_connection_error() -> None:
    with serve_handler(good) as (url, _):
        pass  # the port is free again
    budget = QueryBudget(5, 1000)
    with pytest.raises(TargetError) as info:
        target(url, budget, retries=1).first_token(PROMPT, 20)
    assert_target_error(info.value, "connection failed", "after 2 attempts")
    assert budget.queries == 2


def test_no_tokens_at_any_tier_is_a_target_error() -> None:
    budget = QueryBudget(10, 1000)
    with serve_handler(no_tokens) as (url, seen), target(url, budget) as t:
        assert t.first_token(PROMPT, 20) == FirstToken(None, None, None)
        with pytest.raises(TargetError) as info:
            t.detect_tier(PROMPT)
    assert_target_error(info.value, "no token")
    assert budget.queries == seen.count == 5  # one probe, then 20, 5, 0 and text
    assert [r.json().get("logprobs") for r in seen.requests[1:]] == [20, 5, 0, None]


def test_two_failures_then_success_bills_every_attempt() -> None:
    budget = QueryBudget(10, 1000)
    with serve_handler(fail_twice_then_good) as (url, seen), target(url, budget, retries=2) as t:
        answer = t.first_token(PROMPT, 20)
    assert answer == parse_completion(GOOD)
    assert budget.queries == seen.count == 3 and budget.tokens == 3 * 17


def test_retries_stop_at_the_budget() -> None:
    budget = QueryBudget(2, 1000)
    with serve_handler(fail_twice_then_good) as (url, seen), target(url, budget, retries=5) as t:
        with pytest.raises(BudgetExhausted):
            t.first_token(PROMPT, 20)
    assert budget.queries == seen.count == 2  # the third attempt was never sent


def test_429_honours_retry_after() -> None:
    budget = QueryBudget(10, 1000)
    with serve_handler(rate_limited_once) as (url, seen), target(url, budget, retries=2, backoff_s=0.01) as t:
        started = time.monotonic()
        answer = t.first_token(PROMPT, 20)
        elapsed = time.monotonic() - started
    assert answer.text == tok(0)
    assert 0.95 <= elapsed < 2.5, elapsed
    assert budget.queries == seen.count == 2


def test_a_persistent_429_does_not_walk_down_the_tiers() -> None:
    budget = QueryBudget(20, 1000)
    with serve_handler(always_429) as (url, seen), target(url, budget, retries=1) as t:
        with pytest.raises(TargetError) as info:
            t.detect_tier(PROMPT)
    assert_target_error(info.value, "HTTP 429")
    assert budget.queries == seen.count == 2  # not 2 per tier


def test_api_key_only_in_the_authorization_header() -> None:
    budget = QueryBudget(10, 1000)
    with serve_handler(echo_key) as (url, seen):
        t = target(url, budget, api_key=SECRET)
        with pytest.raises(TargetError) as info:
            t.first_token(PROMPT, 20)
        t.close()
    request = seen.requests[0]
    assert request.headers["authorization"] == f"Bearer {SECRET}"
    assert SECRET not in request.path and SECRET.encode() not in request.body
    assert_target_error(info.value, "HTTP 401", "Incorrect API key")
    for text in (str(info.value), repr(info.value), repr(t), repr(t.http), str(t.__dict__), str(budget)):
        assert SECRET not in text, text
    chained = info.value.__cause__ or info.value.__context__
    assert chained is None or SECRET not in str(chained)


def test_api_key_echoed_in_a_200_body_is_redacted() -> None:
    def echo_in_html(req: Request, reply: Reply) -> None:
        reply.send(200, f"<p>{req.headers['authorization']}</p>", content_type="text/html")

    def echo_in_error(req: Request, reply: Reply) -> None:
        reply.send(200, {"error": {"message": f"key {req.headers['authorization']} has no quota"}})

    for behaviour in (echo_in_html, echo_in_error):
        with serve_handler(behaviour) as (url, _), target(url, QueryBudget(5, 1000), api_key=SECRET) as t:
            with pytest.raises(TargetError) as info:
                t.first_token(PROMPT, 20)
        assert_target_error(info.value)
        assert SECRET not in str(info.value) and SECRET[:12] not in str(info.value)


def test_api_key_absent_from_timeouts_and_transport_errors() -> None:
    with serve_handler(silent) as (url, _):
        t = target(url, QueryBudget(5, 1000), api_key=SECRET, retries=0, timeout_s=0.3)
        with pytest.raises(TargetError) as info:
            t.first_token(PROMPT, 20)
        t.close()
    assert SECRET not in str(info.value) and SECRET not in repr(info.value)
    chain, exc = [], info.value
    while exc is not None:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    assert all(SECRET not in str(e) and SECRET not in repr(e) for e in chain)


# -- through run_audit ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_server() -> str:
    with serve_asgi(create_target_app("lm-small", serving_platform("lm-small"))) as url:
        for prompt in (full_prompt(),):  # warm-up: a full-length prompt, which every served platform answers
            assert (
                httpx.post(url + "/completions", json={"prompt": prompt, "max_tokens": 1}, timeout=60).status_code
                == 200
            )
        yield url


def audit_settings(url: str, **kwargs) -> AuditSettings:
    base = dict(
        endpoint=url, model="lm-small", claim={"dtype": "fp32"}, budget_queries=8, timeout_s=10.0, retries=2, seed=0
    )
    base.update(kwargs)
    return AuditSettings(**base)


AUDIT_FAILURES = [
    "html",
    "truncated",
    "nan",
    "positive",
    "always-500",
    "huge",
    "silent",
    "trickle-body",
    "trickle-headers",
]


@pytest.mark.parametrize("name", AUDIT_FAILURES)
def test_audit_of_a_misbehaving_server_ends_with_target_error(name: str, tmp_path: Path) -> None:
    behaviour, words, attempts, seconds = FAILURES[name]
    evidence = tmp_path / "evidence.jsonl"
    with serve_handler(behaviour) as (url, seen):
        started = time.monotonic()
        report = run_audit(
            audit_settings(url, budget_queries=6, timeout_s=TIMEOUT, retries=1), api_key=SECRET, evidence_path=evidence
        )
        elapsed = time.monotonic() - started
    attempts = min(attempts, 2)  # retries=1
    words = [w.replace("after 3 attempts", "after 2 attempts") for w in words]
    assert report.stop == "target-error", report.reason
    assert report.reason.startswith("target-error:") and "\n" not in report.reason
    assert all(w in report.reason for w in words), report.reason
    assert report.status == "no-evidence" and report.verdict == "inconclusive"
    assert report.queries == seen.count == attempts <= report.budget_queries
    assert report.evidence == [] and evidence.read_text() == ""
    assert elapsed < seconds + 3.0
    assert SECRET not in report.model_dump_json()


def test_audit_of_a_server_that_never_gives_tokens(tmp_path: Path) -> None:
    with serve_handler(no_tokens) as (url, seen):
        report = run_audit(audit_settings(url, budget_queries=6))
    assert report.stop == "target-error" and "no token" in report.reason
    assert report.queries == seen.count == 4 <= 6


def test_audit_budget_holds_when_retries_would_exceed_it() -> None:
    with serve_handler(always_500) as (url, seen):
        report = run_audit(audit_settings(url, budget_queries=2))
    assert report.stop == "budget" and report.queries == seen.count == 2


def proxy_then(base: str, n_good: int, bad):
    """Forward the first `n_good` requests to a real target server, then misbehave."""

    def behaviour(req: Request, reply: Reply) -> None:
        if reply.index < n_good:
            answer = httpx.post(
                base + req.path.removeprefix("/v1"),
                content=req.body,
                headers={"content-type": "application/json"},
                timeout=30,
            )
            reply.send(answer.status_code, answer.content)
        else:
            bad(req, reply)

    return behaviour


def test_audit_keeps_evidence_when_the_server_turns_bad(good_server: str, tmp_path: Path) -> None:
    evidence = tmp_path / "evidence.jsonl"
    with serve_handler(proxy_then(good_server, 3, html)) as (url, seen):
        report = run_audit(
            audit_settings(url, budget_queries=10, order="random", min_answers=20), evidence_path=evidence
        )
    assert report.stop == "target-error" and report.reason.startswith("target-error:")
    assert "not JSON" in report.reason
    assert report.tier == "topk20" and report.queries == seen.count == 4
    assert len(report.evidence) == 3 and all(r.complete for r in report.evidence)
    assert all(len(r.ids) == 20 and len(r.values) == 20 for r in report.evidence)
    lines = [json.loads(line) for line in evidence.read_text().splitlines()]
    assert len(lines) == 3 and all(line["complete"] for line in lines)
    assert [line["probe_id"] for line in lines] == [r.probe_id for r in report.evidence]
    assert [line["values"] for line in lines] == [r.values for r in report.evidence]
    assert report.status in ("match", "unbounded", "unknown") and report.answers_used == 3
    assert report.verdict != "consistent"  # an audit cut short confirms nothing
    assert report.heads["dtype"].guesses[0].label == "fp32"


def test_audit_survives_retries_and_bills_them(good_server: str) -> None:
    with serve_handler(_flaky(good_server)) as (url, seen):
        report = run_audit(audit_settings(url, budget_queries=5, order="random", min_answers=50))
    assert report.stop == "budget"
    assert report.queries == seen.count == 5
    assert len(report.evidence) < 5  # some queries were spent on retries
    assert all(r.complete for r in report.evidence)


def _flaky(base: str):
    """Every other request fails with a 503: each failure costs a query."""
    forward = proxy_then(base, 10**9, None)

    def behaviour(req: Request, reply: Reply) -> None:
        if reply.index % 2 == 0:
            reply.send(503, {"error": {"message": "try again"}})
        else:
            forward(req, reply)

    return behaviour


@pytest.mark.parametrize("budget", [1, 2, 5])
def test_audit_never_exceeds_its_budget(good_server: str, budget: int) -> None:
    report = run_audit(audit_settings(good_server, budget_queries=budget, order="random", min_answers=50))
    assert report.stop == "budget"
    assert report.queries == budget == report.budget_queries
    assert report.tokens <= report.budget_tokens == budget * 17
    assert len(report.evidence) == budget and all(r.complete for r in report.evidence)


def test_audit_token_budget_binds_before_the_query_budget(good_server: str) -> None:
    report = run_audit(audit_settings(good_server, budget_queries=5, budget_tokens=40, order="random", min_answers=50))
    assert report.stop == "budget" and report.queries == 2 and report.tokens == 34 <= 40


def test_audit_of_a_good_server_is_consistent(good_server: str) -> None:
    report = run_audit(audit_settings(good_server, budget_queries=128))
    # the claimed head is decided by its own bound; the class (~139 answers at top-20) is out of reach of 128
    assert report.stop == "bound-out-of-reach" and report.tier == "topk20"
    assert (
        report.queries <= 128
        and report.verdict == "consistent"
        and report.evidence_bound is not None
        and report.evidence_bound.heads["dtype"].met
        and not report.evidence_bound.met
    )
    assert report.heads["dtype"].guesses[0].label == "fp32"


@pytest.mark.parametrize("order", ["split", "random"])
def test_audit_never_asks_the_probes_it_must_avoid(good_server: str, order: str) -> None:
    avoid = list(range(0, 1000, 2))  # every even pool probe
    report = run_audit(audit_settings(good_server, budget_queries=12, order=order, min_answers=50, avoid_probes=avoid))
    asked = [r.probe_id for r in report.evidence]
    assert asked and all(p % 2 == 1 for p in asked)
    # fifty answers wanted, twelve allowed: either order spends the budget (split order verifies the
    # leader once the candidates are settled) without ever asking an even probe
    assert len(asked) == 12 and report.stop == "budget"


def test_audit_through_the_chat_api(good_server: str) -> None:
    report = run_audit(audit_settings(good_server, budget_queries=128, api="chat"))
    assert report.tier == "topk20" and report.queries <= 128 and report.verdict == "consistent"


# -- JSON logits targets ---------------------------------------------------------------------------


def test_json_logits_target_is_bit_exact_and_budgeted() -> None:
    spec = model_spec("mlp")
    pool = ProbeSet(spec, "pool", 1000)
    ids = np.array([0, 5, 17])
    with serve_asgi(create_target_app("mlp", serving_platform("mlp"))) as url:
        budget = QueryBudget(3, 10_000)
        t = JSONLogitsTarget(url + "/logits", "mlp", budget, timeout_s=5.0)
        got = t.answer(pool, ids)
        with pytest.raises(BudgetExhausted):
            t.answer(pool, ids[:1])
        t.close()
        report = run_audit(AuditSettings(endpoint=url + "/logits", model="mlp", budget_queries=3, seed=0))
    expected = LocalTarget("mlp", serving_platform("mlp")).answer(pool, ids)
    assert np.array_equal(bits(got.as_float32()), bits(expected.as_float32()))
    assert budget.queries == 3 and budget.tokens == 3 * 64
    assert report.tier == "logits" and report.queries <= 3 and report.stop != "target-error"


@pytest.mark.parametrize(
    "answer, words",
    [
        ({"logits": [[0.0] * 10]}, ["expected 128", "10 values"]),
        ({"logits": [[0.0] * 128, [0.0] * 128]}, ["one row"]),
        ({"outputs": [[0.0] * 128]}, ["no 'logits'"]),
        ({"logits": [[None] * 128]}, ["expected 128 numeric"]),
        ({"logits": [[1e39] * 128]}, ["not finite"]),
        ([1, 2], ["no 'logits'"]),
    ],
)
def test_json_logits_target_rejects_bad_answers(answer, words: list[str]) -> None:
    pool = ProbeSet(model_spec("mlp"), "pool", 1000)
    with serve_handler(lambda req, reply: reply.send(200, answer)) as (url, _):
        with pytest.raises(TargetError) as info:
            JSONLogitsTarget(url, "mlp", QueryBudget(3, 10_000), timeout_s=2.0).answer(pool, np.array([0]))
    assert_target_error(info.value, *words)
