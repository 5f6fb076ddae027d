"""`hspi scan`: audit a list of endpoints (YAML or CSV) with bounded concurrency; resumable.

    targets file ──> one audit row per target (scans + audits tables, answers stored as they arrive)
                 ──> AuditWorkers(scan_id=...) run them, `per_host` at a time per host:port
                 ──> one JSONL line per finished target (entry_type "audit"), after a header line
                     (entry_type "scan") that names the scan, so running the same command again
                     resumes: finished targets are skipped, interrupted ones resume from their answers

A target's API key never sits in the targets file: `api_key_env` names the environment variable
that holds it, and it is stored only encrypted, until its audit ends.  The scan runs as the
operator, so it may audit private endpoints (only cloud metadata addresses are refused) unless an
allowlist is given.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hspi.api import store
from hspi.api.db import Database
from hspi.api.public_views import stored_agnostic_public, stored_report_public
from hspi.api.security import EndpointGuard, EndpointRefused, Vault
from hspi.api.workers import AuditWorkers
from hspi.audit import AuditSettings
from hspi.audit.agnostic import DEFAULT_BUDGET as AGNOSTIC_BUDGET
from hspi.audit.agnostic import AgnosticSettings
from hspi.audit.claims import parse_claim
from hspi.errors import ConfigError
from hspi.platform import HEADS
from hspi.terms import Tier

OPERATOR_ALLOW = ("0.0.0.0/0", "::/0")  # a scan's default: anything but cloud metadata addresses
POLL_S = 0.25  # how often the scan looks for finished audits
SCAN_FORMAT = "hspi-scan/1"


class ScanTarget(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, max_length=200)
    endpoint: str = Field(max_length=2048)
    model: str = "lm-small"
    agnostic: bool = False  # no model, no claim: what the endpoint's own answers say (8 queries by default)
    agnostic_checks: bool = False  # with a model: also ask determinism and engine after the verdict (<= 6 queries)
    claim: dict[str, str] | str | None = None
    budget: int | None = Field(default=None, ge=1, le=100_000)
    budget_tokens: int | None = Field(default=None, ge=1)
    api: Literal["completions", "chat", "logits"] | None = None  # default: by the model's inputs
    served_model: str | None = None
    max_tier: Literal["logits", "topk20", "topk5", "top1"] | None = None  # default: the richest given
    seed: int | None = Field(default=None, ge=0)
    timeout_s: float = Field(default=10.0, gt=0, le=300)
    min_answers: int = Field(default=2, ge=1, le=64)
    false_match_rate: float = Field(default=0.01, gt=0.0, lt=1.0)
    api_key_env: str | None = Field(
        default=None, max_length=200, description="environment variable with the target's key"
    )

    @property
    def key(self) -> str:
        return self.name or f"{self.endpoint} {'model-agnostic' if self.agnostic else self.model}"

    def check_agnostic(self) -> None:
        if not self.agnostic:
            return
        given = [
            f
            for f in ("model", "claim", "min_answers", "false_match_rate", "agnostic_checks")
            if f in self.model_fields_set
        ]
        if given:
            raise ConfigError(f"{given[0]} does not apply to a model-agnostic target (agnostic: true)")
        if "logits" in (self.api, self.max_tier):
            raise ConfigError("a model-agnostic target is read through an OpenAI-compatible API, not logits")

    def audit_settings(self, options: ScanOptions) -> AuditSettings | AgnosticSettings:
        if self.agnostic:
            return AgnosticSettings(
                endpoint=self.endpoint,
                api=self.api or "completions",  # type: ignore[arg-type]  # logits refused by check_agnostic
                served_model=self.served_model,
                budget_queries=self.budget or AGNOSTIC_BUDGET,
                budget_tokens=self.budget_tokens,
                max_tier=self.max_tier,  # type: ignore[arg-type]  # logits refused by check_agnostic
                timeout_s=self.timeout_s,
                seed=self.seed,
            )
        return AuditSettings(
            endpoint=self.endpoint,
            model=self.model,
            claim=self.claim_dict(),
            budget_queries=self.budget or options.budget,
            budget_tokens=self.budget_tokens,
            api=self.api,
            served_model=self.served_model,
            max_tier=Tier(self.max_tier) if self.max_tier else None,
            seed=self.seed,
            timeout_s=self.timeout_s,
            min_answers=self.min_answers,
            false_match_rate=self.false_match_rate,
            agnostic_checks=self.agnostic_checks,
            dataset=options.dataset,
            classifier=options.classifier,
        )

    def claim_dict(self) -> dict[str, str]:
        if self.claim is None or isinstance(self.claim, str):
            return parse_claim(self.claim)
        bad = [h for h in self.claim if h not in HEADS]
        if bad:
            raise ConfigError(f"claim head {bad[0]!r} is not one of {', '.join(HEADS)}")
        return dict(self.claim)


def load_targets(path: Path) -> list[ScanTarget]:
    """Targets from a YAML list (or `targets:` mapping) or a CSV with a header row; errors name the entry."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the targets file {path}: {exc.strerror}") from None
    if path.suffix.lower() == ".csv":
        rows = list(csv.DictReader(io.StringIO(text)))
        entries = [
            ({k.strip(): v.strip() for k, v in row.items() if k and v not in (None, "")}, f"line {i + 2}")
            for i, row in enumerate(rows)
        ]
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{path} is not valid YAML{where}") from None
        if isinstance(data, dict):
            data = data.get("targets")
        if not isinstance(data, list):
            raise ConfigError(f"{path}: expected a list of targets (or a 'targets:' list)")
        entries = [(entry, f"entry {i + 1}") for i, entry in enumerate(data)]
    targets: list[ScanTarget] = []
    for entry, where in entries:
        if not isinstance(entry, dict):
            raise ConfigError(f"{path} {where}: a target is a mapping with at least 'endpoint'")
        if any(k in entry for k in ("api_key", "key", "token", "target_api_key")):
            raise ConfigError(
                f"{path} {where}: never put a target's key in the file; put it in an environment "
                "variable and name that in api_key_env"
            )
        try:
            target = ScanTarget.model_validate(entry)
            target.check_agnostic()
            target.claim = target.claim_dict()
        except ValidationError as exc:
            first = exc.errors()[0]
            field_ = ".".join(str(p) for p in first["loc"]) or "entry"
            raise ConfigError(f"{path} {where}: {field_}: {first['msg']}") from None
        except ConfigError as exc:
            raise ConfigError(f"{path} {where}: {exc}") from None
        targets.append(target)
    if not targets:
        raise ConfigError(f"{path} lists no targets")
    seen: dict[str, int] = {}
    for i, t in enumerate(targets):
        if t.key in seen:
            raise ConfigError(
                f"{path}: entries {seen[t.key] + 1} and {i + 1} are both {t.key!r}: give them distinct names"
            )
        seen[t.key] = i
    return targets


