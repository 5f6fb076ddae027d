"""End to end through the real CLI: `hspi target serve` as a subprocess on a free loopback port,
`hspi audit` against it as another; and bad input ends in one line on stderr, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from reproducing import BF16, FP32_IN_PROCESS, expected_class, identified
from servers import free_port, wait_for_http

from hspi.errors import TargetError

pytestmark = pytest.mark.slow

SERVERS = {  # name: (candidate platforms, the first this machine reproduces is served; --top-logprobs)
    "bf16": (BF16, 20),
    "top5": (FP32_IN_PROCESS, 5),
    "text": (FP32_IN_PROCESS, 0),
}


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "HSPI_TARGET_API_KEY"}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def hspi(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "hspi", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()
    )


def finish(proc: subprocess.Popen, timeout: float = 120) -> subprocess.CompletedProcess:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"{proc.args} did not finish within {timeout:g}s: {err[-2000:]}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, str]]:
    """The three targets, started together (each loads torch), killed whatever happens."""
    procs: dict[str, subprocess.Popen] = {}
    urls: dict[str, str] = {}
    try:
        for name, (candidates, cap) in SERVERS.items():
            platform = identified("lm-small", candidates)[0]
            port = free_port()
            procs[name] = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "hspi",
                    "target",
                    "serve",
                    "--model",
                    "lm-small",
                    "--platform",
                    platform,
                    "--port",
                    str(port),
                    "--top-logprobs",
                    str(cap),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                env=_env(),
            )
            urls[name] = f"http://127.0.0.1:{port}/v1"
        for name, url in urls.items():
            proc = procs[name]
            try:
                wait_for_http(url + "/models", 90, alive=lambda p=proc: p.poll() is None)
            except TargetError as exc:
                stop(proc)
                raise AssertionError(f"{exc}: {proc.stderr.read()[-2000:] if proc.stderr else ''}") from None
            # the first forward pass warms torch up; audits should not pay for it in their timeouts
            assert (
                httpx.post(
                    url + "/completions", json={"prompt": "\u4e00" * 16, "max_tokens": 1}, timeout=60
                ).status_code
                == 200
            )
        yield urls
    finally:
        for proc in procs.values():
            stop(proc)


AUDITS = {  # name: extra arguments; both against the bf16 server, concurrently
    "fp32-claim": ["--claim", "dtype=fp32"],
    "bf16-claim": ["--claim", "dtype=bf16"],
}


@pytest.fixture(scope="module")
def audits(servers: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`hspi audit` subprocesses: (completed process, JSON report or None, evidence records)."""
    out = tmp_path_factory.mktemp("audits")
    running = {
        name: hspi(
            "audit",
            "--endpoint",
            servers["bf16"],
            "--model",
            "lm-small",
            "--budget",
            "128",
            "--json",
            str(out / f"{name}.json"),
            "--evidence",
            str(out / f"{name}.jsonl"),
            "--seed",
            "0",
            *extra,
        )
        for name, extra in AUDITS.items()
    }
    results = {}
    for name, proc in running.items():
        done = finish(proc)
        path, evidence = out / f"{name}.json", out / f"{name}.jsonl"
        results[name] = (
            done,
            json.loads(path.read_text()) if path.exists() else None,
            [json.loads(line) for line in evidence.read_text().splitlines()] if evidence.exists() else [],
        )
    return results


def cli(capsys: pytest.CaptureFixture, *args: str) -> subprocess.CompletedProcess:
    """The CLI's `main()` in this process (imports already paid): exit code, stdout, stderr."""
    from hspi.cli import main

    saved = sys.argv
    sys.argv = ["hspi", *args]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = saved
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, captured.out, captured.err)


