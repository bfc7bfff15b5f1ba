"""The launch API's OpenAPI 3.1 description, built from the models that validate its requests and
write its answers, so the two cannot drift. Served at `GET /api/v1/openapi.json` and checked in as
docs/openapi.json (a test fails when that copy is stale). Regenerate it with

    python -m revenue_pipelines.receiver.openapi > docs/openapi.json
"""

from __future__ import annotations

import json
import sys
from typing import Any

from pydantic import BaseModel

from revenue_pipelines.receiver.launches import MAX_BODY_BYTES, Error, Launch, LaunchRequest

SCHEMA_REF = "#/components/schemas/{model}"


def _schemas(*models: tuple[type[BaseModel], str]) -> dict[str, Any]:
    """Each model's JSON Schema (2020-12, OpenAPI 3.1's dialect) and the models it refers to, by name."""
    schemas: dict[str, Any] = {}
    for model, mode in models:
        schema = model.model_json_schema(ref_template=SCHEMA_REF, mode=mode)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return schemas


def _json(model: type[BaseModel], description: str, **extra: Any) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": SCHEMA_REF.format(model=model.__name__)}}},
        **extra,
    }


def _errors(*statuses: int) -> dict[str, Any]:
    reasons = {
        401: "No key, or one the key store does not accept.",
        403: "The key may not do this: it lacks the scope.",
        404: "No run or backfill with that id.",
        413: f"Body over {MAX_BODY_BYTES} bytes.",
        415: "Content-Type is not application/json.",
        422: "The request names no job Dagster has, a partition it does not have, a range that runs "
        "backwards, or is malformed; `field` says which (job, partition, partitions.start, run_config...).",
        429: "The key's rate limit: retry after the seconds Retry-After gives.",
        502: "Dagster's GraphQL answered with an error.",
        503: "Dagster's webserver does not answer at DAGSTER_WEBSERVER_URL.",
    }
    retry_after = {"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}}}
    return {
        str(status): _json(Error, reasons[status], **({"headers": retry_after} if status == 429 else {}))
        for status in statuses
    }


def openapi_document() -> dict[str, Any]:
    launch_example = {"job": "daily_revenue_job", "partition": "2026-11-20"}
    backfill_example = {"job": "daily_revenue_job", "partitions": {"start": "2026-11-01", "end": "2026-11-07"}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "revenue_pipelines launch API",
            "version": "1",
            "description": "Start a Dagster job for one partition (a run) or a range (a backfill) and read its "
            "status. Served by the webhook receiver (`python -m revenue_pipelines.receiver`), which launches "
            "through Dagster's GraphQL at DAGSTER_WEBSERVER_URL. Every request is audited. See docs/triggers.md.",
        },
        "paths": {
            "/api/v1/launches": {
                "post": {
                    "operationId": "createLaunch",
                    "summary": "Launch a job for one partition (a run) or a range of partitions (a backfill).",
                    "description": "Needs a key with the `launch` scope.",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": SCHEMA_REF.format(model=LaunchRequest.__name__)},
                                "examples": {
                                    "run": {"summary": "One day", "value": launch_example},
                                    "backfill": {"summary": "A week", "value": backfill_example},
                                },
                            }
                        },
                    },
                    "responses": {
                        "201": _json(
                            Launch,
                            "Launched: the run is queued, or the backfill requested.",
                            headers={
                                "Location": {"description": "Where to read its status.", "schema": {"type": "string"}}
                            },
                        ),
                        **_errors(401, 403, 413, 415, 422, 429, 502, 503),
                    },
                }
            },
            "/api/v1/launches/{id}": {
                "get": {
                    "operationId": "getLaunch",
                    "summary": "A run's or a backfill's status.",
                    "description": "Needs a key with the `read` scope.",
                    "parameters": [
                        {
                            "name": "id",
                            "in": "path",
                            "required": True,
                            "description": "The id a launch answered with.",
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {
                        "200": _json(Launch, "The launch as Dagster reports it now."),
                        **_errors(401, 403, 404, 429, 502, 503),
                    },
                }
            },
            "/api/v1/openapi.json": {
                "get": {
                    "operationId": "getOpenApi",
                    "summary": "This document.",
                    "security": [],
                    "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {}}}},
                }
            },
        },
        "components": {
            "schemas": _schemas((LaunchRequest, "validation"), (Launch, "serialization"), (Error, "serialization")),
            "securitySchemes": {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key (`python -m revenue_pipelines.receiver keys create`), "
                    "as `Authorization: Bearer <key>`.",
                }
            },
        },
        "security": [{"apiKey": []}],
    }


def render() -> str:
    """The document as docs/openapi.json holds it."""
    return json.dumps(openapi_document(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
