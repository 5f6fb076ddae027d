"""Hostile requests to every route of the audit API, as hypothesis strategies (tests and benchmarks/security_probe.py).

A request is (method, raw path with its query, headers, body bytes or None).  Strings are hostile:
lone UTF-16 surrogates, NUL and other control characters, bidi and line-separator characters, very
long values, forged cursors, datetimes whose offset pushes them out of range.  Query and path
values are percent-encoded from their UTF-8 bytes (surrogates included, as a client could send
them); JSON bodies escape surrogates as \\ud800, which is how they reach the service.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from urllib.parse import quote

from hypothesis import strategies as st

HOSTILE = [
    "\ud800",
    "\udfff",
    "a\ud800b",
    "\udc80\ud800",
    "\x00",
    "fp32\x00",
    "\r\n",
    "x\r\nX-Injected: 1",
    "\x1b[31m",
    "\x7f",
    "\x85",
    "\u2028",
    "\u202e",
    "\ufeff",
    "\uffff",
    "\U0010ffff",
    "😀",
    "é",
    "",
    " ",
    "\t",
    "%00",
    "%ED%A0%80",
    "../../etc/passwd",
    "' OR 1=1 --",
    '"}',
    "dtype=fp32",
    "dtype=\ud800",
    "dtype=fp32,hardware=\x00",
    "http://127.0.0.1:9/v1\x00",
    "http://[::ffff:127.0.0.1]:9/v1",
    "http://127.0.0.1:9/v1#\ud800",
    "http://\ud800/v1",
    "a" * 201,
    "a" * 4097,
    "é" * 3000,
]
SURROGATE = st.integers(0xD800, 0xDFFF).map(chr)
CONTROL = st.sampled_from([chr(c) for c in (*range(0x20), *range(0x7F, 0xA0))])
CHAR = st.one_of(st.characters(), SURROGATE, CONTROL)
hostile_text = st.one_of(
    st.sampled_from(HOSTILE),
    st.text(alphabet=CHAR, max_size=40),
    st.tuples(st.sampled_from(["a", "\x00", "\ud800", "é"]), st.integers(100, 12_000)).map(lambda t: t[0] * t[1]),
)
datetime_text = st.builds(
    lambda year, month, day, sign, hours, minutes, naive: (
        f"{year:04d}-{month:02d}-{day:02d}T00:00:00" + ("" if naive else f"{sign}{hours:02d}:{minutes:02d}")
    ),
    st.sampled_from([1, 2, 1970, 2026, 9998, 9999]),
    st.sampled_from([1, 12]),
    st.sampled_from([1, 31]),
    st.sampled_from(["+", "-"]),
    st.integers(0, 25),
    st.integers(0, 59),
    st.booleans(),
)


def _cursor(payload: object) -> str:
    raw = json.dumps(payload, ensure_ascii=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


forged_cursor = st.one_of(
    hostile_text,
    st.tuples(datetime_text, hostile_text).map(lambda t: _cursor(list(t))),
    st.tuples(datetime_text, st.just("0" * 32)).map(lambda t: _cursor(list(t))),
    st.sampled_from([_cursor([]), _cursor({"a": 1, "b": 2}), _cursor([1, 2]), _cursor("x"), _cursor([[[[]]], None])]),
    st.binary(max_size=60).map(lambda b: base64.urlsafe_b64encode(b).decode()),
)
json_value = st.one_of(
    hostile_text,
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.none(),
    st.booleans(),
    st.lists(hostile_text, max_size=3),
)


@dataclass
class HostileRequest:
    route: str  # which route and field, for the report
    method: str
    path: str  # percent-encoded, query included
    headers: dict[str, bytes] = field(default_factory=dict)
    body: bytes | None = None

    def __repr__(self) -> str:
        body = None if self.body is None else self.body[:200]
        return f"HostileRequest({self.route!r}, {self.method} {self.path[:200]!r}, {self.headers!r}, {body!r})"


MAX_ENCODED = 16_000  # URLs stay within what clients send (httpx refuses 64 kB)


def encoded(text: str) -> str:
    quoted = quote(text.encode("utf-8", "surrogatepass"), safe="")
    if len(quoted) <= MAX_ENCODED:
        return quoted
    return quoted[: quoted.rfind("%", 0, MAX_ENCODED)]  # cut before an escape, never inside one


def json_body(payload: object) -> bytes:
    return json.dumps(payload, ensure_ascii=True).encode()  # lone surrogates travel as \ud800 escapes


AUDIT_FIELDS = ["endpoint", "model", "claim", "claim-head", "claim-value", "served_model", "target_api_key", "label"]
LIST_PARAMETERS = ["status", "model", "verdict", "endpoint", "label", "scan_id", "owner", "limit"]


@st.composite
def hostile_request(draw: st.DrawFn) -> HostileRequest:
    kind = draw(
        st.sampled_from(
            [
                "create",
                "create-raw",
                "idempotency",
                "list",
                "list-time",
                "cursor",
                "by-id",
                "classify",
                "key",
                "platforms",
            ]
        )
    )
    if kind == "create":
        name = draw(st.sampled_from(AUDIT_FIELDS))
        body: dict = {"endpoint": "http://127.0.0.1:9/v1", "claim": {"dtype": "fp32"}}
        value = draw(st.one_of(hostile_text, json_value) if draw(st.booleans()) else hostile_text)
        if name == "claim-head":
            body["claim"] = {value if isinstance(value, str) else "dtype": "fp32"}
        elif name == "claim-value":
            body["claim"] = {"dtype": value}
        else:
            body[name] = value
        return HostileRequest(f"POST /v1/audits {name}", "POST", "/v1/audits", body=json_body(body))
    if kind == "create-raw":  # bytes that are not UTF-8, or JSON that is not an object
        raw = draw(
            st.one_of(
                st.binary(max_size=200),
                st.sampled_from([b'{"endpoint": "\xff\xfe"}', b'{"endpoint": "\xed\xa0\x80"}', b"[]", b"null", b'"x"']),
                st.just(b'{"endpoint": "http://127.0.0.1:9/v1", "budget": ' + b"9" * 5000 + b"}"),
                st.just(b'{"endpoint": "http://127.0.0.1:9/v1", "timeout_s": NaN}'),
                st.just(b"[" * 3000 + b"]" * 3000),
            )
        )
        return HostileRequest("POST /v1/audits raw body", "POST", "/v1/audits", body=raw)
    if kind == "idempotency":
        key = draw(st.one_of(st.binary(max_size=300), st.sampled_from([b"", b" ", b"k\xff", b"\x01"])))
        body = {"endpoint": "http://127.0.0.1:9/v1", "label": draw(st.sampled_from(["a", "b"]))}
        return HostileRequest(
            "POST /v1/audits Idempotency-Key", "POST", "/v1/audits", {"idempotency-key": key}, json_body(body)
        )
    if kind == "list":
        name = draw(st.one_of(st.sampled_from(LIST_PARAMETERS), hostile_text))
        return HostileRequest(
            f"GET /v1/audits ?{name if name in LIST_PARAMETERS else '<hostile name>'}",
            "GET",
            f"/v1/audits?{encoded(name)}={encoded(draw(hostile_text))}",
        )
    if kind == "list-time":
        name = draw(st.sampled_from(["created_after", "created_before"]))
        value = draw(st.one_of(datetime_text, hostile_text))
        return HostileRequest(f"GET /v1/audits ?{name}", "GET", f"/v1/audits?{name}={encoded(value)}")
    if kind == "cursor":
        return HostileRequest("GET /v1/audits ?cursor", "GET", f"/v1/audits?cursor={encoded(draw(forged_cursor))}")
    if kind == "by-id":
        method, template = draw(
            st.sampled_from(
                [
                    ("GET", "/v1/audits/{}"),
                    ("GET", "/v1/audits/{}/answers"),
                    ("GET", "/v1/audits/{}/posteriors"),
                    ("POST", "/v1/audits/{}/cancel"),
                    ("DELETE", "/v1/keys/{}"),
                    ("GET", "/v1/scans/{}"),
                ]
            )
        )
        path = template.format(encoded(draw(hostile_text)))
        if template.endswith("answers"):
            path += f"?after={encoded(draw(st.one_of(st.integers(-(2**70), 2**70).map(str), hostile_text)))}"
        return HostileRequest(f"{method} {template.format('{id}')}", method, path)
    if kind == "classify":
        name = draw(st.sampled_from(["model", "probe_set", "claim"]))
        answer = {"probe_id": 0, "ids": list(range(20)), "values": [-float(i) for i in range(20)]}
        body = {"tier": "topk20", "answers": [answer], name: draw(json_value)}
        return HostileRequest(f"POST /v1/classify {name}", "POST", "/v1/classify", body=json_body(body))
    if kind == "key":
        body = {
            "name": draw(json_value),
            "scopes": draw(st.lists(st.one_of(st.just("read"), hostile_text), max_size=4)),
        }
        return HostileRequest("POST /v1/keys name", "POST", "/v1/keys", body=json_body(body))
    return HostileRequest("GET /v1/platforms ?model", "GET", f"/v1/platforms?model={encoded(draw(hostile_text))}")


def sweep(values: list[str] = HOSTILE) -> list[HostileRequest]:
    """Every value in every string field, query parameter, path segment and header: the same each run."""
    requests = []
    for value in values:
        for name in AUDIT_FIELDS:
            body: dict = {"endpoint": "http://127.0.0.1:9/v1", "claim": {"dtype": "fp32"}}
            if name == "claim-head":
                body["claim"] = {value: "fp32"}
            elif name == "claim-value":
                body["claim"] = {"dtype": value}
            else:
                body[name] = value
            requests.append(HostileRequest(f"POST /v1/audits {name}", "POST", "/v1/audits", body=json_body(body)))
        for name in [*LIST_PARAMETERS, "created_after", "created_before", "cursor"]:
            path = f"/v1/audits?{name}={encoded(value)}"
            requests.append(HostileRequest(f"GET /v1/audits ?{name}", "GET", path))
        requests.append(HostileRequest("GET /v1/audits ?<hostile name>", "GET", f"/v1/audits?{encoded(value)}=1"))
        for method, template in (
            ("GET", "/v1/audits/{}"),
            ("GET", "/v1/audits/{}/answers"),
            ("GET", "/v1/audits/{}/posteriors"),
            ("POST", "/v1/audits/{}/cancel"),
            ("DELETE", "/v1/keys/{}"),
            ("GET", "/v1/scans/{}"),
        ):
            if value:  # an empty segment is another route
                route = f"{method} {template.format('{id}')}"
                requests.append(HostileRequest(route, method, template.format(encoded(value))))
        answers = "/v1/audits/" + "0" * 32 + f"/answers?after={encoded(value)}"
        requests.append(HostileRequest("GET /v1/audits/{id}/answers ?after", "GET", answers))
        requests.append(HostileRequest("GET /v1/platforms ?model", "GET", f"/v1/platforms?model={encoded(value)}"))
        answer = {"probe_id": 0, "ids": list(range(20)), "values": [-float(i) for i in range(20)]}
        for name in ("model", "probe_set", "claim"):
            body = {"tier": "topk20", "answers": [answer], name: value}
            requests.append(HostileRequest(f"POST /v1/classify {name}", "POST", "/v1/classify", body=json_body(body)))
        requests.append(
            HostileRequest(
                "POST /v1/keys name", "POST", "/v1/keys", body=json_body({"name": value, "scopes": ["read"]})
            )
        )
        header = value.encode("utf-8", "surrogatepass")[:300]
        if b"\r" not in header and b"\n" not in header:  # a client cannot send those in a header at all
            body = {"endpoint": "http://127.0.0.1:9/v1"}
            requests.append(
                HostileRequest(
                    "POST /v1/audits Idempotency-Key",
                    "POST",
                    "/v1/audits",
                    {"idempotency-key": header},
                    json_body(body),
                )
            )
    return requests


def well_formed_error(status: int, body: bytes) -> str | None:
    """What is wrong with an answer (None: a 2xx, or a 4xx whose body is one {"detail": sentence})."""
    if status >= 500:
        return f"server error {status}: {body[:200]!r}"
    if status < 400:
        return None
    try:
        detail = json.loads(body)["detail"]
    except (ValueError, KeyError, TypeError):
        return f"{status} without a JSON detail: {body[:200]!r}"
    if not isinstance(detail, str) or "\n" in detail or "Traceback" in detail:
        return f"{status} detail is not one sentence: {detail!r}"[:300]
    return None
