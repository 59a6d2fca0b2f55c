"""The character library over HTTP: list the characters, create or update one from a sheet and references."""
from __future__ import annotations

import asyncio

from aiohttp import web
from shotline.core.characters import CharacterSheetError, parse_sheet, reference_name_error, write_character

from shotline_controller.api.keys import POOL, SETTINGS
from shotline_controller.api.requests import ApiError, answer, path_key, read_body, read_multipart
from shotline_controller.contract import CharacterList, CharacterStored
from shotline_controller.golden_dataset import DEFAULT_MIN_SCORE, DatasetError, build_dataset, check_min_score, zipped
from shotline_controller.media.sniff import sniff
from shotline_controller.parsing import parse_off_loop
from shotline_controller.settings import SettingsError
from shotline_controller.store.characters import CharacterStore


async def list_characters(request: web.Request) -> web.Response:
    return await answer(CharacterList, {"characters": await CharacterStore(request.app[POOL]).list()})


async def _sheet_and_references(request: web.Request) -> tuple[bytes | None, dict[str, bytes]]:
    if request.content_type == "application/x-www-form-urlencoded":  # a sheet alone, as simple clients send it
        from urllib.parse import parse_qs
        try:
            form = parse_qs((await read_body(request)).decode(), strict_parsing=False, max_num_fields=10)
        except (UnicodeDecodeError, ValueError) as error:
            raise ApiError("body", f"not a readable form: {type(error).__name__}") from None
        unknown = sorted(set(form) - {"sheet"})
        if unknown:
            raise ApiError(unknown[0][:64], "unknown field (known: sheet; send references as multipart files)")
        sheets = form.get("sheet", [])
        return (sheets[0].encode() if sheets else None), {}
    if not request.content_type.startswith("multipart/"):
        raise ApiError("Content-Type", "send multipart/form-data with a `sheet` part and `reference` file parts",
                       415)
    body = await read_multipart(request)
    sheet, references = None, {}
    for part in body.parts:
        if part.name == "sheet":
            if sheet is not None:
                raise ApiError("sheet", "send one sheet part")
            sheet = part.data
        elif part.name == "reference":
            if message := reference_name_error(part.filename):
                raise ApiError(f"references.{(part.filename or '')[:64]}", message)
            found = sniff(part.data)
            if found is None or found.kind != "image":
                raise ApiError(f"references.{part.filename}", "is not a PNG, JPEG, WebP or BMP image")
            references[part.filename] = part.data
        else:
            raise ApiError(part.name[:64] or "body", "unknown part (known: sheet, reference)")
    return sheet, references


async def put_character(request: web.Request) -> web.Response:
    """multipart: one `sheet` part (YAML or JSON) and any number of `reference` image parts."""
    folder = path_key(request, "folder")
    sheet_text, references = await _sheet_and_references(request)
    if sheet_text is None:
        raise ApiError("sheet", "required: the character sheet (YAML or JSON) as a `sheet` part")
    data = await parse_off_loop(sheet_text, as_yaml=True, field="sheet")  # JSON is YAML too
    try:
        sheet = parse_sheet(data)
        library = request.app[SETTINGS].character_library
        character = await asyncio.to_thread(write_character, library, folder, sheet, references)
    except SettingsError as error:
        raise ApiError(None, str(error), 503) from None
    except CharacterSheetError as error:
        field = error.field if error.field in ("sheet", "folder") or error.field.startswith("references") \
            else f"sheet{'' if error.field.startswith('[') else '.'}{error.field}"
        raise ApiError(field, error.message) from None
    character_id = await CharacterStore(request.app[POOL]).put(character)
    return await answer(CharacterStored, {"id": character_id, "folder": folder, "name": character.name,
                                          "style": character.sheet.style,
                                          "references": [path.name for path in character.references]})


async def get_dataset(request: web.Request) -> web.Response:
    """The character's golden dataset (controller/golden_dataset.py) as a zip: `?min_score=0.85`."""
    folder = path_key(request, "folder")
    unknown = sorted(set(request.query) - {"min_score"})
    if unknown:
        raise ApiError(unknown[0][:64], "unknown query parameter (known: min_score)")
    try:
        min_score = check_min_score(request.query.get("min_score", DEFAULT_MIN_SCORE))
        library = request.app[SETTINGS].character_library
        files, _ = await build_dataset(request.app[POOL], library, folder, min_score)
    except SettingsError as error:
        raise ApiError(None, str(error), 503) from None
    except DatasetError as error:
        raise ApiError(error.field, error.message, 404 if error.field == "character" else 400) from None
    body = await asyncio.to_thread(zipped, files, f"{folder}-dataset")
    return web.Response(body=body, content_type="application/zip", headers={
        "Content-Disposition": f'attachment; filename="{folder}-dataset.zip"'})
