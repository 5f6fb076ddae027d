"""/v1/scans: the `hspi scan` runs recorded in this database, with their audits' states."""

from __future__ import annotations

from fastapi import APIRouter

from hspi.api import store
from hspi.api.deps import ReadKey, ServicesDep
from hspi.api.routes.audits import AUTH_ERRORS
from hspi.api.schemas import ScanList, ScanPublic

router = APIRouter(prefix="/scans", tags=["scans"])


@router.get(
    "", response_model=ScanList, responses=AUTH_ERRORS, summary="Scans, newest first (audits: ?scan_id= on /v1/audits)"
)
def list_scans(principal: ReadKey, services: ServicesDep) -> ScanList:
    return ScanList(
        data=[
            ScanPublic(
                id=s.id,
                name=s.name,
                source=s.source,
                created_at=s.created_at,
                finished_at=s.finished_at,
                total=s.total,
                counts=store.counts_by_status(services.db, s.id),
            )
            for s in store.list_scans(services.db)
        ]
    )
