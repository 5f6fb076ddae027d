"""/v1/platforms, /v1/classifiers and /v1/classify: what the service knows, and answers collected elsewhere."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from hspi.api.deps import ReadKey, ServicesDep
from hspi.api.routes.audits import AUTH_ERRORS, BODY_ERRORS, ERRORS, claim_of
from hspi.api.schemas import ClassifierList, ClassifyRequest, ClassifyResult, ErrorBody, PlatformList

router = APIRouter(tags=["catalog"])


@router.get(
    "/platforms",
    response_model=PlatformList,
    responses=ERRORS,
    summary="The platform classes a model's audits tell apart",
)
def platforms(
    principal: ReadKey, services: ServicesDep, model: Annotated[str, Query(max_length=64)] = "lm-small"
) -> PlatformList:
    return services.catalog.platforms(model)


@router.get(
    "/classifiers",
    response_model=ClassifierList,
    responses=AUTH_ERRORS,
    summary="The classifiers loaded: one per model and tier",
)
def classifiers(principal: ReadKey, services: ServicesDep) -> ClassifierList:
    return ClassifierList(data=services.catalog.classifiers())


@router.post(
    "/classify",
    response_model=ClassifyResult,
    responses={**BODY_ERRORS, 422: {"model": ErrorBody, "description": "answers that cannot be classified"}},
    summary="Classify answers to reference-pool probes collected elsewhere",
)
def classify(body: ClassifyRequest, principal: ReadKey, services: ServicesDep) -> ClassifyResult:
    return services.catalog.classify(body, claim_of(body.claim))
