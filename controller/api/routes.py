"""Every route of the service, in one table: the handler, who may call it, and the contract models of its body
and answers. api/app.py registers the handlers from it and api/openapi.py writes /openapi.json from it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from pydantic import BaseModel
from shotline.core.characters import CharacterSheet

from shotline_controller import lora_registry
from shotline_controller.api import assemblies, batches, characters, learning, review_page, system, uploads
from shotline_controller.contract import (
    Analytics,
    AssemblyJob,
    AssemblyJobAccepted,
    AssemblyList,
    AssemblyRequest,
    Backends,
    Batch,
    BatchCancelled,
    BatchCreated,
    BatchEvent,
    BatchRequest,
    BatchShots,
    CharacterLearning,
    CharacterList,
    CharacterStored,
    Continuity,
    Health,
    ReviewRequest,
    ShotDetail,
    StateRequest,
    Upload,
)

JSON, YAML, MULTIPART, BINARY = "application/json", "application/yaml", "multipart/form-data", "*/*"
EVENT_STREAM, PROMETHEUS = "text/event-stream", "text/plain"


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Callable
    summary: str
    answers: dict[int, type[BaseModel] | tuple[str, str]]   # status -> model, or (media type, description)
    body: dict[str, type[BaseModel] | dict] = field(default_factory=dict)  # media type -> model or JSON schema
    token: bool = False           # needs `Authorization: Bearer <token>` (every write, and event streams)
    conflicts: str | None = None  # what a 409 means here
    description: str = ""


_SHOT_PATHS = "/api/v1/shots/{shot_id}"
_BATCH_PATHS = "/api/v1/batches/{batch_id}"

ROUTES: list[Route] = [
    Route("GET", "/health", system.health, "liveness", {200: Health}),
    Route("GET", "/openapi.json", None, "this document", {200: (JSON, "the OpenAPI 3.1 document")}),
    Route("GET", "/", review_page.review_page,
          "the review page: approve or reject the shots the checks left to a person",
          {200: ("text/html", "the page (it asks for the token once and keeps it in the browser)")}),
    Route("GET", "/review.js", review_page.review_script, "the review page's script",
          {200: ("text/javascript", "plain JavaScript, no build step")}),
    Route("GET", "/review.css", review_page.review_style, "the review page's style sheet",
          {200: ("text/css", "the page's styles")}),
    Route("GET", "/api/v1/batches", review_page.list_batches, "recent batches with their counts, newest first",
          {200: review_page.BatchList, 400: (JSON, "`limit` is not a whole number from 1 to 200")},
          description="Query `limit` (1..200, default 20)."),
    Route("GET", "/api/v1/attempts/{attempt_id}/outputs/{index}", review_page.attempt_output,
          "an attempt's output image, from the backend that rendered it",
          {200: ("image/png", "the image at its own size (a JPEG or WebP output re-encoded as PNG)"),
           404: (JSON, "no such attempt or output, not an image, or the backend no longer has it"),
           502: (JSON, "the backend that rendered it cannot be reached")},
          description="`index` counts the attempt's outputs from 0, in the order ShotDetail lists them."),
    Route("GET", "/metrics", system.metrics, "Prometheus metrics",
          {200: (PROMETHEUS, "shots by status, claim and attempt durations, backend queue depth, connected and "
                             "restarts, verdict pass rates")}),
    Route("POST", "/api/v1/batches", batches.submit_batch, "submit a shot list", {201: BatchCreated},
          body={JSON: BatchRequest, YAML: BatchRequest, MULTIPART: {
              "type": "object", "required": ["shots"],
              "properties": {"shots": {"type": "string", "description": "the shot list, JSON or YAML"}},
              "additionalProperties": {"type": "string", "format": "binary",
                                       "description": "an image a shot names by this part's file name"}}},
          token=True, description="JSON, a YAML shot-list file as is, or multipart with a `shots` part and the "
                                  "images the shots name. Every shot is checked before anything is queued."),
    Route("GET", _BATCH_PATHS, batches.get_batch, "a batch's progress", {200: Batch}),
    Route("GET", _BATCH_PATHS + "/shots", batches.get_batch_shots, "a batch's shots with score, band and output",
          {200: BatchShots}),
    Route("POST", _BATCH_PATHS + "/cancel", batches.cancel_batch, "cancel the shots not yet final",
          {200: BatchCancelled}, token=True, conflicts="every shot is already final",
          description="Running prompts are interrupted on their backend."),
    Route("GET", _BATCH_PATHS + "/events", batches.batch_events, "server-sent events of a batch",
          {200: BatchEvent}, token=True,
          description="`event: progress` with the batch (data: BatchEvent) on every change, then `event: done`. "
                      "503 past the service's cap on open streams."),
    Route("GET", _BATCH_PATHS + "/continuity", batches.get_continuity,
          "what carries over: character states along the story, each character's kept frame per scene",
          {200: Continuity}),
    Route("POST", _BATCH_PATHS + "/states", batches.add_state,
          "set a character's state from a shot on (the shots not started yet take it)", {201: Continuity},
          body={JSON: StateRequest}, token=True),
    Route("POST", _BATCH_PATHS + "/assemblies", assemblies.create_assemblies,
          "queue a job cutting approved shots into scenes (and an episode)", {202: AssemblyJobAccepted},
          body={JSON: AssemblyRequest}, token=True, conflicts="a scene has no approved shot, or one has no file"),
    Route("GET", _BATCH_PATHS + "/assemblies", assemblies.list_assemblies, "a batch's assemblies",
          {200: AssemblyList}),
    Route("GET", "/api/v1/assembly-jobs/{job_id}", assemblies.get_assembly_job, "an assembly job",
          {200: AssemblyJob}),
    Route("GET", _SHOT_PATHS, batches.get_shot, "a shot with every attempt", {200: ShotDetail}),
    Route("POST", _SHOT_PATHS + "/cancel", batches.cancel_shot, "cancel a shot (its prompt is interrupted)",
          {200: ShotDetail}, token=True, conflicts="the shot is already final"),
    Route("POST", _SHOT_PATHS + "/retry", batches.retry_shot, "queue a finished shot again, one attempt more",
          {200: ShotDetail}, token=True, conflicts="the shot is queued or running"),
    Route("POST", _SHOT_PATHS + "/review", batches.review_shot,
          "approve or reject a shot in needs_review, or approve a rejected one", {200: ShotDetail},
          body={JSON: ReviewRequest}, token=True, conflicts="the shot is not in needs_review (or rejected)",
          description="Approving releases the shots that continue it."),
    Route("GET", "/api/v1/characters", characters.list_characters, "the character library", {200: CharacterList}),
    Route("PUT", "/api/v1/characters/{folder}", characters.put_character,
          "create or update a character from its sheet and reference images", {200: CharacterStored},
          body={MULTIPART: {"type": "object", "required": ["sheet"], "properties": {
              "sheet": {"description": "the sheet as YAML or JSON text; its fields:",
                        "contentMediaType": "application/yaml", **{"$ref": "#/components/schemas/CharacterSheet"}},
              "reference": {"type": "array", "items": {"type": "string", "format": "binary"},
                            "description": "reference images, named by their file names"}}}},
          token=True),
    Route("POST", "/api/v1/uploads", uploads.create_upload,
          "upload an image (a shot's input) or an audio file (an assembly's music)", {201: Upload},
          body={BINARY: {"type": "string", "format": "binary"}, MULTIPART: {
              "type": "object", "required": ["file"],
              "properties": {"file": {"type": "string", "format": "binary"}}}},
          token=True, description="Shots and assemblies then name it as `sha256:<hex>`. Stored in PostgreSQL, "
                                  "so every controller of a farm can use it."),
    Route("GET", "/api/v1/backends", system.list_backends, "the ComfyUI backends of this controller",
          {200: Backends}),
    Route("GET", "/api/v1/analytics", system.analytics,
          "pass rates per character, approval rates per correction, what the learner learned", {200: Analytics}),
    Route("GET", "/api/v1/characters/{character}/learning", learning.get_learning,
          "what the learner learned for a character: batch by batch, its preferences now, its learned negatives",
          {200: CharacterLearning}),
    Route("DELETE", "/api/v1/characters/{character}/negatives/{term}", learning.remove_negative,
          "stop adding a learned negative term to the character's shots",
          {200: CharacterLearning, 404: (JSON, "the character has no such learned term in use")}, token=True,
          description="A later rejection of the same category teaches it again."),
    Route("GET", "/api/v1/characters/{folder}/loras", lora_registry.list_loras,
          "the character's LoRA registry: every version, its status, its validation scores and decision",
          {200: lora_registry.LoraList}),
    Route("GET", "/api/v1/characters/{folder}/dataset", characters.get_dataset,
          "a character's golden dataset for LoRA training, as a zip",
          {200: ("application/zip", "frames/ and faces/ PNGs at 512/768/1024 with a caption .txt beside each, and "
                                    "manifest.json"), 404: (JSON, "no such character in the library")},
          token=True, description="Query `min_score` (0..1, default 0.85): the identity score an approved frame "
                                  "needs. Near-copies are dropped; manifest.json names them and why."),
]

# models the document names that no route uses directly
EXTRA_MODELS = (CharacterSheet,)
