"""The service's OpenAPI 3.1 document, generated from the route table and the contract's pydantic models: the
code that validates is the code that documents, so the two cannot drift."""
from __future__ import annotations

import re
from functools import cache

from pydantic.json_schema import models_json_schema

from shotline_controller.api.routes import EVENT_STREAM, EXTRA_MODELS, JSON, ROUTES, Route
from shotline_controller.contract import ErrorBody

REF = "#/components/schemas/{model}"
PATH_PARAMETERS = {
    "batch_id": {"type": "string", "format": "uuid"},
    "shot_id": {"type": "string", "format": "uuid"},
    "job_id": {"type": "string", "format": "uuid"},
    "attempt_id": {"type": "string", "format": "uuid"},
    "index": {"type": "string", "pattern": "^[0-9]{1,6}$", "description": "counts from 0"},
    "folder": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
               "description": "the character's folder name in the library"},
    "character": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
                  "description": "the character's name as shots give it"},
    "term": {"type": "string", "minLength": 1, "maxLength": 200, "description": "a learned negative term"},
}


def _models() -> list[tuple[type, str]]:
    wanted = [(ErrorBody, "serialization")] + [(model, "validation") for model in EXTRA_MODELS]
    for route in ROUTES:
        wanted += [(model, "serialization") for model in route.answers.values() if isinstance(model, type)]
        wanted += [(model, "validation") for model in route.body.values() if isinstance(model, type)]
    return list(dict.fromkeys(wanted))


def _event(data: dict) -> dict:
    """One server-sent event whose data is a JSON text of `data`: in OpenAPI 3.1 the `schema` of a
    text/event-stream describes each event (`event`, `data`, ...), not the JSON inside it."""
    return {"type": "object", "required": ["event", "data"], "properties": {
        "event": {"type": "string", "description": "the event's name; the operation's description lists them"},
        "data": {"type": "string", "contentMediaType": JSON, "contentSchema": data}}}


def _error(description: str) -> dict:
    return {"description": description, "content": {JSON: {"schema": {"$ref": REF.format(model="ErrorBody")}}}}


def _operation(route: Route, refs: dict) -> dict:
    parameters = [{"name": name, "in": "path", "required": True, "schema": PATH_PARAMETERS[name]}
                  for name in re.findall(r"{(\w+)}", route.path)]
    responses = {}
    for status, model in route.answers.items():
        if isinstance(model, tuple):
            media_type, description = model
            responses[str(status)] = {"description": description, "content": {media_type: {"schema": {}}}}
        else:
            streamed = route.path.endswith("/events")
            schema = refs[(model, "serialization")]
            responses[str(status)] = {"description": (model.__doc__ or model.__name__).strip().splitlines()[0],
                                      "content": {EVENT_STREAM if streamed else JSON: {
                                          "schema": _event(schema) if streamed else schema}}}
    if parameters or route.body:
        responses["400"] = _error("the request cannot be served; `field` names the offending value")
    if route.token:
        responses["401"] = _error("missing or wrong bearer token")
    if any(parameter["schema"].get("format") == "uuid" for parameter in parameters):
        responses["404"] = _error("no such batch, shot or job")
    if route.conflicts:
        responses["409"] = _error(f"not now: {route.conflicts}")
    if route.body:
        responses["413"] = _error("body over 20 MB")
        responses["415"] = _error("a Content-Type (or a file) the route does not take")
    responses["503"] = _error("the database is unavailable or busy, or too many event streams: try again")
    operation = {"summary": route.summary, "operationId": f"{route.method.lower()}_{route.path}",
                 "responses": responses}
    if route.description:
        operation["description"] = route.description
    if parameters:
        operation["parameters"] = parameters
    if route.token:
        operation["security"] = [{"bearer": []}]
    if route.body:
        operation["requestBody"] = {"required": True, "content": {
            media_type: {"schema": refs[(model, "validation")] if isinstance(model, type) else model}
            for media_type, model in route.body.items()}}
    return operation


@cache
def openapi_document() -> dict:
    refs, definitions = models_json_schema(_models(), ref_template=REF)
    paths: dict = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, refs)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Shotline controller", "version": "1",
                 "description": "Render shot lists over ComfyUI backends with identity and quality verdicts. "
                                "Reads are open; writes and event streams need `Authorization: Bearer <token>`. "
                                "Errors are `{\"error\", \"field\"}`."},
        "paths": paths,
        "components": {"schemas": definitions.get("$defs", {}),
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
