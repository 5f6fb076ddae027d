"""/v1/keys (admin): create API keys (shown once), list them, revoke them."""

from __future__ import annotations

from fastapi import APIRouter

from hspi.api import store
from hspi.api.db import ApiKey
from hspi.api.deps import AdminKey, ServicesDep
from hspi.api.routes.audits import AUTH_ERRORS, BODY_ERRORS, ERRORS
from hspi.api.schemas import ErrorBody, KeyCreate, KeyCreated, KeyList, KeyPublic
from hspi.api.security import SCOPES, new_api_key

router = APIRouter(prefix="/keys", tags=["keys"])


def key_public(key: ApiKey) -> dict:
    scopes = key.scopes.split(",")
    return {
        "id": key.id,
        "name": key.name,
        "scopes": [s for s in SCOPES if s in scopes],
        "created_at": key.created_at,
        "last_used_at": key.last_used_at,
        "revoked_at": key.revoked_at,
    }


@router.post("", status_code=201, response_model=KeyCreated, responses=BODY_ERRORS, summary="Create an API key")
def create_key(body: KeyCreate, principal: AdminKey, services: ServicesDep) -> KeyCreated:
    key_id, key, secret_hash = new_api_key()
    row = store.add_key(services.db, key_id, body.name, secret_hash, sorted(set(body.scopes), key=SCOPES.index))
    return KeyCreated(**key_public(row), key=key)


@router.get("", response_model=KeyList, responses=AUTH_ERRORS, summary="List API keys (never their secrets)")
def list_keys(principal: AdminKey, services: ServicesDep) -> KeyList:
    return KeyList(data=[KeyPublic(**key_public(k)) for k in store.list_keys(services.db)])


@router.delete(
    "/{key_id}",
    response_model=KeyPublic,
    summary="Revoke an API key",
    responses={**ERRORS, 404: {"model": ErrorBody, "description": "no such key"}},
)
def revoke_key(key_id: str, principal: AdminKey, services: ServicesDep) -> KeyPublic:
    return KeyPublic(**key_public(store.revoke_key(services.db, key_id)))
