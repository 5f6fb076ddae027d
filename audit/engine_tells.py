"""Which serving engine answers: tells read from the endpoint's own OpenAI-compatible answers (pure).

    tells_from(answers, models, error) -> dict[str, str]      the observed features
    read_engine(tells) -> EngineReading                        a rule table over them -> engine + probability

Inputs are what the audit already received on the routes an OpenAI client uses: a completion's body
and headers, `GET {base}/models`, and the error answer to one malformed request (`max_tokens` not a
number).  Nothing else is asked: no other path, no other port.

The rule table maps a tell to an engine with a weight, a log-likelihood ratio in nats, hand-set from
each engine's source and its measured answers (tests/test_agnostic_audit.py records them): a tell that
only that engine shows gets 4, one that several engines share gets 1 to 2, one that every FastAPI
server shows gets none.  The posterior is a softmax of the summed weights over the known engines and
`other` (an engine with none of these tells), uniform prior.  Known engines:

    llama.cpp      `python -m llama_cpp.server` (llama-cpp-python): `/models` entries owned by "me"
                   with a `permissions` list, ids `cmpl-<uuid4>`, the GGUF file path as `model`, an
                   `openai-processing-ms` header and a 32-hex `x-request-id`, and a request validation
                   error answered HTTP 500 `internal_server_error`
    hspi-target    `hspi target serve`: `/models` entries owned by "hspi", ids `cmpl-<counter>`, a
                   validation error answered HTTP 400 `invalid_request_error` with the field named

    transformers   `transformers serve` (transformers 5): `/models` entries owned by "local" with a load
                   `status`, the answer's id a bare uuid4 equal to its `x-request-id` header, a request
                   validation error answered HTTP 500 as plain text; its completions route ignores
                   `logprobs` (text only)

Any other engine reads `unknown` unless its answers happen to show one of these tells.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hspi.audit.raw_answer import RawAnswer

ENGINES = ("llama.cpp", "hspi-target", "transformers")
OTHER = "other"
THRESHOLD = 0.95

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_HEX = re.compile(r"^[0-9a-f]{16,64}$")


def id_format(value: str | None) -> str:
    """An id's shape: its prefix and the class of what follows (uuid4, hex, int, other), never the id itself."""
    if value is None:
        return "absent"
    if _UUID.match(value):
        return "uuid"
    prefix, _, rest = value.partition("-")
    if not rest:
        return "no-prefix"
    kind = "uuid" if _UUID.match(rest) else "int" if rest.isdigit() else "hex" if _HEX.match(rest) else "other"
    return f"{prefix[:16]}-{kind}"


def _token_form(texts: Sequence[str]) -> str:
    """How tokens are shown: raw byte-level BPE pieces (Ġ, Ċ), raw SentencePiece pieces (▁, <0x..>), or text."""
    if any(t.startswith(("Ġ", "Ċ")) or "Ġ" in t for t in texts):
        return "byte-level-pieces"
    if any("▁" in t or re.fullmatch(r"<0x[0-9A-F]{2}>", t) for t in texts):
        return "sentencepiece-pieces"
    return "decoded-text" if texts else "none"


def tells_from(
    answers: Sequence[tuple[dict[str, str], RawAnswer]],
    models: tuple[int, dict[str, str], bytes] | None,
    error: tuple[int, dict[str, str], bytes] | None,
) -> dict[str, str]:
    """The features of the answers (headers, parsed answer), `/models` and the malformed request's error."""
    tells: dict[str, str] = {}
    if answers:
        headers, answer = answers[0]
        tells["header_server"] = headers.get("server", "absent")[:40]
        tells["header_openai_processing_ms"] = "present" if "openai-processing-ms" in headers else "absent"
        request_id = headers.get("x-request-id")
        tells["header_x_request_id"] = (
            "absent"
            if request_id is None
            else "hex32"
            if re.fullmatch(r"[0-9a-f]{32}", request_id)
            else "uuid"
            if _UUID.match(request_id)
            else "other"
        )
        f = answer.fields
        tells["id_format"] = id_format(f.get("id"))
        tells["id_is_request_id"] = "yes" if request_id is not None and f.get("id") == request_id else "no"
        tells["system_fingerprint"] = (
            "absent" if "system_fingerprint" not in f else "null" if f["system_fingerprint"] is None else "present"
        )
        tells["top_level_fields"] = ",".join(f.get("top_level", []))
        tells["logprobs_fields"] = ",".join(f.get("logprobs", [])) or "absent"
        tells["usage_fields"] = ",".join(f.get("usage", [])) or "absent"
        tells["usage_details"] = ",".join(sorted(f.get("usage_details", {}))) or "absent"
        texts = [t for _, a in answers for t in a.observation_texts()]
        tells["token_form"] = _token_form(texts)
    if models is not None:
        status, _, body = models
        tells["models_status"] = str(status)
        entry = first_model(body)
        if entry is not None:
            tells["models_entry_fields"] = ",".join(sorted(str(k) for k in entry))
            tells["models_owned_by"] = str(entry.get("owned_by", "absent"))[:40]
            served = entry.get("id")
            tells["models_id_form"] = (
                "file-path" if isinstance(served, str) and ("/" in served or served.endswith(".gguf")) else "name"
            )
    if answers:
        model_field = answers[0][1].fields.get("model")
        tells["model_field_form"] = (
            "absent"
            if model_field is None
            else "gguf-path"
            if str(model_field).endswith(".gguf")
            else "file-path"
            if "/" in str(model_field)
            else "name"
        )
    if error is not None:
        status, _, body = error
        tells["error_status"] = str(status)
        tells["error_shape"], tells["error_type"] = _error_shape(body)
    return tells


