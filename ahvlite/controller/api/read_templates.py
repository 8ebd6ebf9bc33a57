"""Reads about templates: the catalogue, one template with its versions."""

from __future__ import annotations

import logging
from typing import Any

from ahvlite.controller.api.reads import NoQuery, Read, ReadContext
from ahvlite.errors import AhvliteError

log = logging.getLogger(__name__)


def template_list(ctx: ReadContext, _q: NoQuery) -> list[dict[str, Any]]:
    from ahvlite.cluster.templates import COLLECTION
    from ahvlite.spec.errors import build
    from ahvlite.spec.template import TemplateSpec

    state = ctx.spec().state
    out = []
    for name in sorted(ctx.coord.children(COLLECTION)):
        try:
            raw = state.doc(COLLECTION, name)
            if raw is not None:
                out.append(build(TemplateSpec, **raw).model_dump(mode="json"))
        except AhvliteError as exc:  # a record that does not decode is left out
            log.warning("template %r left out: %s", name, exc.message)
    return out


def template_show(ctx: ReadContext, _q: NoQuery, *, name: str) -> dict[str, Any]:
    from ahvlite.cluster.templates import load_template

    return load_template(ctx.spec().state, name).model_dump(mode="json")


READS: tuple[Read, ...] = (
    Read("/v1/templates", template_list, "every template with its versions"),
    Read("/v1/templates/{name}", template_show, "one template, its versions, the active one"),
)
