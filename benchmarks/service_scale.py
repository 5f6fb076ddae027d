"""Scale-out benchmark of the audit service: three `hspi serve` replicas on one PostgreSQL, loopback only.

    HSPI_BENCH_POSTGRES_URL=postgresql+psycopg://user:pw@127.0.0.1/db \\
        python benchmarks/service_scale.py [--audits 500] [--out benchmarks/results/]

The database named there is emptied first (its hspi tables are dropped): give it one of its own.

20 targets, each behind a counter of its in-flight requests: 17 reference servers in two processes
(lm-small on cpu:native/fp32 and on cpu:avx2/bf16) and 3 misbehaving ones (slow past the audit's
timeout, HTTP 500, HTML garbage) in a third.  Three replicas (16 workers each, 2 audits at once per
target address, a per-key cap on queued plus running audits) share one PostgreSQL.  Client
threads spread their requests over the replicas, round robin, with two write keys: creates with an
Idempotency-Key (a 429 or a refused connection is retried on the next replica with the same key),
reads of single audits and list pages.  While the audits run, a sampler reads the running audits
per target address and the active audits per key from the database every 50 ms.  Mid-run one
replica is killed with SIGKILL; the audits it held are followed until they end on another replica.

At the end every planned audit is looked up through its idempotency key and the whole list is read
through the cursor pages: none may be missing or listed twice.  Writes service-scale.json and
service-scale.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform as host_platform
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from service_load import FARMS, Recorder, percentiles  # noqa: E402  (a sibling script, not a package)

ROOT = Path(__file__).resolve().parent.parent
MISBEHAVING = ("slow", "error500", "garbage")
FINAL = ("done", "failed", "cancelled", "interrupted")
REPLICAS = 3
WORKERS = 6  # per replica: 18 at once in all; more only queue on this machine's two cores
BLOCK = 5  # consecutive audits per target: the oldest queued ones crowd a few targets, so the per-host limit binds
PER_HOST = 2
MAX_ACTIVE_PER_KEY = 120
LEASE_S = 3.0
BUDGET = 8
TIME_LIMIT_S = 480.0  # the load phase stops waiting after this


# -- targets that count their in-flight requests ------------------------------------------------------


class CountingApp:
    """An ASGI app's in-flight requests: the most at once, and how many; `GET /_bench/concurrency` tells."""

    def __init__(self, app: Any) -> None:
        self.app, self.now, self.most, self.requests = app, 0, 0, 0
        self.most_at = 0.0  # wall-clock time when the most was first reached

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/_bench/concurrency":
            await _reply(
                send, 200, json.dumps({"most": self.most, "most_at": self.most_at, "requests": self.requests}).encode()
            )
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.now += 1
        self.requests += 1
        if self.now > self.most:
            self.most, self.most_at = self.now, time.time()
        try:
            await self.app(scope, receive, send)
        finally:
            self.now -= 1


async def _reply(send: Any, status: int, body: bytes, ctype: bytes = b"application/json") -> None:
    headers = [(b"content-type", ctype), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def misbehaving_app(kind: str, delay_s: float) -> object:
    async def app(scope: dict, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        if kind == "slow":  # answers late, or stops when the client gives up: only waited-on requests are in flight
            hangup = asyncio.ensure_future(receive())
            done, _ = await asyncio.wait([hangup], timeout=delay_s)
            if not done:
                hangup.cancel()
                await _reply(send, 200, b'{"choices": []}')
        elif kind == "error500":
            await _reply(send, 500, b'{"error": {"message": "internal"}}')
        else:
            await _reply(send, 200, b"<html><body>maintenance</body></html>", b"text/html")

    return app


def serve_targets(kind: str, ports: list[int]) -> None:
    """One process: lm-small on platform `kind` at every port, or the misbehaving targets (one port each)."""
    import uvicorn

    if kind == "misbehaving":
        apps = [CountingApp(misbehaving_app(k, 3.0)) for k in MISBEHAVING]
    else:
        from hspi.collector.target_server import create_target_app
        from hspi.platform import Platform

        inner = create_target_app("lm-small", Platform.parse(kind), top_logprobs=20)
        apps = [CountingApp(inner) for _ in ports]

    async def main() -> None:
        servers = [
            uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=p, log_level="warning", lifespan="off"))
            for app, p in zip(apps, ports)
        ]
        await asyncio.gather(*(s.serve() for s in servers))

    asyncio.run(main())