def first_model(body: bytes) -> dict | None:
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    data = payload.get("data") if isinstance(payload, dict) else None
    return data[0] if isinstance(data, list) and data and isinstance(data[0], dict) else None


def _error_shape(body: bytes) -> tuple[str, str]:
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return "not-json", "absent"
    if not isinstance(payload, dict):
        return f"json-{type(payload).__name__}", "absent"
    error = payload.get("error")
    if isinstance(error, dict):
        return "error{" + ",".join(sorted(str(k) for k in error)) + "}", str(error.get("type", "absent"))[:40]
    if isinstance(error, str):
        return "error-string", "absent"
    if isinstance(payload.get("detail"), list):
        return "detail-list", "absent"
    return "{" + ",".join(sorted(str(k) for k in payload))[:80] + "}", "absent"


@dataclass(frozen=True)
class Rule:
    engine: str
    tell: str
    matches: Callable[[Mapping[str, str]], bool]
    weight: float  # nats in favour of `engine`


RULES: tuple[Rule, ...] = (
    Rule("llama.cpp", "/models entries owned by 'me'", lambda t: t.get("models_owned_by") == "me", 4.0),
    Rule(
        "llama.cpp",
        "/models entries carry a 'permissions' list",
        lambda t: "permissions" in t.get("models_entry_fields", "").split(","),
        1.0,
    ),
    Rule("llama.cpp", "ids are cmpl-<uuid4>", lambda t: t.get("id_format") == "cmpl-uuid", 1.0),
    Rule(
        "llama.cpp", "the answer's model is a GGUF file path", lambda t: t.get("model_field_form") == "gguf-path", 4.0
    ),
    Rule(
        "llama.cpp",
        "openai-processing-ms header",
        lambda t: t.get("header_openai_processing_ms") == "present",
        1.5,
    ),
    Rule(
        "llama.cpp",
        "a request validation error answered HTTP 500 internal_server_error",
        lambda t: t.get("error_status") == "500" and t.get("error_type") == "internal_server_error",
        4.0,
    ),
    Rule(
        "transformers",
        "/models entries owned by 'local' with a load 'status'",
        lambda t: t.get("models_owned_by") == "local" and "status" in t.get("models_entry_fields", "").split(","),
        4.0,
    ),
    Rule(
        "transformers",
        "the answer's id is a bare uuid4, the x-request-id header's",
        lambda t: t.get("id_format") == "uuid" and t.get("id_is_request_id") == "yes",
        3.0,
    ),
    Rule(
        "transformers",
        "a request validation error answered HTTP 500 as plain text",
        lambda t: t.get("error_status") == "500" and t.get("error_shape") == "not-json",
        1.0,
    ),
    Rule("hspi-target", "/models entries owned by 'hspi'", lambda t: t.get("models_owned_by") == "hspi", 4.0),
    Rule("hspi-target", "ids are cmpl-<counter>", lambda t: t.get("id_format") in ("cmpl-int", "chatcmpl-int"), 2.0),
    Rule(
        "hspi-target",
        "a request validation error answered HTTP 400 invalid_request_error {message, type}",
        lambda t: t.get("error_status") == "400"
        and t.get("error_shape") == "error{message,type}"
        and t.get("error_type") == "invalid_request_error",
        1.5,
    ),
)


@dataclass(frozen=True)
class EngineReading:
    verdict: str
    probability: float
    reason: str
    posterior: dict[str, float] = field(default_factory=dict)
    fired: list[str] = field(default_factory=list)  # "engine: tell (+weight)"

    def as_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "probability": self.probability,
            "reason": self.reason,
            "posterior": self.posterior,
            "fired": self.fired,
        }


def read_engine(tells: Mapping[str, str], threshold: float = THRESHOLD) -> EngineReading:
    if not tells:
        return EngineReading("unknown", 0.0, "the endpoint answered nothing to read tells from")
    score = {engine: 0.0 for engine in (*ENGINES, OTHER)}
    fired = []
    for rule in RULES:
        if rule.matches(tells):
            score[rule.engine] += rule.weight
            fired.append(f"{rule.engine}: {rule.tell} (+{rule.weight:g})")
    top = max(score.values())
    unnorm = {e: math.exp(s - top) for e, s in score.items()}
    total = sum(unnorm.values())
    posterior = {e: round(v / total, 4) for e, v in unnorm.items()}
    best = max(posterior, key=lambda e: posterior[e])
    if not fired:
        return EngineReading(
            "unknown", posterior[best], f"no tell of a known engine ({', '.join(ENGINES)})", posterior, fired
        )
    if posterior[best] >= threshold and best != OTHER:
        return EngineReading(best, posterior[best], f"{len(fired)} tell(s) fired", posterior, fired)
    return EngineReading(
        "unknown",
        posterior[best],
        f"no engine reaches {threshold} (best {best} at {posterior[best]:.3f})",
        posterior,
        fired,
    )
