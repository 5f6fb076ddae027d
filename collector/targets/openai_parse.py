"""Parse OpenAI-compatible completion bodies into the first generated token and its logprobs.

Pure functions over bytes, so every quirk real servers show can be tested without a server.
Log-probabilities stay exact: JSON numbers parse to float64 (correctly rounded), and a server that
wrote a float32 with enough digits round-trips to the same float32.  Anything that is not a valid
answer raises `TargetError` with a one-line reason that starts with "target-error:".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from hspi.errors import TargetError


@dataclass(frozen=True)
class FirstToken:
    """The first generated token as a server reported it.

    `top` lists (token text, logprob) best first, duplicates kept when the server sent a list, the
    last of each text when it sent an object keyed by text.  None where the server gave no logprobs.
    """

    text: str | None  # None: the server generated no token
    logprob: np.float32 | None
    top: list[tuple[str, np.float32]] | None
    usage: Usage | None = None  # what the server says it billed, where it says


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int | None
    total_tokens: int | None


def parse_usage(payload: Any) -> Usage | None:
    """The `usage` object of a response, where it holds non-negative integers (anything else is ignored)."""
    usage = payload.get("usage") if isinstance(payload, dict) else None
    if not isinstance(usage, dict):
        return None

    def count(key: str) -> int | None:
        value = usage.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None

    prompt, total = count("prompt_tokens"), count("total_tokens")
    if total is None and prompt is not None and count("completion_tokens") is not None:
        total = prompt + (count("completion_tokens") or 0)
    return Usage(prompt, total) if prompt is not None or total is not None else None


def _reject_constant(name: str) -> Any:
    raise TargetError(f"target-error: the response contains {name}, which is not a number")


def load_json(body: bytes) -> Any:
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except TargetError:
        raise
    except (ValueError, UnicodeDecodeError):
        start = body[:40].decode("utf-8", errors="replace").replace("\n", " ")
        raise TargetError(f"target-error: the response is not JSON ({len(body)} bytes, starting {start!r})") from None


def _one_line(text: Any, limit: int = 200) -> str:
    """A server-supplied text inside an error message: whitespace collapsed, so the message stays one line."""
    return " ".join(str(text).split())[:limit]


def _show(value: Any) -> str:
    return _one_line(repr(value), 40)


def _logprob(value: Any, where: str) -> np.float32:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TargetError(f"target-error: {where} is {_show(value)}, not a number")
    try:
        with np.errstate(over="ignore"):
            as32 = np.float32(value)
    except OverflowError:  # a huge JSON integer
        as32 = np.float32(np.inf)
    if not np.isfinite(as32):
        raise TargetError(f"target-error: {where} is {_show(value)}, not finite")
    if value > 0:
        raise TargetError(f"target-error: {where} is {_show(value)}, but a log-probability is at most 0")
    return as32


def _ranked(pairs: list[tuple[str, np.float32]]) -> list[tuple[str, np.float32]]:
    # servers need not send alternatives in order; equal values keep the order they came in
    return sorted(pairs, key=lambda p: -float(p[1]))


def _first_choice(payload: Any) -> dict:
    if not isinstance(payload, dict):
        raise TargetError(f"target-error: the response is a JSON {type(payload).__name__}, not an object")
    if "error" in payload and "choices" not in payload:
        error = payload["error"]
        message = error.get("message") if isinstance(error, dict) else error
        raise TargetError(f"target-error: the server answered with an error: {_one_line(message)}")
    choices = payload.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise TargetError("target-error: the response has no choices")
    return choices[0]


def parse_completion(body: bytes) -> FirstToken:
    """A `/v1/completions` body: `choices[0].logprobs` has tokens, token_logprobs, top_logprobs (OpenAI's
    legacy format), or a `content` list as in a chat completion (llama.cpp's llama-server)."""
    payload = load_json(body)
    token = _completion_token(payload)
    return FirstToken(token.text, token.logprob, token.top, parse_usage(payload))


def _completion_token(payload: Any) -> FirstToken:
    choice = _first_choice(payload)
    text = choice.get("text")
    if text is not None and not isinstance(text, str):
        raise TargetError(f"target-error: choices[0].text is {_show(text)}, not a string")
    logprobs = choice.get("logprobs")
    if not isinstance(logprobs, dict):
        return FirstToken(text=text or None, logprob=None, top=None)
    content = logprobs.get("content")
    if "tokens" not in logprobs and isinstance(content, list) and content:  # llama-server's completions
        return _content_entry(content[0])
    tokens = logprobs.get("tokens") or []
    token_logprobs = logprobs.get("token_logprobs") or []
    for name, value in (("tokens", tokens), ("token_logprobs", token_logprobs)):
        if not isinstance(value, list):
            raise TargetError(f"target-error: logprobs.{name} is a JSON {type(value).__name__}, not a list")
    if not tokens:
        return FirstToken(text=None, logprob=None, top=None)
    if not isinstance(tokens[0], str):
        raise TargetError(f"target-error: logprobs.tokens[0] is {_show(tokens[0])}, not a string")
    logprob = _logprob(token_logprobs[0], "logprobs.token_logprobs[0]") if token_logprobs else None
    tops = logprobs.get("top_logprobs")
    top = None
    if isinstance(tops, list) and tops and tops[0] is not None:
        first = tops[0]
        if not isinstance(first, dict):
            raise TargetError(f"target-error: logprobs.top_logprobs[0] is a {type(first).__name__}, not an object")
        top = _ranked([(str(t), _logprob(v, f"top_logprobs[0][{_show(t)}]")) for t, v in first.items()])
    return FirstToken(text=tokens[0], logprob=logprob, top=top)


def parse_chat_completion(body: bytes) -> FirstToken:
    """A `/v1/chat/completions` body: `choices[0].logprobs.content[0]` with its `top_logprobs` list."""
    payload = load_json(body)
    token = _chat_token(payload)
    return FirstToken(token.text, token.logprob, token.top, parse_usage(payload))


def _chat_token(payload: Any) -> FirstToken:
    choice = _first_choice(payload)
    message = choice.get("message")
    text = message.get("content") if isinstance(message, dict) else None
    logprobs = choice.get("logprobs")
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not isinstance(content, list) or not content:
        return FirstToken(text=text if isinstance(text, str) and text else None, logprob=None, top=None)
    return _content_entry(content[0])


def _content_entry(entry: Any) -> FirstToken:
    """`logprobs.content[0]`: the token, its logprob and its `top_logprobs` list (the chat format, which
    llama.cpp's llama-server also sends for completions)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("token"), str):
        raise TargetError("target-error: logprobs.content[0] has no token string")
    logprob = _logprob(entry.get("logprob"), "logprobs.content[0].logprob") if "logprob" in entry else None
    tops = entry.get("top_logprobs")
    top = None
    if isinstance(tops, list) and tops:
        pairs = []
        for i, alt in enumerate(tops):
            if not isinstance(alt, dict) or not isinstance(alt.get("token"), str):
                raise TargetError(f"target-error: top_logprobs[{i}] has no token string")
            pairs.append((alt["token"], _logprob(alt.get("logprob"), f"top_logprobs[{i}].logprob")))
        top = _ranked(pairs)
    return FirstToken(text=entry["token"], logprob=logprob, top=top)
