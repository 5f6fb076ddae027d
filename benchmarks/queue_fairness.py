"""A legitimate audit's queue wait while another key runs stalling audits at its cap (loopback only).

    python benchmarks/queue_fairness.py [--out benchmarks/results/]

One `hspi serve` (SQLite, 4 workers, 2 audits at once per target address) and, on 127.0.0.1, a real
lm-small target (`hspi target serve`) and 12 stalling targets (each answers a request after 30 s).
Key A creates 12 audits, one per stalling target; 3 s later key B creates one audit of the real
target.  B's queue wait is its `started_at - created_at` as the API reports it.  Run twice: with the
per-key cap on active (queued or running) audits at 2 (`HSPI_MAX_ACTIVE_PER_KEY`), and at 100 (the
default: no cap in effect), each with a fresh service and database.  A's audits are cancelled at the end.

At the default it is the dispatcher that bounds B's wait (api/workers.py, `store.queued`): keys take
turns at the queue, and one key holds at most `workers - 1` of a pool's slots, so A runs 3 of its 12
audits and B's starts in the fourth slot.  Before that dispatcher (oldest queued first), B waited
88.4 s here (commit 5d30ac2).  Writes queue-fairness.json.
"""

from __future__ import annotations

import argparse
import json
import platform as host_platform
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from service_load import free_ports, spawn, wait_http  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STALL_S = 30.0
STALLING = 12
WORKERS = 4
B_DEADLINE_S = 240.0


def stall(ports: list[int]) -> list[ThreadingHTTPServer]:
    """Servers that answer every request after STALL_S seconds (a provider that hangs)."""

    class Slow(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            time.sleep(STALL_S)
            body = b'{"choices": []}'
            try:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except OSError:
                pass

        def log_message(self, *args: object) -> None:
            pass

    servers = []
    for port in ports:
        server = ThreadingHTTPServer(("127.0.0.1", port), Slow)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    return servers


def scenario(cap: int, target: str, stalls: list[str], workdir: Path) -> dict:
    port = free_ports(1)[0]
    env = {
        "HSPI_ALLOW_HOSTS": "127.0.0.0/8",
        "HSPI_WORKERS": str(WORKERS),
        "HSPI_PER_HOST": "2",
        "HSPI_MAX_ACTIVE_PER_KEY": str(cap),
        "HSPI_RATE_PER_MINUTE": "100000",
        "HSPI_RATE_BURST": "10000",
        "HSPI_BOOTSTRAP_KEY_FILE": str(workdir / "admin.key"),
        "HSPI_SECRET_KEY_FILE": str(workdir / "secret.key"),
    }
    database = f"sqlite:///{workdir / 'hspi.db'}"
    api = spawn(["-m", "hspi", "serve", "--database", database, "--port", str(port)], env, workdir / "api.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/readyz", api)
        admin = {"Authorization": f"Bearer {(workdir / 'admin.key').read_text().strip()}"}
        with httpx.Client(base_url=base, timeout=30) as http:
            keys = {
                name: http.post("/v1/keys", json={"name": name, "scopes": ["write"]}, headers=admin).json()["key"]
                for name in ("A", "B")
            }
            head = {name: {"Authorization": f"Bearer {key}"} for name, key in keys.items()}
            a_ids, refused = [], 0
            for url in stalls:
                r = http.post("/v1/audits", json={"endpoint": url, "budget": 8, "timeout_s": 60}, headers=head["A"])
                if r.status_code == 202:
                    a_ids.append(r.json()["id"])
                elif r.status_code == 429:
                    refused += 1
                else:
                    raise SystemExit(f"key A's create answered {r.status_code}: {r.text}")
            time.sleep(3.0)
            a_running = sum(http.get(f"/v1/audits/{i}", headers=head["A"]).json()["status"] == "running" for i in a_ids)
            b = http.post("/v1/audits", json={"endpoint": target, "budget": 8, "seed": 0}, headers=head["B"]).json()
            started = time.monotonic()
            while True:
                got = http.get(f"/v1/audits/{b['id']}", headers=head["B"]).json()
                if got["status"] in ("done", "failed", "cancelled", "interrupted"):
                    break
                if time.monotonic() - started > B_DEADLINE_S:
                    break
                time.sleep(0.25)
            for i in a_ids:
                http.post(f"/v1/audits/{i}/cancel", headers=head["A"])

        def ts(value: str | None) -> float | None:
            import datetime as dt

            return None if value is None else dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()

        created, began, ended = ts(got["created_at"]), ts(got.get("started_at")), ts(got.get("finished_at"))
        return {
            "max_active_per_key": cap,
            "a_created": len(a_ids),
            "a_refused_429": refused,
            "a_running_when_b_created": a_running,
            "b_status": got["status"],
            "b_verdict": got.get("verdict"),
            "b_queue_wait_s": None if began is None or created is None else round(began - created, 2),
            "b_started": began is not None,
            "b_end_to_end_s": None if ended is None or created is None else round(ended - created, 2),
            "b_waited_past_deadline": got["status"] not in ("done", "failed", "cancelled", "interrupted"),
        }
    finally:
        api.terminate()
        api.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    started = time.monotonic()
    ports = free_ports(STALLING + 1)
    servers = stall(ports[1:])
    target_proc = spawn(
        [
            "-m",
            "hspi",
            "target",
            "serve",
            "--model",
            "lm-small",
            "--platform",
            "cpu:native/fp32/torch-eager",
            "--port",
            str(ports[0]),
        ]
    )
    target = f"http://127.0.0.1:{ports[0]}/v1"
    try:
        wait_http(f"{target}/models", target_proc, timeout_s=300)
        rows = []
        for cap in (2, 100):
            with tempfile.TemporaryDirectory() as tmp:
                rows.append(scenario(cap, target, [f"http://127.0.0.1:{p}/v1" for p in ports[1:]], Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        target_proc.terminate()
        for server in servers:
            server.shutdown()
    result = {
        "benchmark": "queue-fairness",
        "what": "a legitimate audit's queue wait (started_at - created_at) while another key runs stalling audits",
        "setup": {
            "workers": WORKERS,
            "per_host": 2,
            "dispatch": "keys take turns (fewest running first); one key holds at most workers - 1 slots",
            "stalling_targets": STALLING,
            "stall_s_per_request": STALL_S,
            "b_target": "hspi target serve lm-small cpu:native/fp32/torch-eager",
            "b_deadline_s": B_DEADLINE_S,
        },
        "machine": {
            "cpus": 2,
            "python": host_platform.python_version(),
            "note": "a 2-core machine shared with other work",
        },
        "scenarios": rows,
        "seconds": round(time.monotonic() - started, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "queue-fairness.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out / 'queue-fairness.json'}")


if __name__ == "__main__":
    main()