def no_traceback(done: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout, done.stderr


def test_audit_finds_bf16_behind_an_fp32_claim(audits: dict) -> None:
    done, report, evidence = audits["fp32-claim"]
    assert done.returncode == 10, done.stderr  # the documented exit code of "inconsistent"
    no_traceback(done)
    assert report["tier"] == "topk20"
    assert report["verdict"] == "inconsistent"
    assert report["heads"]["dtype"]["guesses"][0]["label"] == "bf16"
    assert report["heads"]["dtype"]["verdict"] == "inconsistent"
    assert report["heads"]["full"]["guesses"][0]["label"] == expected_class("lm-small", BF16)
    assert report["queries"] <= 128 and report["budget_queries"] == 128
    # the default bound (false-match rate 0.01) was met before the leader was named
    assert report["evidence_bound"]["alpha"] == 0.01 and report["evidence_bound"]["met"]
    assert report["tokens"] <= report["budget_tokens"]
    assert len(evidence) == len(report["evidence"]) and all(e["complete"] for e in evidence)
    assert "inconsistent" in done.stdout


def test_audit_confirms_a_true_bf16_claim(audits: dict) -> None:
    done, report, _ = audits["bf16-claim"]
    assert done.returncode == 0, done.stderr
    no_traceback(done)
    assert report["verdict"] == "consistent"
    assert report["heads"]["dtype"]["verdict"] == "consistent"
    assert report["evidence_bound"]["met"] and report["stop"] == "confident"
    assert report["queries"] <= 128


def test_min_answers_spends_answers_verifying_the_leader(
    servers: dict[str, str], capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    done = cli(
        capsys,
        "audit",
        "--endpoint",
        servers["bf16"],
        "--budget",
        "128",
        "--seed",
        "0",
        "--min-answers",
        "8",
        "--claim",
        "dtype=bf16",
        "--json",
        str(tmp_path / "r.json"),
    )
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["answers_used"] >= 8 and report["stop"] == "confident"
    assert report["heads"]["full"]["guesses"][0]["label"] == expected_class("lm-small", BF16)
    assert len({r["probe_id"] for r in report["evidence"]}) == len(report["evidence"])  # no probe asked twice


def test_audit_of_a_top5_server_uses_the_topk5_tier(
    servers: dict[str, str], capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    done = cli(
        capsys,
        "audit",
        "--endpoint",
        servers["top5"],
        "--budget",
        "128",
        "--seed",
        "0",
        "--claim",
        "dtype=fp32",
        "--json",
        str(tmp_path / "r.json"),
    )
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["tier"] == "topk5"
    assert report["queries"] <= 128
    assert all(len(r["ids"]) == 5 for r in report["evidence"] if r["complete"])
    assert report["heads"]["dtype"]["guesses"][0]["label"] == "fp32"


def test_audit_of_a_text_only_server_uses_the_border_prompt_vote(
    servers: dict[str, str], capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    done = cli(
        capsys,
        "audit",
        "--endpoint",
        servers["text"],
        "--budget",
        "32",
        "--seed",
        "0",
        "--claim",
        "dtype=bf16",
        "--json",
        str(tmp_path / "r.json"),
        "--evidence",
        str(tmp_path / "e.jsonl"),
    )
    no_traceback(done)
    report = json.loads((tmp_path / "r.json").read_text())
    assert done.returncode == {"inconsistent": 10, "inconclusive": 12}[report["verdict"]], done.stderr
    assert report["tier"] == "text"
    assert report["queries"] <= 32
    # the served platform is fp32: greedy tokens on border prompts alone say so, and a bf16 claim is
    # contradicted where the vote decides the dtype head (never confirmed)
    assert report["heads"]["dtype"]["guesses"][0]["label"] == "fp32"
    dtype = report["heads"]["dtype"]
    assert report["verdict"] == ("inconsistent" if dtype["decided"] else "inconclusive")
    kinds = {r["probe_set"].rsplit("/", 1)[1] for r in report["evidence"]}
    assert "border" in kinds  # after the first (pool) answer, the vote asks border prompts
    lines = (tmp_path / "e.jsonl").read_text().splitlines()
    assert len(lines) == len(report["evidence"]) and all(json.loads(x)["tier"] == "text" for x in lines)


BAD_AUDITS = {  # run as real subprocesses
    "budget-0": ["--budget", "0"],
    "claim-nonsense": ["--claim", "nonsense"],
    "endpoint-ftp": ["--endpoint", "ftp://x"],
    "api-foo": ["--api", "foo"],
    "model-nope": ["--model", "nope"],
}
MORE_BAD_AUDITS = {  # the same, through main() in this process
    "max-tokens-0": ["--max-tokens", "0"],
    "timeout-0": ["--timeout", "0"],
    "claim-bad-head": ["--claim", "colour=blue"],
    "endpoint-broken": ["--endpoint", "http://[::1/v1"],
    "endpoint-no-host": ["--endpoint", "http:///v1"],
    "order-foo": ["--order", "foo"],
    "min-answers-0": ["--min-answers", "0"],
}
EXPECTED = {  # words the one error line names
    "budget-0": ["--budget", "greater than or equal to 1"],
    "max-tokens-0": ["--max-tokens"],
    "timeout-0": ["--timeout"],
    "claim-nonsense": ["nonsense"],
    "claim-bad-head": ["colour"],
    "endpoint-ftp": ["ftp://x", "http"],
    "endpoint-broken": ["http://[::1/v1"],
    "endpoint-no-host": ["http:///v1"],
    "api-foo": ["--api"],
    "model-nope": ["unknown model", "nope"],
    "order-foo": ["--order"],
    "min-answers-0": ["--min-answers", "greater than or equal to 1"],
}
BAD_SERVES = {
    "serve-cap-3": ["--top-logprobs", "3"],
    "serve-bad-platform": ["--platform", "cpu:bogus/fp32/torch-eager"],
    "serve-bad-model": ["--model", "nope"],
    "serve-bad-port": ["--port", "70000"],
}
USAGE = {
    "no-endpoint": ["audit", "--model", "lm-small"],
    "budget-not-a-number": ["audit", "--endpoint", "http://127.0.0.1:9/v1", "--budget", "many"],
    "unknown-option": ["audit", "--endpoint", "http://127.0.0.1:9/v1", "--frobnicate"],
}


def audit_args(args: list[str]) -> list[str]:
    base = {"--endpoint": "http://127.0.0.1:9/v1", "--model": "lm-small", "--budget": "4"}
    for flag in args[::2]:
        base.pop(flag, None)
    return ["audit", *[x for pair in base.items() for x in pair], *args]


@pytest.fixture(scope="module")
def bad_runs() -> dict[str, subprocess.CompletedProcess]:
    running = {name: hspi(*audit_args(args)) for name, args in BAD_AUDITS.items()}
    return {name: finish(proc) for name, proc in running.items()}


def one_error_line(done: subprocess.CompletedProcess, words: list[str]) -> None:
    assert done.returncode not in (0, None), (done.returncode, done.stdout)
    no_traceback(done)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert all(w in lines[0] for w in words), lines[0]


@pytest.mark.parametrize("name", sorted(BAD_AUDITS))
def test_bad_input_is_one_error_line(bad_runs: dict, name: str) -> None:
    one_error_line(bad_runs[name], EXPECTED[name])


@pytest.mark.parametrize("name", sorted(MORE_BAD_AUDITS))
def test_more_bad_audit_input_is_one_error_line(capsys: pytest.CaptureFixture, name: str) -> None:
    one_error_line(cli(capsys, *audit_args(MORE_BAD_AUDITS[name])), EXPECTED[name])


@pytest.mark.parametrize("name", sorted(BAD_SERVES))
def test_bad_serve_input_is_one_error_line(capsys: pytest.CaptureFixture, name: str) -> None:
    one_error_line(cli(capsys, "target", "serve", *BAD_SERVES[name]), [])


@pytest.mark.parametrize("name", sorted(USAGE))
def test_usage_errors_come_from_click(capsys: pytest.CaptureFixture, name: str) -> None:
    done = cli(capsys, *USAGE[name])
    assert done.returncode == 2, (done.returncode, done.stderr)
    no_traceback(done)
    assert "Usage:" in done.stderr and "Error" in done.stderr


def test_served_models_are_listed(servers: dict[str, str]) -> None:
    for url in servers.values():
        assert httpx.get(url + "/models", timeout=5).json()["data"][0]["id"] == "lm-small"


def test_a_server_that_is_already_gone_is_a_target_error(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    done = cli(
        capsys,
        "audit",
        "--endpoint",
        f"http://127.0.0.1:{port}/v1",
        "--budget",
        "3",
        "--timeout",
        "0.5",
        "--json",
        str(tmp_path / "r.json"),
    )
    assert done.returncode == 5, done.stderr
    no_traceback(done)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["stop"] == "target-error" and "connection failed" in report["reason"]
    assert report["queries"] == 3
