"""One router per resource, mounted together under /v1 (health checks stay at the root)."""

from fastapi import APIRouter

from hspi.api.routes import audits, catalog, keys, scans

v1 = APIRouter(prefix="/v1")
for _module in (audits, catalog, keys, scans):
    v1.include_router(_module.router)
