"""``ha.set``: change the HA settings (only the fields given), checked before stored."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import model_validator

from ahvlite.controller.kinds.base import Kind, Params
from ahvlite.controller.tasks import TaskContext


class HaSetParams(Params):
    mode: Literal["default", "guarantee"] | None = None
    rf: int | None = None
    reservation: Literal["host", "segment"] | None = None
    lease_s: float | None = None
    watchdog_s: float | None = None
    margin_s: float | None = None

    @model_validator(mode="after")
    def _valid(self) -> HaSetParams:
        from ahvlite.controller.ha.settings import HaSettings

        # Each value alone against the defaults: a bad one is named before anything
        # reads the store (the leader checks the combination with what is stored).
        for name, value in self.changes().items():
            HaSettings().with_changes(**{name: value})
        return self

    def changes(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class HaSet(Kind[HaSetParams]):
    """``ha.set``: validate the new settings with what is stored, refuse a guarantee the
    running VMs already break (Conflict naming the missing MiB), store them. One
    compare-and-set; a resumed run does it again (same result)."""

    name = "ha.set"
    Params = HaSetParams

    def run(self, ctx: TaskContext) -> dict[str, Any]:
        from ahvlite.controller.ha.config import change_settings, load_settings
        from ahvlite.controller.ha.inventory import check_settings

        p = self.params(ctx)
        cluster = self.cluster()
        old = load_settings(cluster.state)
        new = old.with_changes(**p.changes())
        ctx.progress(20, f"checking HA mode {new.mode}, RF{new.rf}, {new.reservation} "
                         "reservation against the running VMs")
        check_settings(cluster, new, old)
        return change_settings(cluster.state, **p.changes()).to_doc()


KINDS: tuple[type[Kind[Any]], ...] = (HaSet,)
