"""Background audits: a pool of worker threads fed from the database, with a limit per target host.

The audits table is the queue, so audits survive a restart of the API process:

- `submit` only wakes the dispatcher; the audit is already stored as `queued`.
- The dispatcher claims queued audits whose origin (checked address:port) is below `per_host`
  running audits, up to `workers` at once in this process: a slow endpoint holds its own slots,
  never the others'.  The running audits of an origin are counted in the database at the claim,
  so replicas of the service on one database share the per-host limit (`store.claim`).
- API keys take turns (`store.queued`): the key with the fewest running audits over every replica
  goes first, ties oldest first; and one key holds at most `workers - 1` of this pool's slots
  (1 when `workers` is 1), so another key's audit starts at once rather than behind a key's
  stalled ones (benchmarks/results/queue-fairness.json).  Audits without a key (a scan's) are not
  counted per key.
- A worker replays the audit's stored answers (`run_audit(prior=...)`), so a resumed audit never
  asks a probe twice and its budget counts what was spent before; every new answer is stored as it
  arrives, with the lease renewed.  A heartbeat renews the leases of audits waiting on slow targets.
- Cancel takes effect at the next answer; a clean shutdown gives running audits back to the queue;
  after a crash their leases run out and `recover_expired` requeues them (on any process sharing
  the database).  An audit started `max_attempts` times without finishing (a crash loop), or any
  restarted audit under `on_restart="interrupt"`, ends `interrupted` with the answers it stored.

Workers stop a running audit through its `should_stop` callable, which the audit checks between
answers: it ends `interrupted` with the report of the evidence so far.

A model-agnostic audit (at most a handful of requests, kept in its report rather than as answers)
cannot resume: restarted after it sent a query, it ends `interrupted` rather than spend its budget
twice, and a shutdown ends it `interrupted` with the checks read so far.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable

import httpx

from hspi.api import store
from hspi.api.db import Audit, Database
from hspi.api.security import EndpointGuard, Vault
from hspi.audit import AuditReport, AuditSettings, QueryRecord, run_audit
from hspi.audit.agnostic import AgnosticRecord, AgnosticReport, AgnosticSettings, run_agnostic_audit
from hspi.audit.engine import report_from
from hspi.audit.references import ReferenceStore
from hspi.collector.models import model_spec
from hspi.errors import HspiError

log = logging.getLogger("hspi.api.workers")

DISPATCH_POLL_S = 0.5  # the dispatcher also wakes on every submit and every finished audit
STOP_GRACE_S = 10.0  # a clean shutdown waits this long for running audits to reach their next answer


class _Run:
    def __init__(self, audit_id: str, origin: str, owner: str | None) -> None:
        self.audit_id, self.origin, self.owner = audit_id, origin, owner
        self.why: str | None = None  # cancel | shutdown | lost | finalize


class AuditWorkers:
    def __init__(
        self,
        db: Database,
        vault: Vault,
        guard: EndpointGuard,
        *,
        workers: int = 8,
        per_host: int = 2,
        lease_s: float = 15.0,
        max_attempts: int = 3,
        on_restart: str = "resume",
        scan_id: str | None = None,
        transport_factory: Callable[[], httpx.BaseTransport] | None = None,
        references: ReferenceStore | None = None,
    ) -> None:
        """`scan_id`: run that scan's audits only (None: the audits made through the API)."""
        self.db, self.vault, self.guard, self.scan_id = db, vault, guard, scan_id
        self.workers, self.per_host, self.lease_s = workers, per_host, lease_s
        self.max_attempts, self.on_restart = max_attempts, on_restart
        self.transport_factory = transport_factory or guard.transport  # every connection through the guard
        self.references = references or ReferenceStore()  # shared by every worker thread
        self.worker_id = f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._runs: dict[str, _Run] = {}
        self._by_origin: Counter[str] = Counter()
        self._by_key: Counter[str | None] = Counter()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self.started = False
        self.finished = 0  # audits this process ended (for /readyz and tests)

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        if self.started:
            return
        recovered = store.recover_expired(self.db)
        if recovered:
            log.info("requeued %d audits whose worker stopped", len(recovered))
        self._stopping.clear()
        for target, name in ((self._dispatch_loop, "hspi-dispatch"), (self._heartbeat_loop, "hspi-heartbeat")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        self.started = True

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop taking audits; running ones go back to the queue at their next answer (or by lease)."""
        if not self.started:
            return
        self._stopping.set()
        with self._lock:
            for run in self._runs.values():
                run.why = run.why or "shutdown"
        self._wake.set()
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            with self._lock:
                if not self._runs:
                    break
            time.sleep(0.05)
        for thread in self._threads:
            thread.join(timeout=2)
        self._threads.clear()
        self.started = False

    @property
    def alive(self) -> bool:
        return self.started and all(t.is_alive() for t in self._threads)

    def running(self) -> dict[str, str]:
        with self._lock:
            return {run.audit_id: run.origin for run in self._runs.values()}

    def submit(self, audit_id: str | None = None) -> None:
        self._wake.set()

    def cancel(self, audit_id: str) -> None:
        """Stop a running audit of this process at its next answer (the database flag reaches others)."""
        with self._lock:
            run = self._runs.get(audit_id)
            if run is not None:
                run.why = run.why or "cancel"

    # -- the dispatcher ---------------------------------------------------------------------------
    @property
    def per_key(self) -> int:
        """Slots of this pool one API key may hold: one is kept for the other keys."""
        return max(1, self.workers - 1)

    def _dispatch_loop(self) -> None:
        next_recovery = time.monotonic() + self.lease_s / 2
        while not self._stopping.is_set():
            try:
                if time.monotonic() >= next_recovery:
                    next_recovery = time.monotonic() + self.lease_s / 2
                    if store.recover_expired(self.db):
                        self._wake.set()
                started = self._dispatch_once()
            except Exception:  # noqa: BLE001 - a database hiccup must not kill the dispatcher
                log.exception("dispatch failed; retrying")
                started = 0
            if not started:
                self._wake.wait(DISPATCH_POLL_S)
                self._wake.clear()

    def _dispatch_once(self) -> int:
        with self._lock:
            free = self.workers - len(self._runs)
        if free <= 0 or self._stopping.is_set():
            return 0
        started = 0
        for audit_id, origin, owner in store.queued(
            self.db,
            limit=free * self.per_host + 8,
            per_host=self.per_host,
            scan_id=self.scan_id,
            worker=self.worker_id,
            per_key=self.per_key,
        ):
            with self._lock:
                if len(self._runs) >= self.workers:
                    break
                if self._by_origin[origin] >= self.per_host:  # full here already: spare the database a claim
                    continue
                if owner is not None and self._by_key[owner] >= self.per_key:  # claimed in this round already
                    continue
            audit = store.claim(self.db, audit_id, origin, self.worker_id, self.lease_s, per_host=self.per_host)
            if audit is None:
                continue
            run = _Run(audit_id, origin, owner)
            with self._lock:
                self._runs[audit_id] = run
                self._by_origin[origin] += 1
                self._by_key[owner] += 1
            threading.Thread(
                target=self._run_guarded, args=(audit, run), name=f"hspi-audit-{audit_id[:8]}", daemon=True
            ).start()
            started += 1
        return started

    def _heartbeat_loop(self) -> None:
        while not self._stopping.wait(self.lease_s / 3):
            try:
                store.renew(self.db, self.worker_id, list(self.running()), self.lease_s)
            except Exception:  # noqa: BLE001
                log.exception("lease renewal failed")

    # -- one audit ----------------------------------------------------------------------------------
    def _run_guarded(self, audit: Audit, run: _Run) -> None:
        try:
            self._run(audit, run)
        except Exception as exc:  # noqa: BLE001 - a bug fails this audit, never the pool
            log.exception("audit %s failed", audit.id)
            try:
                store.finish(self.db, audit.id, self.worker_id, "failed", error=f"internal error: {type(exc).__name__}")
            except Exception:  # noqa: BLE001
                log.exception("could not record the failure of audit %s", audit.id)
        finally:
            with self._lock:
                self._runs.pop(run.audit_id, None)
                self._by_origin[run.origin] -= 1
                if self._by_origin[run.origin] <= 0:
                    del self._by_origin[run.origin]
                self._by_key[run.owner] -= 1
                if self._by_key[run.owner] <= 0:
                    del self._by_key[run.owner]
                self.finished += 1
            self._wake.set()

    def _run(self, audit: Audit, run: _Run) -> None:
        if store.is_agnostic(audit.settings):
            self._run_agnostic(audit, run)
            return
        settings = AuditSettings.model_validate(audit.settings)
        prior = store.answers(self.db, audit.id, limit=1_000_000)
        if audit.cancel_requested:
            self._end(
                audit,
                run,
                "cancelled",
                report_from(settings, prior, self.references, "cancelled through the API"),
                "cancelled through the API",
            )
            return
        if audit.attempts > self.max_attempts:
            why = f"started {audit.attempts - 1} times without finishing (the service kept stopping): given up"
            self._end(audit, run, "interrupted", report_from(settings, prior, self.references, why), why)
            return
        if audit.attempts > 1 and self.on_restart == "interrupt":
            why = "the service restarted while the audit ran; the answers stored before are kept"
            self._end(audit, run, "interrupted", report_from(settings, prior, self.references, why), why)
            return
        self._warm(settings)
        try:
            api_key = self.vault.decrypt(audit.credential) if audit.credential else None
            self.guard.check(settings.endpoint)  # again now: the name may resolve elsewhere than at creation
        except HspiError as exc:
            self._end(
                audit,
                run,
                "failed",
                report_from(settings, prior, self.references, str(exc)) if prior else None,
                str(exc),
            )
            return

        def on_query(record: QueryRecord, _: float) -> None:
            if record.index < len(prior):  # replayed: stored already
                return
            held, cancel = store.store_answer(self.db, audit.id, self.worker_id, record, self.lease_s)
            if not held:
                run.why = "lost"
            elif cancel:
                run.why = run.why or "cancel"

        try:
            report = run_audit(
                settings,
                references=self.references,
                api_key=api_key,
                on_query=on_query,
                should_stop=lambda: run.why is not None,
                prior=prior,
                transport=self.transport_factory(),
            )
        except HspiError as exc:  # e.g. stored answers that no longer fit the reference pool
            self._end(audit, run, "failed", None, str(exc))
            return
        finally:
            del api_key
        stopped_here = report.stop == "interrupted"  # else it ended on its own, whatever was asked meanwhile
        if run.why == "lost":
            log.warning("audit %s: lease lost to another worker; its answers are kept", audit.id)
        elif stopped_here and run.why == "shutdown":
            store.release(self.db, audit.id, self.worker_id)
        elif stopped_here and run.why == "cancel":
            reason = "cancelled through the API; the answers so far are kept"
            self._end(audit, run, "cancelled", report.model_copy(update={"reason": reason}), reason)
        elif report.stop == "target-error":
            self._end(audit, run, "failed", report, report.reason)
        else:
            self._end(audit, run, "done", report, None)

    def _run_agnostic(self, audit: Audit, run: _Run) -> None:
        settings = AgnosticSettings.model_validate(audit.settings)
        if audit.cancel_requested:
            self._end(audit, run, "cancelled", None, "cancelled through the API")
            return
        restarted = audit.attempts > 1 and (audit.queries > 0 or self.on_restart == "interrupt")
        if restarted or audit.attempts > self.max_attempts:
            why = (
                f"the service restarted while this model-agnostic audit ran ({audit.queries} queries sent): "
                "it cannot resume, and starting again would spend its budget twice"
            )
            self._end(audit, run, "interrupted", None, why)
            return
        try:
            api_key = self.vault.decrypt(audit.credential) if audit.credential else None
            self.guard.check(settings.endpoint)  # again now: the name may resolve elsewhere than at creation
        except HspiError as exc:
            self._end(audit, run, "failed", None, str(exc))
            return

        def on_record(record: AgnosticRecord) -> None:
            held, cancel = store.store_progress(
                self.db, audit.id, self.worker_id, record.queries_so_far, record.index + 1, self.lease_s
            )
            if not held:
                run.why = "lost"
            elif cancel:
                run.why = run.why or "cancel"

        try:
            report = run_agnostic_audit(
                settings,
                api_key=api_key,
                transport=self.transport_factory(),
                on_record=on_record,
                should_stop=lambda: run.why is not None,
            )
        finally:
            del api_key
        stopped_here = report.stop == "interrupted"
        if run.why == "lost":
            log.warning("audit %s: lease lost to another worker", audit.id)
        elif stopped_here and run.why == "cancel":
            reason = "cancelled through the API; the checks read from the requests so far"
            self._end(audit, run, "cancelled", report.model_copy(update={"reason": reason}), reason)
        elif stopped_here:
            reason = "the service stopped while the audit ran; the checks read from the requests so far"
            self._end(audit, run, "interrupted", report.model_copy(update={"reason": reason}), reason)
        elif report.stop == "target-error":
            self._end(audit, run, "failed", report, report.reason)
        else:
            self._end(audit, run, "done", report, None)

    def _warm(self, settings: AuditSettings) -> None:
        """Load a model's references before its audit runs (the store loads each once, under its lock)."""
        try:
            tier = settings.max_tier or ("topk20" if model_spec(settings.model).input_kind == "tokens" else "logits")
            self.references.references(settings.model, settings.dataset).book(tier)
        except HspiError:
            return  # the audit itself reports what is wrong

    def _end(
        self, audit: Audit, run: _Run, status: str, report: AuditReport | AgnosticReport | None, error: str | None
    ) -> None:
        if not store.finish(self.db, audit.id, self.worker_id, status, report=report, error=error):
            log.warning("audit %s: lease lost before it could end", audit.id)
