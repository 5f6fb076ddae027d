"""Load and fault benchmark of the audit service, on loopback only, bounded in time.

    python benchmarks/service_load.py [--audits 200] [--out benchmarks/results/]

Phase 1 (load): `hspi serve` (SQLite, 16 workers, 4 per host) in its own process; 20 targets:
17 reference servers in two processes (lm-small on cpu:native/fp32 and on cpu:avx2/bf16) and 3
misbehaving ones (slow past the timeout, HTTP 500, HTML garbage) in a third.  Client threads
create the audits (claims: dtype=fp32 everywhere, so bf16 targets must come out inconsistent)
while others read them back and list them; every API call's latency is recorded.  At the end the
audits are listed through the cursor pages: none may be lost or listed twice.

Phase 2 (fault): more audits against slowed targets, SIGKILL of the API mid-run, a restart; every
audit must end (resumed from its stored answers), none lost or duplicated.

Writes service-load.json (audits/minute, API p50/p99 latency, counts) and service-load.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform as host_platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FARMS = {"cpu:native/fp32/torch-eager": 9, "cpu:avx2/bf16/torch-eager": 8}  # 17 good targets
MISBEHAVING = ("slow", "error500", "garbage")
FINAL = ("done", "failed", "cancelled", "interrupted")
BUDGET = 8
TIME_LIMIT_S = 540.0  # the whole benchmark stays bounded


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


# -- the target processes ---------------------------------------------------------------------------


def farm(platform_id: str, ports: list[int]) -> None:
    """Serve lm-small on one platform at several ports of one process (one platform per process)."""
    import asyncio

    import uvicorn

    from hspi.collector.target_server import create_target_app
    from hspi.platform import Platform

    app = create_target_app("lm-small", Platform.parse(platform_id), top_logprobs=20)

    async def main() -> None:
        servers = [
            uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=p, log_level="warning", lifespan="off"))
            for p in ports
        ]
        await asyncio.gather(*(s.serve() for s in servers))

    asyncio.run(main())


def misbehave(ports: list[int], delay_s: float) -> None:
    """slow (answers after `delay_s`), error500, garbage — one port each."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    def handler(kind: str) -> type[BaseHTTPRequestHandler]:
        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if kind == "slow":
                    time.sleep(delay_s)
                    status, body, ctype = 200, b'{"choices": []}', "application/json"
                elif kind == "error500":
                    status, body, ctype = 500, b'{"error": {"message": "internal"}}', "application/json"
                else:
                    status, body, ctype = 200, b"<html><body>maintenance</body></html>", "text/html"
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass

            def log_message(self, *args: object) -> None:
                pass

        return H

    servers = []
    for kind, port in zip(MISBEHAVING, ports):
        server = ThreadingHTTPServer(("127.0.0.1", port), handler(kind))
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    threading.Event().wait()


def spawn(args: list[str], env: dict[str, str] | None = None, log: Path | None = None) -> subprocess.Popen:
    out = open(log, "a") if log else subprocess.DEVNULL
    return subprocess.Popen(
        [sys.executable, *args], env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT
    )


