"""Servers hspi starts on this machine: a free loopback port, and a subprocess that is ready or fails.

Every server a command, a test or a benchmark starts binds 127.0.0.1 and is reached there only.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from typing import IO

import httpx

from hspi.errors import TargetError

LOOPBACK = "127.0.0.1"
POLL_INTERVAL_S = 0.2
STOP_TIMEOUT_S = 10.0  # uvicorn finishes in-flight requests on SIGTERM; then the process is killed


def free_port() -> int:
    """A loopback port the OS had free a moment ago (another process could take it before the server
    binds; the server's start then fails with its own message)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def wait_for_http(
    url: str, timeout_s: float, alive: Callable[[], bool] = lambda: True, what: str = "the server"
) -> None:
    """Poll GET `url` until it answers 200; TargetError after `timeout_s`, or as soon as `alive()` is False."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive():
            raise TargetError(f"{what} exited before answering {url}")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:  # not listening yet
            pass
        time.sleep(POLL_INTERVAL_S)
    raise TargetError(f"{what} did not answer {url} within {timeout_s:g}s")


@contextlib.contextmanager
def serving_process(
    command: Sequence[str], ready_url: str, *, timeout_s: float, log: IO[bytes] | None = None, what: str = "the server"
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `command` while the block runs, once `ready_url` answers; always stop it (SIGTERM, then kill).
    Its output goes to `log`, by default a temporary file, whose last line a failed start names."""
    with contextlib.ExitStack() as stack:
        out = log if log is not None else stack.enter_context(tempfile.TemporaryFile(mode="w+b"))
        proc = subprocess.Popen(list(command), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            try:
                wait_for_http(ready_url, timeout_s, alive=lambda: proc.poll() is None, what=what)
            except TargetError as exc:
                code = proc.poll()
                raise TargetError(
                    f"{exc}" + (f" (exit code {code}{_last_line(out)})" if code is not None else "")
                ) from None
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _last_line(log: IO[bytes]) -> str:
    log.seek(0)
    lines = log.read().decode("utf-8", "replace").strip().splitlines()
    return f": {lines[-1]}" if lines else ""
