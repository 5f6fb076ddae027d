"""One OpenAI-compatible answer read as sent, for checks that know no vocabulary (model-agnostic audits).

    read_answer(body, api) -> RawAnswer

Unlike `collector.targets.openai_parse` (which validates and ranks, and raises on what a reference audit
cannot score), nothing here raises: the values stay as the endpoint wrote them, in its order, so a
check can say why they are not log-probabilities (positive, unsorted, not normalisable), and a body that
is no answer at all gives `problem`.  The top-level, choice, logprobs and usage field names are kept
as engine tells.  The alternatives of a completions answer come as a JSON object, which has no order:
they are ranked by value; a chat answer's list keeps the order sent.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

_MAX_TEXT = 64  # characters of a token text kept (a server could send anything)


@dataclass(frozen=True)
class RawAnswer:
    generated: str | None = None  # the generated token's text
    generated_logprob: float | None = None
    top: list[tuple[str, float]] | None = None  # alternatives with numeric values, as sent (ranked: completions)
    problem: str = ""  # why there is no answer ("" when there is one)
    logprobs_problem: str = ""  # why the logprobs cannot be used ("" when they can, or none were asked)
    fields: dict[str, Any] = field(default_factory=dict)  # tells: field names and formats, never values in bulk

    def observation_texts(self) -> tuple[str, ...]:
        texts = [self.generated] if self.generated is not None else []
        return tuple(texts + [t for t, _ in self.top or []])

    def observation_values(self) -> tuple[float, ...]:
        if self.generated_logprob is None or self.top is None:
            return ()
        return (self.generated_logprob, *[v for _, v in self.top])


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _keys(value: Any) -> list[str]:
    return sorted(str(k) for k in value)[:40] if isinstance(value, dict) else []


def read_answer(body: bytes, api: str = "completions") -> RawAnswer:
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return RawAnswer(problem=f"the response is not JSON ({len(body)} bytes)")
    if not isinstance(payload, dict):
        return RawAnswer(problem=f"the response is a JSON {type(payload).__name__}, not an object")
    fields: dict[str, Any] = {"top_level": _keys(payload)}
    for key in ("id", "object", "system_fingerprint", "model"):
        if key in payload:
            fields[key] = str(payload[key])[-200:] if payload[key] is not None else None  # a path's end names it
    usage = payload.get("usage")
    if isinstance(usage, dict):
        fields["usage"] = _keys(usage)
        fields["usage_details"] = {k: _keys(v) for k, v in usage.items() if isinstance(v, dict)}
        total = usage.get("total_tokens")
        if isinstance(total, int) and not isinstance(total, bool) and 0 <= total < 2**31:
            fields["usage_total"] = total  # what the server billed, for the budget
    choices = payload.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return RawAnswer(problem="the response has no choices", fields=fields)
    choice = choices[0]
    fields["choice"] = _keys(choice)
    logprobs = choice.get("logprobs")
    if isinstance(logprobs, dict):
        fields["logprobs"] = _keys(logprobs)
    if api == "chat":
        return _chat(choice, logprobs, fields)
    return _completion(choice, logprobs, fields)


def _text_only(text: Any, fields: dict[str, Any], why: str) -> RawAnswer:
    shown = text[:_MAX_TEXT] if isinstance(text, str) and text else None
    return RawAnswer(shown, None, None, "" if shown is not None else "no token was generated", why, fields)


def _completion(choice: dict, logprobs: Any, fields: dict[str, Any]) -> RawAnswer:
    text = choice.get("text")
    if not isinstance(logprobs, dict):
        return _text_only(text, fields, "the answer carries no logprobs")
    tokens, token_logprobs = logprobs.get("tokens"), logprobs.get("token_logprobs")
    if not isinstance(tokens, list) or not tokens or not isinstance(tokens[0], str):
        return _text_only(text, fields, "logprobs.tokens is not a list of token texts")
    generated = tokens[0][:_MAX_TEXT]
    lp = _number(token_logprobs[0]) if isinstance(token_logprobs, list) and token_logprobs else None
    tops = logprobs.get("top_logprobs")
    if not isinstance(tops, list) or not tops or not isinstance(tops[0], dict) or not tops[0]:
        return RawAnswer(generated, lp, None, "", "the answer has no top logprobs", fields)
    pairs = [(str(t)[:_MAX_TEXT], _number(v)) for t, v in tops[0].items()]
    if any(v is None for _, v in pairs):
        return RawAnswer(generated, lp, None, "", "a top logprob is not a finite number", fields)
    top = sorted(((t, float(v)) for t, v in pairs if v is not None), key=lambda p: -p[1])
    return RawAnswer(generated, lp, top, "", "" if lp is not None else "the generated token has no logprob", fields)


def _chat(choice: dict, logprobs: Any, fields: dict[str, Any]) -> RawAnswer:
    message = choice.get("message")
    text = message.get("content") if isinstance(message, dict) else None
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not isinstance(content, list) or not content or not isinstance(content[0], dict):
        return _text_only(text, fields, "the answer carries no logprobs")
    entry = content[0]
    fields["logprobs_entry"] = _keys(entry)
    token = entry.get("token")
    if not isinstance(token, str):
        return _text_only(text, fields, "logprobs.content[0] has no token text")
    lp = _number(entry.get("logprob"))
    tops = entry.get("top_logprobs")
    if not isinstance(tops, list) or not tops:
        return RawAnswer(token[:_MAX_TEXT], lp, None, "", "the answer has no top logprobs", fields)
    top: list[tuple[str, float]] = []
    for alt in tops:
        value = _number(alt.get("logprob")) if isinstance(alt, dict) else None
        if value is None or not isinstance(alt.get("token"), str):
            return RawAnswer(token[:_MAX_TEXT], lp, None, "", "a top logprob is not a token with a number", fields)
        top.append((alt["token"][:_MAX_TEXT], value))
    return RawAnswer(
        token[:_MAX_TEXT], lp, top, "", "" if lp is not None else "the generated token has no logprob", fields
    )
