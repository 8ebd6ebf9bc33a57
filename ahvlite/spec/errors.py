"""Turn pydantic's ValidationError into ahvlite's InvalidSpec (field, value, allowed)."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from ahvlite.errors import InvalidSpec

M = TypeVar("M", bound=BaseModel)


def build(model: type[M], **values: Any) -> M:
    """Validate ``values`` into ``model``; the first problem becomes an InvalidSpec."""
    try:
        return model(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or model.__name__
        reason = first["msg"].removeprefix("Value error, ")
        raise InvalidSpec(field, first.get("input"), reason) from None
