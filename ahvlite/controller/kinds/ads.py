"""ADS task kinds: rules (``ads.rule.add``, ``ads.rule.remove``) and a run on demand
(``ads.run``: plan on the live cluster and carry out its moves in order)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from ahvlite.controller.kinds.base import Kind, Params
from ahvlite.controller.tasks import TaskContext
from ahvlite.errors import AhvliteError, Conflict, InvalidSpec, NotFound
from ahvlite.spec.cluster import NAME

RULE_NAME = Field(pattern=NAME, description="a rule name")
ITEM = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$"


class RuleAddParams(Params):
    name: str = RULE_NAME
    kind: Literal["must", "should", "anti"] = "must"
    vms: list[str] = Field(min_length=1, max_length=1000)
    hosts: list[str] = Field(default_factory=list, max_length=1000)

    @model_validator(mode="after")
    def _shape(self) -> RuleAddParams:
        import re

        for field, names in (("vms", self.vms), ("hosts", self.hosts)):
            for n in names:
                if not re.fullmatch(ITEM, n):
                    raise InvalidSpec(field, n, "names of letters, digits, '_', '.', '-'")
        if self.kind == "anti":
            if self.hosts:
                raise InvalidSpec("hosts", self.hosts, "nothing for kind anti (a VM-VM rule)")
            if len(set(self.vms)) < 2:
                raise InvalidSpec("vms", self.vms, "at least two VM names for anti-affinity")
        elif not self.hosts:
            raise InvalidSpec("hosts", self.hosts, f"at least one host for kind {self.kind}")
        return self

    def rule(self) -> Any:
        from ahvlite.sched.model import AntiAffinityGroup, VmHostAffinity

        if self.kind == "anti":
            return AntiAffinityGroup(self.name, tuple(self.vms))
        return VmHostAffinity(self.name, tuple(self.vms), tuple(self.hosts), self.kind)


class RuleAdd(Kind[RuleAddParams]):
    """``ads.rule.add``: store a VM-host affinity (must/should) or anti-affinity rule;
    its hosts must be the cluster's, its name new. A resumed run that finds the same
    rule stored (its first attempt's) counts it as done."""

    name = "ads.rule.add"
    Params = RuleAddParams

    def check(self, p: RuleAddParams) -> None:
        for h in p.hosts:
            self.host("hosts", h)

    def run(self, ctx: TaskContext) -> dict[str, Any]:
        from ahvlite.cluster.adsrules import add_rule, load_rules

        p = self.params(ctx)
        cluster = self.cluster()
        rule = p.rule()
        ctx.progress(10, f"adding ADS rule {p.name}")
        try:
            rules = add_rule(cluster, rule)
        except Conflict:
            stored = load_rules(cluster.state)
            if ctx.task.attempts > 1 and rule in (*stored.host_affinity,
                                                 *stored.anti_affinity):
                rules = stored
            else:
                raise
        return dict(rules.to_dict())


class RuleRemoveParams(Params):
    name: str = RULE_NAME


class RuleRemove(Kind[RuleRemoveParams]):
    """``ads.rule.remove``: remove a rule by name. A resumed run that finds it gone
    counts it as done (its first attempt removed it)."""

    name = "ads.rule.remove"
    Params = RuleRemoveParams

    def run(self, ctx: TaskContext) -> dict[str, Any]:
        from ahvlite.cluster.adsrules import load_rules, remove_rule

        p = self.params(ctx)
        cluster = self.cluster()
        ctx.progress(10, f"removing ADS rule {p.name}")
        try:
            rules = remove_rule(cluster.state, p.name)
        except NotFound:
            if ctx.task.attempts == 1:
                raise
            rules = load_rules(cluster.state)
        return dict(rules.to_dict())


class PlanOptions(Params):
    """The planner's options, shared by ``ads.run`` and the ``/v1/ads/plan`` read."""

    solver: Literal["auto", "cpsat", "heuristic"] = "auto"
    time_limit_s: float = Field(5.0, ge=0.1, le=600)
    sample_s: float = Field(1.0, ge=0.2, le=60,
                            description="seconds between two samples of a host whose "
                                        "controller publishes no stats")
    cpu_threshold: float | None = Field(None, ge=1, le=100)
    storage_threshold: float | None = Field(None, ge=1, le=100)
    move_penalty: int | None = Field(None, ge=0)


class AdsRun(Kind[PlanOptions]):
    """``ads.run``: plan on the live cluster, admit the plan's moves as a whole (HA
    guarantee mode), then migrate them in order, each like ``vm.migrate`` (stops at the
    first failure; what moved stays moved). The run is recorded (``ads-last-run``).

    The plan is a recorded step and so is each move: a resumed run keeps the plan and
    counts a move whose VM already runs on its target as done."""

    name = "ads.run"
    Params = PlanOptions

    def problem(self, cluster: Any, p: PlanOptions) -> Any:
        """The planner's input now (a test gives its own)."""
        from ahvlite.controller import adslive

        return adslive.live_problem(cluster, sample_s=p.sample_s,
                                    cpu_threshold=p.cpu_threshold,
                                    storage_threshold=p.storage_threshold,
                                    move_penalty=p.move_penalty)

    def run(self, ctx: TaskContext) -> dict[str, Any]:
        from ahvlite.controller import adslive
        from ahvlite.controller.ha.inventory import check_moves

        p = self.params(ctx)
        cluster = self.cluster()
        ctx.progress(5, "reading the cluster")

        def plan_now() -> dict[str, Any]:
            made = adslive.plan(self.problem(cluster, p), solver=p.solver,
                                time_limit_s=p.time_limit_s)
            return dict(made.to_dict())
        planned = ctx.step("plan", plan_now)
        moves = [(str(m["vm"]), str(m["source"]), str(m["target"])) for m in planned["moves"]]
        migrations: list[dict[str, Any]] = []
        try:
            check_moves(cluster, [(vm, target) for vm, _, target in moves])
        except AhvliteError as exc:
            adslive.record_run(cluster, planned, [], exc.to_dict())
            raise
        for i, (vm, source, target) in enumerate(moves):
            ctx.progress(10 + 85 * i // max(len(moves), 1),
                         f"step {i + 1}/{len(moves)}: {vm} {source} -> {target}")
            def move(vm: str = vm, target: str = target) -> dict[str, Any]:
                return self._move(ctx, cluster, vm, target)
            try:
                migrations.append(ctx.step(f"move-{i + 1}", move))
            except AhvliteError as exc:
                adslive.record_run(cluster, planned, migrations, exc.to_dict())
                exc.message = (f"step {i + 1} ({vm}): {exc.message}; {len(migrations)} "
                               "earlier step(s) done")
                raise
        return adslive.record_run(cluster, planned, migrations, None)

    @staticmethod
    def _move(ctx: TaskContext, cluster: Any, vm: str, to: str) -> dict[str, Any]:
        """One move with ``vm.migrate``'s semantics: a resumed attempt whose VM runs on
        ``to`` already counts as done."""
        from ahvlite.cluster import vms
        from ahvlite.cluster.migrate import migrate_vm

        if ctx.task.attempts > 1 and vms.show_vm(cluster, vm).host == to:
            return {"vm": vm, "destination": to, "note": "already there"}
        ctx.check_leader()
        return dict(migrate_vm(cluster, vm, to=to).to_dict())


KINDS: tuple[type[Kind[Any]], ...] = (RuleAdd, RuleRemove, AdsRun)
