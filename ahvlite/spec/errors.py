"""Turn pydantic's ValidationError into ahvlite's InvalidSpec (field, value, allowed)."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from ahvlite.errors import InvalidSpec

M = TypeVar("M", bound=BaseModel)


def build(model: type[M], /, **values: Any) -> M:
    """Validate ``values`` into ``model``; the first problem becomes an InvalidSpec."""
    try:
        return model(**values)
    except ValidationError as exc:
        errors = exc.errors()
        # A field we do not know is named before anything missing: it is what a newer
        # or hostile writer added, and the reason nothing should act on the rest.
        first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        field = ".".join(str(p) for p in first["loc"]) or model.__name__
        reason = first["msg"].removeprefix("Value error, ")
        value = first.get("input")
        if first["type"] == "missing":
            value, reason = None, "required"
        elif first["type"] == "extra_forbidden":
            known = ", ".join(model.model_fields)
            reason = f"not one of the fields: {known}" if known else "no fields are taken"
        raise InvalidSpec(field, value, reason) from None