def wait_http(url: str, proc: subprocess.Popen, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{url}: its process exited {proc.returncode}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not answer in {timeout_s:g}s")


# -- the API under load --------------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.errors: Counter[str] = Counter()
        self.lock = threading.Lock()

    def call(self, http: httpx.Client, kind: str, method: str, url: str, **kwargs: object) -> httpx.Response | None:
        started = time.perf_counter()
        try:
            response = http.request(method, url, **kwargs)  # type: ignore[arg-type]
        except httpx.HTTPError as exc:
            with self.lock:
                self.errors[f"{kind}: {type(exc).__name__}"] += 1
            return None
        elapsed = (time.perf_counter() - started) * 1000
        with self.lock:
            if response.status_code >= 500:
                self.errors[f"{kind}: HTTP {response.status_code}"] += 1
            self.latency[kind].append(elapsed)
        return response


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    a = np.asarray(values)
    return {
        "n": len(values),
        "p50_ms": round(float(np.percentile(a, 50)), 1),
        "p90_ms": round(float(np.percentile(a, 90)), 1),
        "p99_ms": round(float(np.percentile(a, 99)), 1),
        "max_ms": round(float(a.max()), 1),
    }


def start_api(workdir: Path, port: int, database: str) -> subprocess.Popen:
    env = {
        "HSPI_ALLOW_HOSTS": "127.0.0.0/8",
        "HSPI_WORKERS": "16",
        "HSPI_PER_HOST": "4",
        "HSPI_LEASE_S": "3",
        "HSPI_RATE_PER_MINUTE": "1000000",
        "HSPI_RATE_BURST": "100000",
        "HSPI_BOOTSTRAP_KEY_FILE": str(workdir / "admin.key"),
        "HSPI_SECRET_KEY_FILE": str(workdir / "secret.key"),
    }
    proc = spawn(["-m", "hspi", "serve", "--database", database, "--port", str(port)], env, workdir / "api.log")
    wait_http(f"http://127.0.0.1:{port}/readyz", proc)
    return proc


def list_all(http: httpx.Client, rec: Recorder) -> list[dict]:
    rows, cursor = [], None
    while True:
        params = {"limit": 200, **({"cursor": cursor} if cursor else {})}
        page = rec.call(http, "list", "GET", "/v1/audits", params=params).json()  # type: ignore[union-attr]
        rows += page["data"]
        cursor = page["next_cursor"]
        if cursor is None:
            return rows


def run_load(
    base: str, key: str, plan: list[dict], rec: Recorder, *, creators: int = 8, readers: int = 4
) -> tuple[list[str], list[tuple[float, int]], float]:
    """Create the planned audits from `creators` threads while `readers` poll; wait until all end."""
    ids: list[str] = []
    lock = threading.Lock()
    queue = list(enumerate(plan))
    started = time.perf_counter()
    created_all = threading.Event()

    def creator() -> None:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60) as http:
            while True:
                with lock:
                    if not queue:
                        return
                    i, body = queue.pop(0)
                r = rec.call(http, "create", "POST", "/v1/audits", json=body, headers={"Idempotency-Key": f"bench-{i}"})
                if r is not None and r.status_code in (200, 202):
                    with lock:
                        ids.append(r.json()["id"])
                else:
                    with lock:
                        queue.append((i, body))  # retried with the same idempotency key: never twice

    progress: list[tuple[float, int]] = []
    done_ids: set[str] = set()

    def reader(n: int) -> None:
        rng = random.Random(n)
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60) as http:
            while not (created_all.is_set() and len(done_ids) >= len(plan)):
                with lock:
                    known = list(ids)
                if known:
                    audit_id = rng.choice(known)
                    r = rec.call(http, "get", "GET", f"/v1/audits/{audit_id}")
                    if r is not None and r.status_code == 200 and r.json()["status"] in FINAL:
                        with lock:
                            done_ids.add(audit_id)
                if n == 0:
                    rec.call(http, "list", "GET", "/v1/audits", params={"limit": 200, "status": "queued"})
                    rec.call(http, "list", "GET", "/v1/audits", params={"limit": 1})
                    listing = [a for a in list_all(http, rec) if a["status"] in FINAL and a["label"] is not None]
                    with lock:
                        done_ids.update(a["id"] for a in listing)
                        progress.append((time.perf_counter() - started, len(done_ids)))
                    time.sleep(0.5)
                else:
                    time.sleep(0.02)

    threads = [threading.Thread(target=creator) for _ in range(creators)]
    threads += [threading.Thread(target=reader, args=(n,)) for n in range(readers)]
    for t in threads:
        t.start()
    for t in threads[:creators]:
        t.join()
    created_all.set()
    deadline = time.monotonic() + TIME_LIMIT_S
    for t in threads[creators:]:
        t.join(max(1.0, deadline - time.monotonic()))
    return ids, progress, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--audits", type=int, default=200)
    parser.add_argument("--fault-audits", type=int, default=40)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--farm", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--misbehave", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.farm:
        farm(args.farm[0], [int(p) for p in args.farm[1:]])
        return
    if args.misbehave:
        misbehave([int(p) for p in args.misbehave[1:]], float(args.misbehave[0]))
        return

    from hspi.platform import Platform

    wall_start = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="hspi-load-"))
    procs: list[subprocess.Popen] = []
    targets: list[tuple[str, str]] = []  # (url, kind)
    try:
        for platform_id, n in FARMS.items():
            ports = free_ports(n)
            env = Platform.parse(platform_id).environment()
            procs.append(spawn([__file__, "--farm", platform_id, *map(str, ports)], env, workdir / "farm.log"))
            targets += [(f"http://127.0.0.1:{p}/v1", platform_id) for p in ports]
        bad_ports = free_ports(len(MISBEHAVING))
        procs.append(spawn([__file__, "--misbehave", "3.0", *map(str, bad_ports)], None, workdir / "bad.log"))
        targets += [(f"http://127.0.0.1:{p}/v1", kind) for p, kind in zip(bad_ports, MISBEHAVING)]
        for url, kind in targets:
            if kind not in MISBEHAVING:
                wait_http(url + "/models", procs[0] if "fp32" in kind else procs[1])
                httpx.post(url + "/completions", json={"prompt": "a", "max_tokens": 1}, timeout=120)  # warm
        print(f"{len(targets)} targets up after {time.perf_counter() - wall_start:.0f}s", file=sys.stderr)

        port = free_ports(1)[0]
        base = f"http://127.0.0.1:{port}"
        database = f"sqlite:///{workdir / 'service.db'}"
        api = start_api(workdir, port, database)
        key = (workdir / "admin.key").read_text().strip()
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60) as http:
            warm = http.post("/v1/audits", json={"endpoint": targets[0][0], "budget": 2}).json()["id"]
            while http.get(f"/v1/audits/{warm}").json()["status"] not in FINAL:  # loads the references once
                time.sleep(0.2)

        # -- phase 1: load --------------------------------------------------------------------------
        plan = []
        for i in range(args.audits):
            url, kind = targets[i % len(targets)]
            plan.append(
                {
                    "endpoint": url,
                    "claim": "dtype=fp32",
                    "budget": BUDGET,
                    "seed": i,
                    "label": kind,
                    **({"timeout_s": 1.0} if kind in MISBEHAVING else {}),
                }
            )
        rec = Recorder()
        ids, progress, load_s = run_load(base, key, plan, rec)
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60) as http:
            listed = [a for a in list_all(http, Recorder()) if a.get("label") is not None]
        by_id = Counter(a["id"] for a in listed)
        statuses = Counter(a["status"] for a in listed)
        expected = {"cpu:native/fp32/torch-eager": "consistent", "cpu:avx2/bf16/torch-eager": "inconsistent"}
        good = [a for a in listed if a["label"] in expected]
        right = sum(a["status"] == "done" and a["verdict"] == expected[a["label"]] for a in good)
        bad_ok = all(a["status"] == "failed" for a in listed if a["label"] in MISBEHAVING)
        finished_at = max((t for t, n in progress if n >= len(plan)), default=load_s)
        load = {
            "audits": len(plan),
            "targets": len(targets),
            "misbehaving_targets": len(MISBEHAVING),
            "budget_queries": BUDGET,
            "wall_s": round(load_s, 1),
            "audits_per_minute": round(len(plan) / load_s * 60, 1),
            "counts": {
                "created": len(set(ids)),
                "listed": len(by_id),
                **dict(statuses),
                "lost": len(set(ids) - set(by_id)),
                "duplicated": sum(n - 1 for n in by_id.values() if n > 1),
            },
            "good_target_verdicts_right": f"{right}/{len(good)}",
            "misbehaving_failed_only_their_own": bad_ok,
            "api_latency": {kind: percentiles(v) for kind, v in rec.latency.items()},
            "api_latency_all": percentiles([x for v in rec.latency.values() for x in v]),
            "api_errors": dict(rec.errors),
            "progress": [(round(t, 2), n) for t, n in progress],
            "all_finished_by_s": round(finished_at, 1),
        }
        print(json.dumps({k: v for k, v in load.items() if k != "progress"}, indent=1), file=sys.stderr)

        # -- phase 2: kill the API mid-run, restart, account for every audit ------------------------
        fault = run_fault(args.fault_audits, targets, workdir, base, key, api, database, port)
        api = fault.pop("_api")
        api.terminate()
        api.wait(30)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
    result = {
        "benchmark": "service-load",
        "machine": {
            "cpus": os.cpu_count(),
            "python": host_platform.python_version(),
            "system": host_platform.platform(),
        },
        "config": {
            "database": "sqlite (WAL)",
            "workers": 16,
            "per_host": 4,
            "budget_queries": BUDGET,
            "client_threads": {"creators": 8, "readers": 4},
            "targets": {**FARMS, "misbehaving": list(MISBEHAVING)},
        },
        "load": load,
        "fault": fault,
        "seconds": round(time.perf_counter() - wall_start, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "service-load.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    plot(result, args.out / "service-load.png")
    print(f"wrote {args.out / 'service-load.json'} and service-load.png", file=sys.stderr)


def run_fault(
    n: int,
    targets: list[tuple[str, str]],
    workdir: Path,
    base: str,
    key: str,
    api: subprocess.Popen,
    database: str,
    port: int,
) -> dict:
    good = [t for t in targets if t[1] not in MISBEHAVING]
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=base, headers=headers, timeout=60) as http:
        ids = [
            http.post(
                "/v1/audits",
                json={
                    "endpoint": good[i % len(good)][0],
                    "budget": 24,
                    "seed": 1000 + i,
                    "claim": "dtype=fp32",
                    "label": "fault",
                },
                headers={"Idempotency-Key": f"fault-{i}"},
            ).json()["id"]
            for i in range(n)
        ]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # kill once some have ended and others run with answers stored
            audits = [a for a in http.get("/v1/audits", params={"label": "fault", "limit": 200}).json()["data"]]
            ended = sum(a["status"] in FINAL for a in audits)
            running = sum(a["status"] == "running" and a["progress"]["answers"] > 0 for a in audits)
            if ended >= 1 and running >= 1:
                break
            time.sleep(0.02)
    os.kill(api.pid, signal.SIGKILL)
    api.wait(10)
    killed_at = {"ended": ended, "running_with_answers": running}
    from hspi.api import store
    from hspi.api.db import Database

    db = Database(database)
    before = {i: store.answers(db, i) for i in ids}
    states = {i: store.get_audit(db, i).status for i in ids}
    restart_started = time.perf_counter()
    api = start_api(workdir, port, database)
    with httpx.Client(base_url=base, headers=headers, timeout=60) as http:
        # a client that did not see its answer retries with the same key: no duplicate
        again = http.post(
            "/v1/audits",
            json={"endpoint": good[0][0], "budget": 24, "seed": 1000, "claim": "dtype=fp32", "label": "fault"},
            headers={"Idempotency-Key": "fault-0"},
        )
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            audits = [a for a in http.get("/v1/audits", params={"label": "fault", "limit": 200}).json()["data"]]
            if all(a["status"] in FINAL for a in audits):
                break
            time.sleep(0.25)
        audits = {a["id"]: a for a in audits}
        full = {i: http.get(f"/v1/audits/{i}").json() for i in ids}
    recovered_s = time.perf_counter() - restart_started
    prefix_kept = all(
        [(r.probe_id, r.values) for r in before[i]]
        == [(e["probe_id"], e["values"]) for e in (full[i]["report"] or {"evidence": []})["evidence"][: len(before[i])]]
        for i in ids
    )
    stored_once = all(
        [r.index for r in store.answers(db, i)] == list(range(full[i]["progress"]["answers"])) for i in ids
    )
    db.dispose()
    return {
        "_api": api,
        "audits": n,
        "killed_when": killed_at,
        "states_at_kill": dict(Counter(states.values())),
        "answers_stored_at_kill": sum(len(v) for v in before.values()),
        "after_restart": dict(Counter(a["status"] for a in audits.values())),
        "lost": len(set(ids) - set(audits)),
        "duplicated": len(audits) - len(set(ids)),
        "idempotent_retry_same_audit": again.json()["id"] == ids[0],
        "resumed_audits_kept_their_answers": prefix_kept,
        "each_answer_stored_once": stored_once,
        "resumed": sum(full[i]["attempts"] > 1 for i in ids),
        "seconds_from_restart_to_all_ended": round(recovered_s, 1),
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    load = result["load"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    t, n = zip(*load["progress"]) if load["progress"] else ((0,), (0,))
    left.plot(t, n, marker=".")
    left.set_xlabel("seconds since the first request")
    left.set_ylabel("audits ended")
    left.set_title(f"{load['audits']} audits, {load['targets']} targets: {load['audits_per_minute']:.0f} audits/min")
    kinds = [k for k in ("create", "get", "list") if load["api_latency"].get(k, {}).get("n")]
    p50 = [load["api_latency"][k]["p50_ms"] for k in kinds]
    p99 = [load["api_latency"][k]["p99_ms"] for k in kinds]
    x = np.arange(len(kinds))
    right.bar(x - 0.2, p50, 0.4, label="p50")
    right.bar(x + 0.2, p99, 0.4, label="p99")
    right.set_xticks(x)
    right.set_xticklabels([f"{k}\n(n={load['api_latency'][k]['n']})" for k in kinds])
    right.set_ylabel("ms")
    right.set_title("API latency under that load")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