# -- processes ------------------------------------------------------------------------------------------


def free_ports(n: int) -> list[int]:
    from hspi.loopback import free_port

    ports: set[int] = set()
    while len(ports) < n:
        ports.add(free_port())
    return sorted(ports)


def spawn(args: list[str], env: dict[str, str] | None, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *args],
        env={**os.environ, **(env or {})},
        stdout=open(log, "a"),
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )


def wait_http(url: str, proc: subprocess.Popen, timeout_s: float = 180.0) -> None:
    from hspi.loopback import wait_for_http

    wait_for_http(url, timeout_s, alive=lambda: proc.poll() is None, what=url)


def start_replica(workdir: Path, port: int, database: str) -> subprocess.Popen:
    env = {
        "HSPI_ALLOW_HOSTS": "127.0.0.0/8",
        "HSPI_WORKERS": str(WORKERS),
        "HSPI_PER_HOST": str(PER_HOST),
        "HSPI_MAX_ACTIVE_PER_KEY": str(MAX_ACTIVE_PER_KEY),
        "HSPI_LEASE_S": str(LEASE_S),
        "HSPI_RATE_PER_MINUTE": "1000000",  # the shared rate buckets are used on every request, never binding
        "HSPI_RATE_BURST": "100000",
        "HSPI_BOOTSTRAP_KEY_FILE": str(workdir / "admin.key"),
        "HSPI_SECRET_KEY_FILE": str(workdir / "secret.key"),
    }
    proc = spawn(["-m", "hspi", "serve", "--database", database, "--port", str(port)], env, workdir / f"api-{port}.log")
    wait_http(f"http://127.0.0.1:{port}/readyz", proc)
    return proc


def empty_database(url: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(
            text("DROP TABLE IF EXISTS rate_buckets, audit_answers, audits, scans, api_keys, alembic_version CASCADE")
        )
    engine.dispose()


# -- the client ------------------------------------------------------------------------------------------


class Replicas:
    """Base URLs of the replicas; each request goes to the next one, round robin, skipping the refused."""

    def __init__(self, bases: list[str]) -> None:
        self.bases, self.turn, self.lock = bases, 0, threading.Lock()

    def next(self) -> str:
        with self.lock:
            self.turn += 1
            return self.bases[self.turn % len(self.bases)]


def call(rec: Recorder, replicas: Replicas, kind: str, method: str, path: str, key: str, **kwargs: Any):
    """One API call on the next replica; a refused connection (the killed one) goes to the next, not timed."""
    headers = {"Authorization": f"Bearer {key}", **kwargs.pop("headers", {})}
    for _ in range(len(replicas.bases)):
        base = replicas.next()
        started = time.perf_counter()
        try:
            response = httpx.request(
                method,
                base + path,
                headers=headers,
                timeout=60,
                **kwargs,
            )
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError) as exc:
            with rec.lock:
                rec.errors[f"{kind}: {type(exc).__name__} (a replica down)"] += 1
            continue
        elapsed = (time.perf_counter() - started) * 1000
        with rec.lock:
            if response.status_code >= 500:
                rec.errors[f"{kind}: HTTP {response.status_code}"] += 1
            rec.latency[kind].append(elapsed)
        return response
    return None


