"""/v1/scans: the `hspi scan` runs recorded in this database, with their audits' states."""

from __future__ import annotations

from fastapi import APIRouter

from hspi.api import store
from hspi.api.db import Scan
from hspi.api.deps import ReadKey, Services, ServicesDep
from hspi.api.routes.audits import AUTH_ERRORS, ERRORS
from hspi.api.schemas import ErrorBody, ScanList, ScanPublic

router = APIRouter(prefix="/scans", tags=["scans"])


def scan_public(services: Services, scan: Scan) -> ScanPublic:
    return ScanPublic(
        id=scan.id,
        name=scan.name,
        source=scan.source,
        created_at=scan.created_at,
        finished_at=scan.finished_at,
        total=scan.total,
        counts=store.counts_by_status(services.db, scan.id),
    )


@router.get(
    "", response_model=ScanList, responses=AUTH_ERRORS, summary="Scans, newest first (audits: ?scan_id= on /v1/audits)"
)
def list_scans(principal: ReadKey, services: ServicesDep) -> ScanList:
    return ScanList(data=[scan_public(services, s) for s in store.list_scans(services.db)])


@router.get(
    "/{scan_id}",
    response_model=ScanPublic,
    responses={**ERRORS, 404: {"model": ErrorBody, "description": "no such scan"}},
    summary="One scan (its audits: ?scan_id= on /v1/audits)",
)
def get_scan(scan_id: str, principal: ReadKey, services: ServicesDep) -> ScanPublic:
    return scan_public(services, store.get_scan(services.db, scan_id))
