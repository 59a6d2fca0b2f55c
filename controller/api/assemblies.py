"""Assemblies over HTTP: queue a durable job that cuts a batch's approved shots into scenes (and an episode)."""
from __future__ import annotations

from aiohttp import web

from shotline_controller.api.batches import batch_or_404, found
from shotline_controller.api.keys import POOL, SETTINGS
from shotline_controller.api.requests import ApiError, answer, json_object
from shotline_controller.contract import AssemblyJob, AssemblyJobAccepted, AssemblyList, AssemblyRequest, validated
from shotline_controller.media.assembly import AssemblyError
from shotline_controller.media.assembly_jobs import AssemblyConflict, BatchNotFound, check_assembly
from shotline_controller.store.assemblies import AssemblyStore


async def create_assemblies(request: web.Request) -> web.Response:
    """Check the request and the batch (the cheap part: every requested scene has an approved shot with a file),
    then queue a durable job and answer 202 with where to follow it; the assembly worker does the media work."""
    batch = await batch_or_404(request)
    options = validated(AssemblyRequest, await json_object(request))
    settings, pool = request.app[SETTINGS], request.app[POOL]
    try:
        await check_assembly(pool, batch["id"], options)
    except BatchNotFound as error:  # deleted meanwhile
        raise ApiError("batch_id", str(error), 404) from None
    except AssemblyConflict as error:
        raise ApiError(None, str(error), 409) from None
    except AssemblyError as error:  # a scene the batch does not have, music that is no audio upload
        raise ApiError(error.field, error.message) from None
    job = await AssemblyStore(pool).create_job(batch["id"], options.model_dump(mode="json", exclude_none=True),
                                               scenes_dir=settings.assemblies_dir / str(batch["id"]),
                                               library_dir=settings.library_dir)
    if job is None:
        raise ApiError("batch_id", f"no batch {batch['id']}", 404)
    location = f"/api/v1/assembly-jobs/{job.id}"
    return await answer(AssemblyJobAccepted, {"job_id": job.id, "status": "queued", "location": location},
                        status=202, headers={"Location": location})


async def get_assembly_job(request: web.Request) -> web.Response:
    return await answer(AssemblyJob, await found(request, "job_id", AssemblyStore(request.app[POOL]).job))


async def list_assemblies(request: web.Request) -> web.Response:
    batch = await batch_or_404(request)
    return await answer(AssemblyList, {"batch_id": batch["id"],
                                       "assemblies": await AssemblyStore(request.app[POOL]).assemblies(batch["id"])})