def run_load(replicas: Replicas, keys: list[str], plan: list[dict], rec: Recorder, state: dict) -> dict[int, str]:
    """Create the planned audits from 8 threads while 4 read; wait until every one has ended."""
    ids: dict[int, str] = {}
    lock = threading.Lock()
    queue = list(enumerate(plan))
    capped: Counter[str] = Counter()

    def creator() -> None:
        while True:
            with lock:
                if not queue:
                    return
                i, body = queue.pop(0)
            key = keys[i % len(keys)]
            r = call(rec, replicas, "create", "POST", "/v1/audits", key, json=body,
                     headers={"Idempotency-Key": f"scale-{i}"})  # fmt: skip
            if r is not None and r.status_code in (200, 202):
                with lock:
                    ids[i] = r.json()["id"]
                continue
            if r is not None and r.status_code == 429:
                with lock:
                    capped[r.json()["detail"].split(";")[0].split(" has ")[0]] += 1
                time.sleep(0.5)  # the key is at its cap: wait for some of its audits to end
            with lock:
                queue.append((i, body))  # retried with the same idempotency key: never twice

    def reader(n: int) -> None:
        rng = random.Random(n)
        while not state["all_ended"].is_set():
            with lock:
                known = list(ids.values())
            if known:
                call(rec, replicas, "get", "GET", f"/v1/audits/{rng.choice(known)}", keys[n % len(keys)])
            if n == 0:
                call(rec, replicas, "list", "GET", "/v1/audits", keys[0], params={"limit": 100, "status": "running"})
                time.sleep(0.2)
            else:
                time.sleep(0.05)

    threads = [threading.Thread(target=creator) for _ in range(8)]
    threads += [threading.Thread(target=reader, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads[:8]:
        t.join()
    state["created_all"].set()
    state["all_ended"].wait(TIME_LIMIT_S)
    state["all_ended"].set()
    for t in threads[8:]:
        t.join(30)
    state["capped_429"] = dict(capped)
    return ids


def sampler(database: str, state: dict) -> None:
    """Every 50 ms: running audits per origin, active audits per key, ended audits (from the database)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(database, pool_size=1, max_overflow=0)
    started = state["started"]
    with engine.connect() as connection:
        while not state["all_ended"].is_set():
            rows = connection.execute(
                text("SELECT origin, count(*) FROM audits WHERE status = 'running' GROUP BY origin")
            ).all()
            active = connection.execute(
                text(
                    "SELECT owner_key_id, count(*) FROM audits WHERE status IN ('queued', 'running') "
                    "AND label IS NOT NULL GROUP BY owner_key_id"
                )  # fmt: skip
            ).all()
            ended = connection.execute(
                text(
                    "SELECT count(*) FROM audits WHERE label IS NOT NULL AND status IN "
                    "('done', 'failed', 'cancelled', 'interrupted')"
                )  # fmt: skip
            ).scalar()
            connection.commit()
            for origin, n in rows:
                state["running_most"][origin] = max(state["running_most"].get(origin, 0), int(n))
            for key_id, n in active:
                state["active_most"][key_id] = max(state["active_most"].get(key_id, 0), int(n))
            state["running_total_most"] = max(state["running_total_most"], sum(int(n) for _, n in rows))
            state["progress"].append((round(time.perf_counter() - started, 2), int(ended or 0)))
            if state["created_all"].is_set() and ended >= state["planned"]:
                state["all_ended"].set()
            time.sleep(0.05)
    engine.dispose()


def killer(database: str, procs: list[subprocess.Popen], state: dict) -> None:
    """SIGKILL the replica holding the most running audits with stored answers, once a fifth have ended."""
    from sqlalchemy import create_engine, text

    engine = create_engine(database, pool_size=1, max_overflow=0)
    pids = {p.pid: i for i, p in enumerate(procs)}
    with engine.connect() as connection:
        while not state["all_ended"].is_set():
            ended = state["progress"][-1][1] if state["progress"] else 0
            if ended >= state["planned"] // 5:
                rows = connection.execute(
                    text("SELECT id, worker, answers FROM audits WHERE status = 'running' AND label IS NOT NULL")
                ).all()
                connection.commit()
                held: dict[int, list[str]] = {}
                for audit_id, worker, answers in rows:
                    pid = int(worker.split(":")[1])
                    if pid in pids and answers >= 1:
                        held.setdefault(pid, []).append(audit_id)
                if held:
                    pid = max(held, key=lambda p: len(held[p]))
                    os.kill(pid, signal.SIGKILL)
                    state["killed_at_s"] = round(time.perf_counter() - state["started"], 2)
                    state["killed_replica"] = pids[pid]
                    procs[pids[pid]].wait(10)
                    rows = connection.execute(
                        text("SELECT id, answers FROM audits WHERE status = 'running' AND worker LIKE :w"),
                        {"w": f"%:{pid}:%"},
                    ).all()
                    connection.commit()
                    state["killed_held"] = {audit_id: int(answers) for audit_id, answers in rows}
                    state["ended_at_kill"] = ended
                    break
            time.sleep(0.05)
    engine.dispose()


# -- the run -----------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--audits", type=int, default=500)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--why-fewer", default=None, help="written to the JSON when --audits is under the issue's 500")
    parser.add_argument("--targets", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.targets:
        serve_targets(args.targets[0], [int(p) for p in args.targets[1:]])
        return
    database = os.environ.get("HSPI_BENCH_POSTGRES_URL")
    if not database:
        raise SystemExit("set HSPI_BENCH_POSTGRES_URL to a PostgreSQL database of its own (it is emptied first)")

    from hspi.platform import Platform

    wall_start = time.perf_counter()
    load_before = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="hspi-scale-"))
    procs: list[subprocess.Popen] = []
    replicas: list[subprocess.Popen] = []
    targets: list[tuple[str, str, int]] = []  # (url, kind, port)
    try:
        for platform_id, n in FARMS.items():
            ports = free_ports(n)
            env = Platform.parse(platform_id).environment()
            procs.append(spawn([__file__, "--targets", platform_id, *map(str, ports)], env, workdir / "farm.log"))
            targets += [(f"http://127.0.0.1:{p}/v1", platform_id, p) for p in ports]
        bad_ports = free_ports(len(MISBEHAVING))
        procs.append(spawn([__file__, "--targets", "misbehaving", *map(str, bad_ports)], None, workdir / "bad.log"))
        targets += [(f"http://127.0.0.1:{p}/v1", kind, p) for p, kind in zip(bad_ports, MISBEHAVING)]
        for url, kind, _ in targets:
            if kind not in MISBEHAVING:
                wait_http(url + "/models", procs[0] if "fp32" in kind else procs[1])
                httpx.post(url + "/completions", json={"prompt": "a", "max_tokens": 1}, timeout=120)  # warm
        print(f"{len(targets)} targets up after {time.perf_counter() - wall_start:.0f}s", file=sys.stderr)

        empty_database(database)
        api_ports = free_ports(REPLICAS)
        for port in api_ports:  # one after the other: the first migrates and makes the admin key
            replicas.append(start_replica(workdir, port, database))
        bases = [f"http://127.0.0.1:{p}" for p in api_ports]
        admin = (workdir / "admin.key").read_text().strip()
        keys = []
        for n in range(2):
            r = httpx.post(bases[n] + "/v1/keys", json={"name": f"client-{n}", "scopes": ["write"]},
                           headers={"Authorization": f"Bearer {admin}"}, timeout=60)  # fmt: skip
            keys.append(r.json()["key"])
        for base in bases:  # each replica loads the references once, before the clock starts
            warm = httpx.post(base + "/v1/audits", json={"endpoint": targets[0][0], "budget": 2},
                              headers={"Authorization": f"Bearer {admin}"}, timeout=60).json()["id"]  # fmt: skip
            while httpx.get(base + f"/v1/audits/{warm}", headers={"Authorization": f"Bearer {admin}"},
                            timeout=60).json()["status"] not in FINAL:  # fmt: skip
                time.sleep(0.2)
        concurrency_before = target_concurrency(targets)
        print(f"{REPLICAS} replicas up after {time.perf_counter() - wall_start:.0f}s", file=sys.stderr)

        plan = []
        for i in range(args.audits):
            url, kind, _ = targets[(i // BLOCK) % len(targets)]
            # a generous timeout for the reference servers: on a loaded machine they answer late, not wrong
            plan.append({"endpoint": url, "claim": "dtype=fp32", "budget": BUDGET, "seed": i, "label": kind,
                         "timeout_s": 1.0 if kind in MISBEHAVING else 60.0})  # fmt: skip
        state: dict = {
            "started": time.perf_counter(),
            "started_wall": time.time(),
            "planned": len(plan),
            "created_all": threading.Event(),
            "all_ended": threading.Event(),
            "running_most": {},
            "active_most": {},
            "running_total_most": 0,
            "progress": [],
        }
        rec = Recorder()
        watchers = [
            threading.Thread(target=sampler, args=(database, state), daemon=True),
            threading.Thread(target=killer, args=(database, replicas, state), daemon=True),
        ]
        for t in watchers:
            t.start()
        ids = run_load(Replicas(bases), keys, plan, rec, state)
        load_s = time.perf_counter() - state["started"]
        for t in watchers:
            t.join(30)
        concurrency = target_concurrency(targets)
        result = account(database, bases, replicas, keys, admin, plan, ids, state)
    finally:
        for proc in [*replicas, *procs]:
            if proc.poll() is None:
                proc.terminate()
        for proc in [*replicas, *procs]:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
    ended_by = max((t for t, n in state["progress"] if n >= len(plan)), default=load_s)
    by_target = {
        f"127.0.0.1:{port}": {
            "kind": kind,
            "most_running_audits_seen_in_the_database": state["running_most"].get(f"127.0.0.1:{port}", 0),
            "most_in_flight_requests_seen_at_the_target": concurrency[port]["most"],
            "that_most_first_at_s": round(concurrency[port]["most_at"] - state["started_wall"], 1),
            "audits_taken_over_from_the_killed_replica": result["taken_over_by_origin"].get(f"127.0.0.1:{port}", 0),
            "requests": concurrency[port]["requests"] - concurrency_before[port]["requests"],
        }
        for _, kind, port in targets
    }
    most_running = max(v["most_running_audits_seen_in_the_database"] for v in by_target.values())
    most_in_flight = max(v["most_in_flight_requests_seen_at_the_target"] for v in by_target.values())
    out = {
        "benchmark": "service-scale",
        "machine": {
            "cpus": os.cpu_count(),
            "python": host_platform.python_version(),
            "system": host_platform.platform(),
            "note": "a 2-core machine shared with other work",
        },  # fmt: skip
        "config": {
            "database": "postgresql (one server, loopback)",
            "replicas": REPLICAS,
            "workers_per_replica": WORKERS,
            "per_host_limit": PER_HOST,
            "max_active_per_key": MAX_ACTIVE_PER_KEY,
            "lease_s": LEASE_S,
            "budget_queries": BUDGET,
            "plan": f"{BLOCK} consecutive audits per target, targets in turn",
            "audit_timeout_s": {"reference targets": 60.0, "misbehaving targets": 1.0},
            "client": "8 creator and 4 reader threads, each request to the next replica (round robin), 2 write keys",
            "targets": {**FARMS, "misbehaving": list(MISBEHAVING)},
        },
        "replicas": REPLICAS,
        "audits": len(plan),
        "audits_the_issue_asks_for": 500,
        **({"why_fewer": args.why_fewer} if len(plan) < 500 else {}),
        "load_average_1min": {"before": round(load_before[0], 1), "after": round(os.getloadavg()[0], 1)},
        "targets": len(targets),
        "lost": result["lost"],
        "duplicated": result["duplicated"],
        "per_host_limit": {
            "limit": PER_HOST,
            "most_running_audits_per_target_address": most_running,
            "most_in_flight_requests_per_target": most_in_flight,
            "held_in_the_database": most_running <= PER_HOST,
            "held_at_the_targets": most_in_flight <= PER_HOST,
            "targets_over_the_limit_in_flight": {
                k: {
                    n: v[n]
                    for n in (
                        "most_in_flight_requests_seen_at_the_target",
                        "that_most_first_at_s",
                        "audits_taken_over_from_the_killed_replica",
                    )
                }
                for k, v in by_target.items()
                if v["most_in_flight_requests_seen_at_the_target"] > PER_HOST
            },  # fmt: skip
            "killed_at_s": result["killed"]["at_s"],
            "most_running_audits_over_all_targets": state["running_total_most"],
            "how": "running audits per origin sampled from the database every 50 ms; in-flight requests "
            "counted by each target itself (every request, not sampled); a request counts until the target has answered "
            "it, also when its client is gone (the reference server computes an answer whose client died)",
            "by_target": by_target,
        },
        "per_key_cap": {
            "cap": MAX_ACTIVE_PER_KEY,
            "most_active_audits_per_key": state["active_most"],
            "held": all(n <= MAX_ACTIVE_PER_KEY for n in state["active_most"].values()),
            "creates_answered_429_at_the_cap": sum(state.get("capped_429", {}).values()),
        },
        "audits_per_minute": round(len(plan) / ended_by * 60, 1),
        "all_ended_by_s": round(ended_by, 1),
        "api_latency_all": percentiles([x for v in rec.latency.values() for x in v]),
        "api_latency": {kind: percentiles(v) for kind, v in rec.latency.items()},
        "api_errors": dict(rec.errors),
        "killed_replica": result["killed"],
        "outcomes": result["outcomes"],
        "verdicts": result["verdicts"],
        "progress": state["progress"][:: max(1, len(state["progress"]) // 400)],
        "seconds": round(time.perf_counter() - wall_start, 1),
    }
    print(json.dumps({k: v for k, v in out.items() if k != "progress"}, indent=1), file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "service-scale.json").write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    plot(out, args.out / "service-scale.png")
    print(f"wrote {args.out / 'service-scale.json'} and service-scale.png", file=sys.stderr)


def target_concurrency(targets: list[tuple[str, str, int]]) -> dict[int, dict]:
    return {port: httpx.get(f"http://127.0.0.1:{port}/_bench/concurrency", timeout=30).json() for _, _, port in targets}


def account(
    database: str, bases: list[str], replicas: list[subprocess.Popen], keys: list[str], admin: str,
    plan: list[dict], ids: dict[int, str], state: dict,
) -> dict:  # fmt: skip
    """Every planned audit once, ended; the killed replica's audits followed to their end."""
    from sqlalchemy import create_engine, text

    alive = next(b for b, p in zip(bases, replicas) if p.poll() is None)
    headers = {"Authorization": f"Bearer {admin}"}
    listed: list[dict] = []
    cursor = None
    with httpx.Client(base_url=alive, headers=headers, timeout=60) as http:
        while True:
            page = http.get("/v1/audits", params={"limit": 200, **({"cursor": cursor} if cursor else {})}).json()
            listed += [a for a in page["data"] if a["label"] is not None]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        # a client that did not see its answer retries with the same key, on any replica: the same audit
        again = [
            http.post(
                "/v1/audits",
                json=plan[i],
                headers={"Authorization": f"Bearer {keys[i % len(keys)]}", "Idempotency-Key": f"scale-{i}"},
            )
            .json()
            .get("id")
            == ids.get(i)  # fmt: skip
            for i in range(0, len(plan), max(1, len(plan) // 20))
        ]
        held = state.get("killed_held", {})
        followed = {i: http.get(f"/v1/audits/{i}").json() for i in held}
    by_id = Counter(a["id"] for a in listed)
    engine = create_engine(database, pool_size=1, max_overflow=0)
    with engine.connect() as connection:
        # each stored answer once: indices 0..n-1 without a gap or a repeat, n the audit's own count
        broken = (
            connection.execute(
                text(
                    "SELECT a.id FROM audits a LEFT JOIN audit_answers x ON x.audit_id = a.id WHERE a.label IS NOT NULL "
                    "GROUP BY a.id, a.answers HAVING count(x.id) <> a.answers OR "
                    "coalesce(max(x.idx), -1) <> a.answers - 1"
                )  # fmt: skip
            )
            .scalars()
            .all()
        )
        taken_over = connection.execute(
            text("SELECT origin, count(*) FROM audits WHERE id = ANY(:ids) GROUP BY origin"), {"ids": list(held)}
        ).all()
        held_answers_kept = all(
            connection.execute(text("SELECT count(*) FROM audit_answers WHERE audit_id = :i"), {"i": audit_id}).scalar()
            >= n
            for audit_id, n in held.items()
        )
    engine.dispose()
    # at BUDGET queries the class's false-match bound (α = 0.01) is out of reach, but the claimed head, dtype, has
    # its own bound, met in a few answers: the claim dtype=fp32 is judged on it, consistent for the fp32 targets
    # and inconsistent for the bf16 ones, the leading dtype guess the served one
    expected = {"cpu:native/fp32/torch-eager": "fp32", "cpu:avx2/bf16/torch-eager": "bf16"}
    good = [a for a in listed if a["label"] in expected]

    def right(a: dict) -> bool:
        leading = (a.get("progress") or {}).get("leading") or {}
        served = expected[a["label"]]
        verdict = "consistent" if served == "fp32" else "inconsistent"
        return a["status"] == "done" and a["verdict"] == verdict and leading.get("dtype") == served

    return {
        "taken_over_by_origin": {origin: int(n) for origin, n in taken_over},
        "lost": len(set(ids.values()) - set(by_id)) + (len(plan) - len(ids)),
        "duplicated": sum(n - 1 for n in by_id.values() if n > 1) + max(0, len(by_id) - len(plan)),
        "outcomes": {
            "created": len(set(ids.values())),
            "listed": len(by_id),
            "statuses": dict(Counter(a["status"] for a in listed)),
            "idempotent_retries_same_audit": f"{sum(again)}/{len(again)}",
            "audits_with_answers_not_stored_exactly_once": len(broken),
        },
        "verdicts": {
            "good_targets_right": f"{sum(right(a) for a in good)}/{len(good)}",
            "good_targets_right_means": "done; the claim dtype=fp32 consistent on fp32 targets and inconsistent on "
            "bf16 ones (the dtype head's own bound met; the class's is out of reach at this budget); leading dtype "
            "guess the one served",
            "misbehaving_targets_failed": f"{sum(a['status'] == 'failed' for a in listed if a['label'] in MISBEHAVING)}"
            f"/{sum(a['label'] in MISBEHAVING for a in listed)}",
        },
        "killed": {
            "replica": state.get("killed_replica"),
            "at_s": state.get("killed_at_s"),
            "audits_ended_before_the_kill": state.get("ended_at_kill"),
            "audits_it_held": len(held),
            "answers_they_had_stored": sum(held.values()),
            "their_ends": dict(Counter(a["status"] for a in followed.values())),
            "resumed_on_another_replica": sum(a["attempts"] >= 2 for a in followed.values()),
            "their_answers_kept": held_answers_kept,
            "accounted_for": all(a["status"] in FINAL for a in followed.values()) and len(followed) == len(held),
            "reasons_of_those_not_done": sorted({a["error"] for a in followed.values() if a["status"] != "done"}),
        },
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(16, 4.2))
    t, n = zip(*result["progress"]) if result["progress"] else ((0,), (0,))
    left.plot(t, n, marker=".", markersize=2)
    killed = result["killed_replica"]
    if killed["at_s"] is not None:
        left.axvline(killed["at_s"], color="red", linestyle="--",
                     label=f"replica {killed['replica']} killed ({killed['audits_it_held']} audits held)")  # fmt: skip
        left.legend(loc="lower right")
    left.set_xlabel("seconds since the first request")
    left.set_ylabel("audits ended")
    left.set_title(f"{result['audits']} audits, {result['replicas']} replicas: {result['audits_per_minute']:.0f}/min")
    limit = result["per_host_limit"]
    names = list(limit["by_target"])
    x = np.arange(len(names))
    middle.bar(x - 0.2, [limit["by_target"][k]["most_running_audits_seen_in_the_database"] for k in names], 0.4,
               label="running audits (database)")  # fmt: skip
    middle.bar(x + 0.2, [limit["by_target"][k]["most_in_flight_requests_seen_at_the_target"] for k in names], 0.4,
               label="in-flight requests (target)")  # fmt: skip
    middle.axhline(limit["limit"], color="red", linestyle="--", label=f"per-host limit {limit['limit']}")
    middle.set_xticks(x)
    middle.set_xticklabels([k.rsplit(":", 1)[1] for k in names], rotation=90, fontsize=7)
    middle.set_xlabel("target port")
    middle.set_ylabel("most at once")
    middle.set_title("per target, over all replicas")
    middle.legend(fontsize=7, loc="lower right")
    kinds = [k for k in ("create", "get", "list") if result["api_latency"].get(k, {}).get("n")]
    x = np.arange(len(kinds))
    right.bar(x - 0.2, [result["api_latency"][k]["p50_ms"] for k in kinds], 0.4, label="p50")
    right.bar(x + 0.2, [result["api_latency"][k]["p99_ms"] for k in kinds], 0.4, label="p99")
    right.set_xticks(x)
    right.set_xticklabels([f"{k}\n(n={result['api_latency'][k]['n']})" for k in kinds])
    right.set_ylabel("ms")
    right.set_title("API latency under that load")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
