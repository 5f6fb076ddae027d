"""One router per resource, mounted together under /v1 (health checks stay at the root)."""

from fastapi import APIRouter, Depends

from hspi.api.deps import checked_parameters
from hspi.api.routes import audits, catalog, keys, scans

v1 = APIRouter(prefix="/v1", dependencies=[Depends(checked_parameters)])
for _module in (audits, catalog, keys, scans):
    v1.include_router(_module.router)
