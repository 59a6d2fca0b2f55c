"""The service's OpenAPI 3.1 document, written by hand; a test checks it names every route the app serves."""
from __future__ import annotations

import copy


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict) -> dict:
    return {"application/json": {"schema": schema}}


def _answer(description: str, schema: dict | None = None) -> dict:
    answer = {"description": description}
    if schema is not None:
        answer["content"] = _json(schema)
    return answer


ERROR = _answer("the request cannot be served; `field` names the offending value", _ref("Error"))
UNAUTHORIZED = _answer("missing or wrong bearer token", _ref("Error"))
SECURED = [{"bearer": []}]

_BATCH_ID = {"name": "batch_id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}
_SHOT_ID = {"name": "shot_id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}
_FOLDER = {"name": "folder", "in": "path", "required": True,
           "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"}}


def _shot_action(summary: str, description: str, body: dict | None = None) -> dict:
    operation = {
        "summary": summary, "description": description, "parameters": [_SHOT_ID], "security": SECURED,
        "responses": {"200": _answer("the shot in its new state", _ref("Shot")), "400": ERROR,
                      "401": UNAUTHORIZED, "404": ERROR,
                      "409": _answer("the shot's status does not allow this", _ref("Error"))}}
    if body is not None:
        operation["requestBody"] = {"required": True, "content": _json(body)}
    return {"post": operation}


SCHEMAS = {
    "Error": {"type": "object", "required": ["error"], "properties": {
        "error": {"type": "string"},
        "field": {"type": "string", "description": "path of the offending value, e.g. shots[1].seed"}}},
    "ShotInput": {
        "type": "object", "required": ["id", "prompt"], "additionalProperties": False,
        "properties": {
            "id": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"},
            "workflow": {"type": "string", "default": "shot_txt2img", "description": "preset name in workflows/"},
            "prompt": {"type": "string", "minLength": 1},
            "negative": {"type": "string"},
            "seed": {"type": "integer", "minimum": 0, "maximum": 18446744073709551615,
                     "description": "derived from the id when absent"},
            "size": {"description": "WxH, [W, H] or {width, height}; multiples of 8, 64..8192",
                     "oneOf": [{"type": "string", "pattern": "^\\s*\\d+\\s*[xX]\\s*\\d+\\s*$"},
                               {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2},
                               {"type": "object", "required": ["width", "height"],
                                "properties": {"width": {"type": "integer"}, "height": {"type": "integer"}}}]},
            "steps": {"type": "integer", "minimum": 1, "maximum": 10000},
            "cfg": {"type": "number", "minimum": 0, "maximum": 100},
            "checkpoint": {"type": "string"},
            "scene": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", "default": "main",
                      "description": "the scene the shot is cut into when the batch is assembled"},
            "duration": {"type": "number", "minimum": 0.2, "maximum": 600, "default": 2.0,
                         "description": "seconds a still image shot is held in its scene (a video keeps its own "
                                        "length)"},
            "frames": {"type": "integer", "minimum": 1, "maximum": 1024,
                       "description": "video presets: frames generated (the node titled Size, batch_size)"},
            "fps": {"type": "number", "minimum": 0.1, "maximum": 240,
                    "description": "video presets: their frame rate before interpolation (node titled Interpolate)"},
            "dialogue": {"type": "string", "minLength": 1, "maxLength": 2000,
                         "description": "dialogue presets: the line spoken (node titled Dialogue)"}}},
    "BatchRequest": {
        "type": "object", "required": ["shots"], "additionalProperties": False,
        "properties": {
            "shots": {"type": "array", "minItems": 1, "maxItems": 10000, "items": _ref("ShotInput")},
            "defaults": {"type": "object", "description": "shot fields merged into every shot (not id)"},
            "webhook_url": {"type": "string", "format": "uri",
                            "description": "POSTed {batch_id, counts, total} when every shot is final, signed "
                                           "with X-Shotline-Signature: sha256=<hmac of the body>"},
            "max_attempts": {"type": "integer", "minimum": 1, "maximum": 20, "default": 3},
            "priority": {"type": "integer", "default": 0, "description": "higher is claimed first"}}},
    "BatchCreated": {"type": "object", "required": ["batch_id", "shot_ids"], "properties": {
        "batch_id": {"type": "string", "format": "uuid"},
        "shot_ids": {"type": "array", "items": {"type": "string", "format": "uuid"}}}},
    "Counts": {"type": "object", "additionalProperties": {"type": "integer"},
               "description": "shots per status: queued, running, approved, needs_review, rejected, failed, "
                              "cancelled"},
    "Batch": {"type": "object", "properties": {
        "id": {"type": "string", "format": "uuid"},
        "source": {"type": "string"},
        "webhook_url": {"type": ["string", "null"]},
        "created_at": {"type": "string", "format": "date-time"},
        "finished_at": {"type": ["string", "null"], "format": "date-time"},
        "notified_at": {"type": ["string", "null"], "format": "date-time"},
        "counts": _ref("Counts"),
        "total": {"type": "integer"},
        "done": {"type": "integer"},
        "finished": {"type": "boolean"},
        "cancelled": {"type": "integer", "description": "only in the answer to cancel"}}},
    "BatchShot": {"type": "object", "properties": {
        "id": {"type": "string", "format": "uuid"},
        "shot_key": {"type": "string"},
        "status": {"type": "string"},
        "params": {"type": "object"},
        "max_attempts": {"type": "integer"},
        "attempts": {"type": "integer"},
        "score": {"type": ["number", "null"]},
        "band": {"type": ["string", "null"]},
        "output": {"type": ["string", "null"]}}},
    "BatchShots": {"type": "object", "properties": {
        "batch_id": {"type": "string", "format": "uuid"},
        "total": {"type": "integer"}, "done": {"type": "integer"}, "finished": {"type": "boolean"},
        "counts": _ref("Counts"),
        "shots": {"type": "array", "items": _ref("BatchShot")}}},
    "Attempt": {"type": "object", "properties": {
        "id": {"type": "string", "format": "uuid"},
        "attempt_no": {"type": "integer"},
        "prompt_id": {"type": "string", "format": "uuid"},
        "backend": {"type": "string"},
        "status": {"type": "string", "enum": ["queued", "running", "succeeded", "failed", "lost"]},
        "inputs": {"type": "object"},
        "correction": {"type": ["object", "null"], "description": "{reason, changes} applied to this attempt"},
        "error": {"type": ["object", "null"]},
        "queued_at": {"type": "string", "format": "date-time"},
        "started_at": {"type": ["string", "null"], "format": "date-time"},
        "finished_at": {"type": ["string", "null"], "format": "date-time"},
        "verdicts": {"type": "array", "items": {"type": "object"}},
        "outputs": {"type": "array", "items": {"type": "object", "properties": {
            "node_id": {"type": "string"}, "kind": {"type": "string"}, "filename": {"type": "string"},
            "subfolder": {"type": "string"}, "type": {"type": "string"}}}}}},
    "Shot": {"type": "object", "properties": {
        "id": {"type": "string", "format": "uuid"},
        "batch_id": {"type": "string", "format": "uuid"},
        "shot_key": {"type": "string"},
        "workflow": {"type": "string"},
        "status": {"type": "string",
                   "enum": ["queued", "running", "approved", "needs_review", "rejected", "failed", "cancelled"]},
        "params": {"type": "object"},
        "max_attempts": {"type": "integer"},
        "created_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"},
        "attempts": {"type": "array", "items": _ref("Attempt")}}},
    "AssemblyRequest": {
        "type": "object", "additionalProperties": False,
        "properties": {
            "scenes": {"type": "array", "minItems": 1, "items": {"type": "string"},
                       "description": "scene keys to assemble (default: every scene of the batch)"},
            "crossfade_s": {"type": "number", "minimum": 0, "maximum": 10, "default": 0.5,
                            "description": "video and audio crossfade between shots, and between scenes in the "
                                           "episode; 0 cuts"},
            "fps": {"type": "number", "minimum": 1, "maximum": 240,
                    "description": "default: the first video shot's frame rate, else 24"},
            "size": {"type": "string", "pattern": "^\\s*\\d+\\s*[xX]\\s*\\d+\\s*$",
                     "description": "WxH, even sides (default: the first shot's size); other shots are scaled to "
                                    "fit and letterboxed"},
            "music": {"type": "string", "description": "an audio file on the service's machine, looped or cut to "
                                                       "each scene and ducked under the shots' own audio"},
            "episode": {"type": "object", "required": ["season", "number", "title"], "additionalProperties": False,
                        "description": "also cut the scenes, in shot list order, into "
                                       "<library>/Season NN/SxxEyy - Title.mp4",
                        "properties": {"season": {"type": "integer", "minimum": 1, "maximum": 99},
                                       "number": {"type": "integer", "minimum": 1, "maximum": 99},
                                       "title": {"type": "string", "minLength": 1}}}}},
    "AssemblyPart": {"type": "object", "properties": {
        "position": {"type": "integer"},
        "shot_id": {"type": ["string", "null"], "format": "uuid"},
        "shot_key": {"type": ["string", "null"]},
        "file": {"type": ["string", "null"], "description": "the shot's ComfyUI output that was cut in"},
        "scene_assembly_id": {"type": ["string", "null"], "format": "uuid"},
        "scene": {"type": ["string", "null"]},
        "start_s": {"type": "number", "description": "where the part starts in the cut"},
        "duration_s": {"type": "number", "description": "how long it lasts, crossfades included"}}},
    "Assembly": {"type": "object", "properties": {
        "id": {"type": "string", "format": "uuid"},
        "batch_id": {"type": "string", "format": "uuid"},
        "kind": {"type": "string", "enum": ["scene", "episode"]},
        "scene": {"type": ["string", "null"]},
        "season": {"type": ["integer", "null"]},
        "episode": {"type": ["integer", "null"]},
        "title": {"type": ["string", "null"]},
        "path": {"type": "string", "description": "the MP4 (H.264 + AAC) on the service's machine"},
        "thumbnail": {"type": "string", "description": "a JPEG of its middle frame"},
        "duration_s": {"type": "number"},
        "frame_count": {"type": "integer"},
        "fps": {"type": "number"},
        "width": {"type": "integer"},
        "height": {"type": "integer"},
        "crossfade_s": {"type": "number", "description": "as applied: a whole number of frames"},
        "music": {"type": ["string", "null"]},
        "created_at": {"type": "string", "format": "date-time"},
        "parts": {"type": "array", "items": _ref("AssemblyPart")}}},
    "Assemblies": {"type": "object", "properties": {
        "batch_id": {"type": "string", "format": "uuid"},
        "assemblies": {"type": "array", "items": _ref("Assembly")}}},
    "AssemblyJobQueued": {"type": "object", "properties": {
        "job_id": {"type": "string", "format": "uuid"},
        "status": {"type": "string", "const": "queued"},
        "location": {"type": "string", "description": "the job's URL path, also in the Location header"}}},
    "AssemblyJob": {"type": "object", "properties": {
        "id": {"type": "string", "format": "uuid"},
        "batch_id": {"type": "string", "format": "uuid"},
        "status": {"type": "string", "enum": ["queued", "running", "done", "failed"]},
        "request": _ref("AssemblyRequest"),
        "error": {"type": ["object", "null"],
                  "description": "the last failure; `status` is the HTTP status the request would have had: 400 a "
                                 "value the shots cannot take (`field` names it), 409 no approved shot, 422 a file "
                                 "that cannot be decoded, 502 a file that cannot be fetched (these end the job "
                                 "at once), 500 the controller's fault (retried up to max_attempts)",
                  "properties": {"message": {"type": "string"}, "field": {"type": ["string", "null"]},
                                 "status": {"type": "integer"}}},
        "attempts": {"type": "integer", "description": "claims so far, a lapsed one (a controller that died) "
                                                       "included"},
        "max_attempts": {"type": "integer"},
        "claimed_by": {"type": ["string", "null"], "description": "the controller running it, or that ran it last"},
        "lease_until": {"type": ["string", "null"], "format": "date-time"},
        "created_at": {"type": "string", "format": "date-time"},
        "started_at": {"type": ["string", "null"], "format": "date-time", "description": "the latest claim"},
        "finished_at": {"type": ["string", "null"], "format": "date-time"},
        "assemblies": {"type": "array", "items": _ref("Assembly"),
                       "description": "once done: the assemblies recorded, scenes in cut order, then the episode"}}},
    "Review": {"type": "object", "required": ["decision"], "additionalProperties": False,
               "properties": {"decision": {"type": "string", "enum": ["approve", "reject"]}}},
    "Character": {"type": "object", "properties": {
        "id": {"type": "string", "format": "uuid"},
        "folder": {"type": "string"}, "name": {"type": "string"},
        "style": {"type": "string", "enum": ["anime", "photo"]},
        "sheet": {"type": "object"},
        "reference_count": {"type": "integer"},
        "created_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"}}},
    "CharacterWritten": {"type": "object", "properties": {
        "id": {"type": "string", "format": "uuid"},
        "folder": {"type": "string"}, "name": {"type": "string"}, "style": {"type": "string"},
        "references": {"type": "array", "items": {"type": "string"},
                       "description": "every reference file of the character now"}}},
    "Backend": {"type": "object", "properties": {
        "base_url": {"type": "string"},
        "connected": {"type": "boolean"},
        "queue_remaining": {"type": ["integer", "null"]},
        "loaded_checkpoint": {"type": ["string", "null"]},
        "system_stats": {"type": "object", "description": "ComfyUI's /system_stats, when it answered"},
        "error": {"type": "string", "description": "why system_stats is missing"}}},
    "Analytics": {"type": "object", "properties": {
        "characters": {"type": "array", "items": {"type": "object", "properties": {
            "character": {"type": "string"},
            "attempts": {"type": "integer"},
            "passed": {"type": "integer"},
            "pass_rate": {"type": "number"},
            "mean_score": {"type": ["number", "null"], "description": "over the attempts it was on screen"},
            "not_on_screen": {"type": "integer"}}}},
        "corrections": {"type": "array", "items": {"type": "object", "properties": {
            "reason": {"type": "string"},
            "corrected_attempts": {"type": "integer"},
            "led_to_approval": {"type": "integer",
                                "description": "corrected attempts that were their shot's last, the shot approved"},
            "approval_rate": {"type": "number"}}}}}},
}

