"""The audit service (`hspi.api`): REST API, persistence, background audits, `hspi scan`.

app.py          create_app(settings): routers under /v1, error handlers, lifespan
routes/         one router per resource: audits, catalog (platforms, classifiers, classify), keys, scans
deps.py         the service objects and API-key authentication (scopes, rate limits)
schemas.py      request and response bodies (pydantic)
db.py, store.py SQLAlchemy models and the persistence functions; migrations/ (Alembic)
workers.py      the worker pool: durable, resumable audits, a limit per target host, keys taking turns
security.py     API keys, the credential vault, the SSRF guard, body and rate limits
scan.py         `hspi scan`, and scan_report.py its HTML report; server.py `hspi serve`
"""
