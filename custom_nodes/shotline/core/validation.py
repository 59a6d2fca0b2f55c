"""Rules every text a user gives must pass, and pydantic errors turned into `field: message`.

Shared by the pack (character sheets) and the controller's contract (shot lists, API bodies), so one text is
judged the same way everywhere:
- no NUL and no lone surrogate in any text (PostgreSQL's jsonb refuses the first, UTF-8 the second);
- no control characters: free text (prompts, dialogue) may hold tab, newline and carriage return, a name or a
  one-line field nothing below U+0020, nor DEL or the C1 range;
- names and ids match their pattern as a whole string (`re.fullmatch`: a trailing newline does not pass).

Types are `typing.Annotated` pydantic types; their JSON schema (what the OpenAPI document shows) states the same
rule as a pattern or a length.
"""
from __future__ import annotations

import re
import reprlib
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, StringConstraints, ValidationError, WithJsonSchema

_CONTROL_IN_FREE_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_CONTROL_IN_LINE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
# A key names a shot, a scene, a character folder or a file: letters, digits, '.', '_', '-'; 1..64; starts with a
# letter or digit. The JSON schema pattern is ECMA-262, where `$` is the end of the text (as fullmatch is here).
KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
KEY_RULE = "letters, digits, '.', '_' or '-', at most 64, starting with a letter or digit"
_KEY = re.compile(KEY_PATTERN[1:-1])
MAX_FREE_TEXT = 10_000


def check_text(value: str, multiline: bool = True) -> str:
    """`value` unchanged, or ValueError saying what is wrong with it (and where)."""
    if "\x00" in value:
        raise ValueError(f"must not contain a NUL character (at {value.index(chr(0))})")
    if match := _SURROGATE.search(value):
        raise ValueError(f"must be valid Unicode: a lone surrogate U+{ord(match[0]):04X} at {match.start()}")
    if match := (_CONTROL_IN_FREE_TEXT if multiline else _CONTROL_IN_LINE).search(value):
        raise ValueError(f"must not contain the control character U+{ord(match[0]):04X} (at {match.start()})"
                         + ("" if multiline else "; it is a single line"))
    return value


def check_key(value: str) -> str:
    check_text(value, multiline=False)
    if not _KEY.fullmatch(value):
        raise ValueError(f"must be {KEY_RULE}")
    return value


def _number_as_text(value: Any) -> Any:
    """YAML reads `id: 12` as a number; a key written that way is meant as the text "12"."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


# The checks run after pydantic's own (type, length); lengths are StringConstraints, so the JSON schema states them
# and a field may narrow them further with Field(max_length=...).
FreeText = Annotated[str, StringConstraints(max_length=MAX_FREE_TEXT), AfterValidator(check_text),
                     Field(description="no NUL or control characters except tab and newline")]
RequiredText = Annotated[str, StringConstraints(min_length=1, max_length=MAX_FREE_TEXT), AfterValidator(check_text),
                         AfterValidator(_not_blank),
                         Field(description="not blank; no NUL or control characters except tab and newline")]
Line = Annotated[str, StringConstraints(max_length=MAX_FREE_TEXT),
                 AfterValidator(lambda value: check_text(value, multiline=False)),
                 Field(description="one line: no control characters")]
Key = Annotated[str, BeforeValidator(_number_as_text), AfterValidator(check_key),
                WithJsonSchema({"type": "string", "pattern": KEY_PATTERN, "description": KEY_RULE})]


def error_path(location: tuple) -> str:
    """('shots', 1, 'seed') -> 'shots[1].seed'."""
    path = ""
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part not in ("[key]",):
            path += f".{part}" if path else str(part)
    return path


_SHOWN = reprlib.Repr()  # keyword arguments only from Python 3.12; ComfyUI runs on 3.10 too
_SHOWN.maxstring, _SHOWN.maxother, _SHOWN.maxlist, _SHOWN.maxdict, _SHOWN.maxlevel = 60, 60, 4, 4, 2


def _shown(value: Any) -> str:
    """A short repr: never the whole of a huge (or self-referencing) value."""
    return _SHOWN.repr(value)


MESSAGES = {
    "missing": "required",
    "extra_forbidden": "unknown field",
    "string_type": "must be a string",
    "int_type": "must be a whole number",
    "float_type": "must be a number",
    "bool_type": "must be true or false",
    "list_type": "must be a list",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "string_unicode": "must be valid Unicode text (no lone surrogates)",
    "finite_number": "must be a finite number",
}


def _model_at(model, location: tuple):
    """The pydantic model class that holds the last field of `location`, walking from `model`; None if unknown."""
    for part in location[:-1]:
        if isinstance(part, int) or part == "[key]":
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return None
        model = _inner_model(field.annotation)
        if model is None:
            return None
    return model if hasattr(model, "model_fields") else None


def _inner_model(annotation):
    from typing import get_args
    if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
        return annotation
    for argument in get_args(annotation):
        found = _inner_model(argument)
        if found is not None:
            return found
    return None


def first_error(error: ValidationError, prefix: str = "", model=None) -> tuple[str, str]:
    """The first problem pydantic found, as (field path, message): the shape every Shotline error has.
    With `model` (the class validated), an unknown field's message lists the known ones."""
    details = error.errors(include_url=False)[0]
    kind, context = details["type"], details.get("ctx") or {}
    if kind == "extra_forbidden" and model is not None and (holder := _model_at(model, details["loc"])):
        message = f"unknown field (known: {', '.join(holder.model_fields)})"
    elif kind == "value_error":
        message = str(context.get("error", details["msg"]))
    elif kind in MESSAGES:
        message = MESSAGES[kind]
    elif kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        message = details["msg"].replace("Input should be", "must be")
    elif kind == "string_pattern_mismatch":
        message = f"must match {context.get('pattern')}"
    elif kind == "literal_error":
        message = f"must be one of {context.get('expected')}"
    elif kind == "too_short":
        message = f"must have at least {context.get('min_length')} item(s)"
    elif kind == "too_long":
        message = f"must have at most {context.get('max_length')} items"
    elif kind in ("string_too_short", "string_too_long"):
        message = details["msg"].replace("String should", "must")
    else:
        message = details["msg"].replace("Input should", "must")
    if kind not in ("missing", "extra_forbidden"):
        message += f", got {_shown(details.get('input'))}"
    path = error_path(details["loc"])
    if prefix:
        path = f"{prefix}.{path}" if path and not path.startswith("[") else f"{prefix}{path}"
    return path or "body", message