PATHS = {
    "/health": {"get": {"summary": "liveness", "responses": {"200": _answer("alive", {
        "type": "object", "properties": {"ok": {"type": "boolean", "const": True}}})}}},
    "/openapi.json": {"get": {"summary": "this document", "responses": {"200": _answer("OpenAPI 3.1", {
        "type": "object"})}}},
    "/api/v1/batches": {"post": {
        "summary": "submit a shot list",
        "description": "JSON, or a shot list file posted as is with Content-Type: application/yaml. The whole "
                       "list is validated before anything is queued.",
        "security": SECURED,
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": _ref("BatchRequest")},
            "application/yaml": {"schema": _ref("BatchRequest")}}},
        "responses": {"201": _answer("queued", _ref("BatchCreated")), "400": ERROR, "401": UNAUTHORIZED,
                      "413": _answer("body over 20 MB", _ref("Error")),
                      "415": _answer("neither JSON nor YAML", _ref("Error"))}}},
    "/api/v1/batches/{batch_id}": {"get": {
        "summary": "a batch and its progress", "parameters": [_BATCH_ID],
        "responses": {"200": _answer("the batch", _ref("Batch")), "400": ERROR, "404": ERROR}}},
    "/api/v1/batches/{batch_id}/shots": {"get": {
        "summary": "the shots of a batch, with status, attempts, latest score and output",
        "parameters": [_BATCH_ID],
        "responses": {"200": _answer("progress and shots", _ref("BatchShots")), "400": ERROR, "404": ERROR}}},
    "/api/v1/batches/{batch_id}/cancel": {"post": {
        "summary": "cancel every queued or running shot of a batch", "parameters": [_BATCH_ID],
        "security": SECURED,
        "responses": {"200": _answer("the batch after cancelling", _ref("Batch")), "400": ERROR,
                      "401": UNAUTHORIZED, "404": ERROR,
                      "409": _answer("every shot was already final", _ref("Error"))}}},
    "/api/v1/batches/{batch_id}/events": {"get": {
        "summary": "server-sent events: `progress` (the batch) on each change, `done` when every shot is final",
        "parameters": [_BATCH_ID],
        "responses": {"200": {"description": "an event stream; each event's data is a Batch as JSON",
                              "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                      "400": ERROR, "404": ERROR, "503": _answer("too many open streams", _ref("Error"))}}},
    "/api/v1/batches/{batch_id}/assemblies": {
        "post": {
            "summary": "queue a job that cuts the batch's approved shots into scene MP4s (and an episode)",
            "description": "Scenes in order of first appearance in the shot list; only approved shots, each its "
                           "latest succeeded attempt's video (else last image), fetched from its ComfyUI through "
                           "/view. The request and the batch are checked first (400, 404, 409); the media work "
                           "is a durable job in PostgreSQL that a service's worker runs: follow it at `location`.",
            "parameters": [_BATCH_ID], "security": SECURED,
            "requestBody": {"required": True, "content": _json(_ref("AssemblyRequest"))},
            "responses": {"202": {**_answer("queued", _ref("AssemblyJobQueued")), "headers": {
                              "Location": {"description": "/api/v1/assembly-jobs/{job_id}",
                                           "schema": {"type": "string"}}}},
                          "400": ERROR, "401": UNAUTHORIZED, "404": ERROR,
                          "409": _answer("a scene has no approved shot, or an approved shot has no file",
                                         _ref("Error"))}},
        "get": {
            "summary": "the batch's assemblies, oldest first, with their parts", "parameters": [_BATCH_ID],
            "responses": {"200": _answer("assemblies", _ref("Assemblies")), "400": ERROR, "404": ERROR}}},
    "/api/v1/assembly-jobs/{job_id}": {"get": {
        "summary": "an assembly job: status, error, timestamps and, once done, its assemblies",
        "parameters": [{"name": "job_id", "in": "path", "required": True,
                        "schema": {"type": "string", "format": "uuid"}}],
        "responses": {"200": _answer("the job", _ref("AssemblyJob")), "400": ERROR, "404": ERROR}}},
    "/api/v1/shots/{shot_id}": {"get": {
        "summary": "a shot with every attempt, its correction, verdicts and outputs", "parameters": [_SHOT_ID],
        "responses": {"200": _answer("the shot", _ref("Shot")), "400": ERROR, "404": ERROR}}},
    "/api/v1/shots/{shot_id}/cancel": _shot_action(
        "cancel a shot", "queued or running shots only; a running prompt finishes but is not recorded"),
    "/api/v1/shots/{shot_id}/retry": _shot_action(
        "queue a finished shot again", "failed, rejected, cancelled or needs_review shots; allows one more attempt"),
    "/api/v1/shots/{shot_id}/review": _shot_action(
        "a person's decision on a shot in needs_review", "approve makes it approved, reject makes it rejected",
        _ref("Review")),
    "/api/v1/characters": {"get": {
        "summary": "the characters recorded, with their reference count",
        "responses": {"200": _answer("characters", {"type": "object", "properties": {
            "characters": {"type": "array", "items": _ref("Character")}}})}}},
    "/api/v1/characters/{folder}": {"put": {
        "summary": "create or update a character: sheet plus reference images",
        "description": "References are added or replaced by file name; the others stay.",
        "parameters": [_FOLDER], "security": SECURED,
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["sheet"], "properties": {
                "sheet": {"type": "string", "description": "character.yaml (YAML or JSON)"},
                "reference": {"type": "array", "items": {"type": "string", "contentMediaType":
                              "application/octet-stream"}, "description": "image files; the part's filename "
                              "is the reference's file name"}}}}}},
        "responses": {"200": _answer("the character as written", _ref("CharacterWritten")), "400": ERROR,
                      "401": UNAUTHORIZED, "413": _answer("body over 20 MB", _ref("Error")),
                      "415": _answer("not multipart", _ref("Error")),
                      "503": _answer("no character library configured", _ref("Error"))}}},
    "/api/v1/backends": {"get": {
        "summary": "the ComfyUI servers the dispatcher uses and their state",
        "responses": {"200": _answer("backends", {"type": "object", "properties": {
            "backends": {"type": "array", "items": _ref("Backend")}}})}}},
    "/api/v1/analytics": {"get": {
        "summary": "identity pass rates per character; how often each correction reason led to approval",
        "responses": {"200": _answer("analytics", _ref("Analytics"))}}},
}

DOCUMENT = {
    "openapi": "3.1.0",
    "info": {"title": "Shotline", "version": "1",
             "description": "Render shot lists on ComfyUI servers and follow every shot, attempt and verdict. "
                            "Reads are open; writes need `Authorization: Bearer <token>`."},
    "paths": PATHS,
    "components": {"schemas": SCHEMAS,
                   "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
}


def openapi_document() -> dict:
    return copy.deepcopy(DOCUMENT)