@dataclass
class ScanOptions:
    out: Path
    concurrency: int = 16
    per_host: int = 4
    budget: int = 64
    allow: tuple[str, ...] = OPERATOR_ALLOW
    lease_s: float = 15.0
    dataset: Path | None = None
    classifier: Path | None = None
    name: str | None = None


@dataclass
class ScanState:
    """What the caller (the CLI's progress bar) sees while the scan runs."""

    scan_id: str
    total: int
    finished: int = 0
    skipped: int = 0  # finished in an earlier run
    queries: int = 0
    budget: int = 0
    results: list[dict[str, Any]] = field(default_factory=list)


def run_scan(
    targets: list[ScanTarget],
    source: Path,
    db: Database,
    vault: Vault,
    options: ScanOptions,
    *,
    on_progress: Callable[[ScanState], None] | None = None,
    transport_factory: Callable[[], httpx.BaseTransport] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> ScanState:
    """Run (or resume) the scan; return when every target has ended, or on KeyboardInterrupt (re-raised)."""
    if options.concurrency < 1 or options.per_host < 1:
        raise ConfigError("--concurrency and --per-host must be at least 1")
    guard = EndpointGuard(options.allow)
    for t in targets:
        guard.split(t.endpoint)  # a malformed URL fails the scan before anything runs
    header, done = _read_jsonl(options.out)
    scan_id = header["scan_id"] if header else uuid.uuid4().hex
    name = options.name or (header or {}).get("name") or source.stem
    store.ensure_scan(db, scan_id, name, str(source), len(targets))
    if header is None:
        _append(
            options.out,
            {
                "entry_type": "scan",
                "format": SCAN_FORMAT,
                "scan_id": scan_id,
                "name": name,
                "source": str(source),
                "started": _now(),
            },
        )
    state = ScanState(scan_id=scan_id, total=len(targets), results=list(done.values()))
    state.finished = state.skipped = len([t for t in targets if t.key in done])
    pending: dict[str, ScanTarget] = {}
    for t in targets:
        if t.key in done:
            continue
        audit = store.scan_audit(db, scan_id, t.key)
        if audit is None:
            settings = t.audit_settings(options)
            secret = target_secret(t)
            host, port = guard.split(t.endpoint)
            try:
                origin = guard.origin(guard.check_host(host, port), port)
            except EndpointRefused:
                origin = f"{host}:{port}"  # its worker refuses it, with the guard's reason, when it starts
            audit, _ = store.create_audit(
                db,
                settings,
                origin=origin,
                label=t.name,
                credential=vault.encrypt(secret) if secret else None,
                scan_id=scan_id,
                scan_target=t.key,
            )
        elif audit.status == "running":
            store.reset_for_scan(db, audit.id)  # its previous scan process died: it resumes from its answers
        pending[audit.id] = t
    workers = AuditWorkers(
        db,
        vault,
        guard,
        workers=options.concurrency,
        per_host=options.per_host,
        lease_s=options.lease_s,
        scan_id=scan_id,
        transport_factory=transport_factory,
    )
    workers.start()
    if on_progress is not None:
        on_progress(state)
    try:
        while pending:
            audits = {a.id: a for a in store.scan_audits(db, scan_id, ids=list(pending))}
            for audit_id, audit in audits.items():
                if audit.status not in store.FINAL:
                    continue
                target = pending.pop(audit_id)
                line = _result_line(target, audit)
                _append(options.out, line)
                state.results.append(line)
                state.finished += 1
            running = [a for a in audits.values() if a.id in pending]
            state.queries = sum(a.queries for a in running) + sum(r.get("queries", 0) for r in state.results)
            state.budget = sum(int(a.settings["budget_queries"]) for a in running) + sum(
                r.get("budget_queries", 0) for r in state.results
            )
            if on_progress is not None:
                on_progress(state)
            if pending and should_stop():  # after writing what has finished: nothing is redone
                raise KeyboardInterrupt
            if pending:
                time.sleep(POLL_S)
    finally:
        workers.stop()
    store.finish_scan(db, scan_id)
    return state


def target_secret(target: ScanTarget) -> str | None:
    if not target.api_key_env:
        return None
    value = os.environ.get(target.api_key_env)
    if not value:
        raise ConfigError(
            f"target {target.key!r}: environment variable {target.api_key_env} (its api_key_env) is not set"
        )
    return value


def _result_line(target: ScanTarget, audit: Any) -> dict[str, Any]:
    if target.agnostic:
        return _agnostic_line(target, audit)
    report = stored_report_public(audit.report or None)
    heads = {
        h: {"guess": r.guesses[0].label, "probability": r.guesses[0].probability, "verdict": r.verdict}
        for h, r in (report.heads.items() if report else ())
        if r.guesses
    }
    return {
        "entry_type": "audit",
        "target": target.key,
        "endpoint": target.endpoint,
        "model": target.model,
        "claim": audit.claim or {},
        "audit_id": audit.id,
        "status": audit.status,
        "verdict": audit.verdict,
        "stop": audit.stop,
        "reason": (report.reason if report else audit.error) or "",
        "queries": audit.queries,
        "budget_queries": int(audit.settings["budget_queries"]),
        "answers_used": report.answers_used if report else 0,
        "tier": report.tier if report else None,
        "match_score": report.match_score if report else None,
        "heads": heads,
        # the report's model-agnostic section: precision read from its answers, determinism and engine if asked
        "checks": {n: {"verdict": c.verdict, "probability": c.probability} for n, c in report.agnostic.checks.items()}
        if report and report.agnostic
        else {},
        "seconds": report.seconds if report else None,
        "finished": _now(),
        "report": report.model_dump(mode="json") if report else None,
    }


def _agnostic_line(target: ScanTarget, audit: Any) -> dict[str, Any]:
    """A model-agnostic target's line: its checks (reading, probability) in place of heads."""
    report = stored_agnostic_public(audit.report or None)
    return {
        "entry_type": "audit",
        "kind": "model-agnostic",
        "target": target.key,
        "endpoint": target.endpoint,
        "model": None,
        "claim": {},
        "audit_id": audit.id,
        "status": audit.status,
        "verdict": None,
        "stop": audit.stop,
        "reason": (report.reason if report else audit.error) or "",
        "queries": audit.queries,
        "budget_queries": int(audit.settings["budget_queries"]),
        "tier": report.tier if report else None,
        "heads": {},
        "checks": {n: {"verdict": c.verdict, "probability": c.probability} for n, c in report.checks.items()}
        if report
        else {},
        "seconds": report.seconds if report else None,
        "finished": _now(),
        "report": report.model_dump(mode="json") if report else None,
    }


def _read_jsonl(path: Path) -> tuple[dict[str, Any] | None, dict[str, dict[str, Any]]]:
    """(the scan header, finished targets by key) of an earlier run; a torn last line is dropped."""
    if not path.exists():
        return None, {}
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    good: list[bytes] = []
    header, done = None, {}
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            if n >= len(lines) - 2:  # the last line, torn by a crash mid-write
                break
            raise ConfigError(f"{path} line {n + 1} is not JSON: it is not an hspi scan file") from None
        good.append(line)
        if entry.get("entry_type") == "scan":
            header = entry
        elif entry.get("entry_type") == "audit" and entry.get("status") in store.FINAL:
            done[entry["target"]] = entry
    if header is None and (done or good):
        raise ConfigError(f"{path} has no scan header line: it is not an hspi scan file (choose another --out)")
    kept = b"".join(line + b"\n" for line in good)
    if kept != raw:
        path.write_bytes(kept)
    return header, done


def _append(path: Path, entry: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
