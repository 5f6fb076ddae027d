"""The model-agnostic audit against real servers on loopback: `hspi target serve` (static, and with dynamic
batching under background load), the real llama.cpp server, and hostile endpoints whose answers are
no log-probabilities.  Each check is right, or says unknown with the reason; the budget always holds."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import Reply, Request, serve_asgi, serve_handler

from hspi.audit.agnostic import DEFAULT_BUDGET, PROMPT_A, AgnosticSettings, run_agnostic_audit
from hspi.audit.endpoint_evaluation import background_load
from hspi.collector.llama_cpp_server import llama_cpp_server
from hspi.collector.target_server import create_target_app
from hspi.collector.targets.llama_cpp import llama_cpp_available
from hspi.collector.transformers_server import transformers_serve_available, transformers_server
from hspi.platform import Platform

needs_llama_cpp = pytest.mark.skipif(not llama_cpp_available(), reason="llama-cpp-python is not installed")


def audit(url: str, **settings: object):  # type: ignore[no-untyped-def]
    return run_agnostic_audit(AgnosticSettings(endpoint=url, **{"timeout_s": 60.0, **settings}))  # type: ignore[arg-type]


# --- hostile endpoints: every check unknown with its reason, nothing crashes, the budget holds -----------

TOP = [
    -0.1,
    -2.5,
    -3.0,
    -3.5,
    -4.0,
    -4.5,
    -5.0,
    -5.5,
    -6.0,
    -6.5,
    -7.0,
    -7.5,
    -8.0,
    -8.5,
    -9.0,
    -9.5,
    -10.0,
    -10.5,
    -11.0,
    -11.5,
]


def completion(top: dict[str, float] | None, *, text: str = "x", logprob: float | None = -0.1) -> dict:
    logprobs = None
    if top is not None:
        logprobs = {"tokens": [text], "token_logprobs": [logprob], "top_logprobs": [top]}
    return {"id": "x", "choices": [{"text": text, "index": 0, "logprobs": logprobs}]}


def behaviour(kind: str):  # type: ignore[no-untyped-def]
    def answer(request: Request, reply: Reply) -> None:
        if request.method == "GET":
            reply.send(404, {"detail": "Not Found"})
            return
        payload = request.json()
        if not isinstance(payload.get("max_tokens"), int):
            reply.send(422, {"detail": [{"msg": "max_tokens is not an integer"}]})
            return
        if kind == "text-only":
            reply.send(200, completion(None))
        elif kind == "fewer":
            reply.send(200, completion({f"t{i}": v for i, v in enumerate(TOP[:7])}))
        elif kind == "positive":
            reply.send(200, completion({f"t{i}": abs(v) for i, v in enumerate(TOP)}))
        elif kind == "not-normalisable":
            reply.send(200, completion({f"t{i}": -(i + 1) / 64 for i in range(20)}))
        elif kind == "rounded":
            reply.send(200, completion({f"t{i}": round(v - 0.123456, 3) for i, v in enumerate(TOP)}))
        elif kind == "not-json":
            reply.send(200, "<html>busy</html>", content_type="text/html")
        elif kind == "refuses-logprobs":
            if payload.get("logprobs") is not None:
                reply.send(400, {"error": {"message": "logprobs are not supported"}})
            else:
                reply.send(200, completion(None))

    return answer


@pytest.mark.parametrize(
    "kind, precision_why, determinism_why",
    [
        ("text-only", "the answer carries no logprobs; logit precision cannot be read at the text tier", "text only"),
        ("fewer", "fewer than the 20", None),
        ("positive", "positive logprob", None),
        ("not-normalisable", "sum to", None),
        ("rounded", "not float32 numbers", None),
        ("not-json", "not JSON", "nothing to compare"),
        ("refuses-logprobs", "text tier", "text only"),
    ],
)
def test_hostile_endpoint_checks_say_unknown_with_the_reason(
    kind: str, precision_why: str, determinism_why: str | None
) -> None:
    with serve_handler(behaviour(kind)) as (url, seen):
        report = audit(url, timeout_s=5.0)
    precision = report.checks["precision"]
    assert precision.verdict == "unknown" and precision_why in precision.reason, precision.reason
    if determinism_why is not None:
        assert report.checks["determinism"].verdict == "unknown"
        assert determinism_why in report.checks["determinism"].reason
    assert report.checks["engine"].verdict == "unknown"
    assert report.queries == seen.count <= DEFAULT_BUDGET
    assert len(report.evidence) == report.queries


def test_unreachable_endpoint_is_a_target_error_not_a_crash() -> None:
    with serve_handler(behaviour("text-only")) as (url, _):
        pass  # the port is free again
    report = audit(url, timeout_s=2.0, retries=0)
    assert report.stop == "target-error" and report.tier is None
    assert all(c.verdict == "unknown" for c in report.checks.values())


# --- hspi target serve, in process ------------------------------------------------------------------


@pytest.fixture(scope="module")
def static_bf16() -> Iterator[str]:
    app = create_target_app("lm-small", Platform.parse("cpu:native/bf16/torch-eager"))
    with serve_asgi(app) as url:
        yield url


@pytest.mark.slow
def test_static_hspi_target_reads_bf16_deterministic_hspi_target(static_bf16: str) -> None:
    report = audit(static_bf16)
    checks = {name: c.verdict for name, c in report.checks.items()}
    assert checks == {"precision": "bf16", "determinism": "deterministic", "engine": "hspi-target"}, report.checks
    assert report.queries == DEFAULT_BUDGET and report.tier == "topk20"
    steps = [r.step for r in report.evidence]
    assert steps[:5] == ["models", "first", "second", "repeat", "malformed"] and steps[5:] == [
        "burst-1",
        "burst-2",
        "burst-3",
    ]
    assert report.served_model == "lm-small"  # read from /v1/models
    assert report.tokens <= report.budget_tokens


@pytest.mark.slow
def test_topk5_cap_costs_one_refusal_and_still_reads_bf16() -> None:
    app = create_target_app("lm-small", Platform.parse("cpu:native/bf16/torch-eager"), top_logprobs=5)
    with serve_asgi(app) as url:
        report = audit(url)
    assert report.tier == "topk5" and report.checks["precision"].verdict == "bf16"
    assert report.queries <= DEFAULT_BUDGET
    assert [r.status for r in report.evidence if r.step == "first"] == [400, 200]


@pytest.mark.slow
def test_dynamic_batching_under_load_is_batch_variant() -> None:
    # a 50 ms batching window (default 5): the burst's copies share a batch on a busy CI machine too
    app = create_target_app(
        "lm-small", Platform.parse("cpu:native/fp32/torch-eager"), dynamic_batching=True, batch_window_ms=50.0
    )
    with serve_asgi(app) as url, background_load(url, "lm-small"):
        report = audit(url)
    determinism = report.checks["determinism"]
    assert determinism.verdict == "batch-variant", determinism
    assert report.checks["precision"].verdict == "fp32"
    assert report.queries <= DEFAULT_BUDGET
    assert max(app.state.runner.batch_sizes) > 1  # the server did batch


# --- the real llama.cpp server ------------------------------------------------------------------------


@pytest.mark.slow
@needs_llama_cpp
def test_llama_cpp_server_reads_fp32_deterministic_llama_cpp(tmp_path: Path) -> None:
    with llama_cpp_server(Platform.parse("cpu:native/Q8_0/llama.cpp/bs=8/threads=1"), export_dir=tmp_path) as url:
        report = audit(url)
    checks = {name: c.verdict for name, c in report.checks.items()}
    # float32 logits whatever the GGUF type: the report reads the logits' format, not Q8_0
    assert checks == {"precision": "fp32", "determinism": "deterministic", "engine": "llama.cpp"}, report.checks
    assert "not the weights' type" in report.checks["precision"].reason
    assert report.queries <= DEFAULT_BUDGET


# --- the real transformers server (transformers serve) -------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not transformers_serve_available(), reason="transformers serve needs openai and accelerate")
def test_transformers_serve_is_told_apart_and_its_text_only_answers_read_unknown(tmp_path: Path) -> None:
    from tiny_models import gpt2_dir

    model_dir = gpt2_dir(tmp_path / "gpt2")
    with transformers_server(model_dir) as url:
        report = audit(url)
    assert report.checks["engine"].verdict == "transformers", report.checks["engine"]
    # its completions route ignores `logprobs`: the tier is text, and both numeric checks say so
    assert report.tier == "text"
    assert report.checks["precision"].verdict == "unknown" and "text tier" in report.checks["precision"].reason
    assert report.checks["determinism"].verdict == "unknown" and "text only" in report.checks["determinism"].reason
    assert report.served_model == str(model_dir) and report.queries <= DEFAULT_BUDGET


# --- the CLI ------------------------------------------------------------------------------------------


def test_cli_agnostic_audit_writes_report_and_evidence(tmp_path: Path) -> None:
    with serve_handler(behaviour("fewer")) as (url, seen):
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "hspi",
                "audit",
                "--endpoint",
                url,
                "--agnostic",
                "--json",
                str(tmp_path / "r.json"),
                "--evidence",
                str(tmp_path / "e.jsonl"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["kind"] == "model-agnostic" and report["queries"] == seen.count <= 8
    evidence = [json.loads(line) for line in (tmp_path / "e.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evidence] == [e["step"] for e in report["evidence"]]
    first = next(e for e in evidence if e["step"] == "first")
    assert first["texts"][0] == "x" and math.isclose(first["values"][1], -0.1)
    assert "Model-agnostic audit" in out.stdout and "Traceback" not in out.stderr


@pytest.mark.parametrize("args, needle", [(["--budget", "0"], "--budget"), (["--timeout", "-1"], "--timeout")])
def test_cli_agnostic_bad_input_is_one_line(args: list[str], needle: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "hspi", "audit", "--endpoint", "http://127.0.0.1:9/v1", "--agnostic", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and needle in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert PROMPT_A not in out.stderr


def test_a_smaller_budget_holds_and_says_so() -> None:
    with serve_handler(behaviour("fewer")) as (url, seen):
        report = audit(url, timeout_s=5.0, budget_queries=3)
    assert report.stop == "budget" and "budget" in report.reason
    assert report.queries == seen.count == 3 == len(report.evidence)


# --- logits post-processed before the log-softmax: never a confident wrong format ---------------------


def test_served_logits_are_real_torch_fp8_values_and_temperature_scaled() -> None:
    import numpy as np
    import torch

    from hspi.collector.target_server import served_logits
    from hspi.errors import ConfigError

    logits = np.random.default_rng(0).normal(0, 4, 512).astype(np.float32)
    for cast, dtype in (("fp8-e4m3", torch.float8_e4m3fn), ("fp8-e5m2", torch.float8_e5m2)):
        out = served_logits(logits, cast, None)
        assert out.dtype == np.float32 and not np.array_equal(out, logits)
        again = torch.from_numpy(out).to(dtype).to(torch.float32).numpy()
        assert np.array_equal(again, out)  # already on the fp8 grid: a second cast changes nothing
        assert len(np.unique(out)) < len(np.unique(logits))
    scaled = served_logits(logits, None, 0.7)
    assert scaled.dtype == np.float32 and np.array_equal(scaled, logits / np.float32(0.7))
    with pytest.raises(ConfigError, match="fp8-e4m4"):
        create_target_app("lm-small", Platform.parse("cpu:native/fp32/torch-eager"), logits_cast="fp8-e4m4")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("platform", "options", "allowed"),
    [
        ("bf16", {"temperature_before_softmax": 0.7}, {"none-of-these", "unknown"}),
        # "fp8": e4m3 or e5m2, which lm-small's one-binade top-20 values rarely tell apart
        ("fp32", {"logits_cast": "fp8-e4m3"}, {"fp8-e4m3", "fp8", "unknown"}),
        ("fp32", {"logits_cast": "fp8-e5m2"}, {"fp8-e5m2", "fp8", "unknown"}),
    ],
)
def test_post_processed_logits_never_read_as_a_wrong_format(platform: str, options: dict, allowed: set) -> None:
    app = create_target_app("lm-small", Platform.parse(f"cpu:native/{platform}/torch-eager"), **options)  # type: ignore[arg-type]
    with serve_asgi(app) as url:
        report = audit(url, seed=3)
    assert report.checks["precision"].verdict in allowed, report.checks["precision"]
    assert report.queries <= DEFAULT_BUDGET
