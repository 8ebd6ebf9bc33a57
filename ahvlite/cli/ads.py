"""``ahvlite ads``: the dynamic scheduler's plan (dry run), run, rules, effectiveness.

Demand comes from the controller's newest stats when a store is configured (``--store``
or $AHVLITE_STORE), else from two local samples of every host. ``plan --snapshot FILE``
plans on a saved snapshot (``ahvlite ads snapshot > FILE``) without touching a host.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from ahvlite.cli.context import ClusterOpt, load
from ahvlite.cli.controller import StoreOpt
from ahvlite.cli.output import console, emit_json, progress, table
from ahvlite.cli.task import configured_store
from ahvlite.errors import InvalidSpec, NotFound

app = typer.Typer(no_args_is_help=True,
                  help="ADS, the dynamic scheduler: plan, run, snapshot, rules, effectiveness.")
rules_app = typer.Typer(no_args_is_help=True, help="VM-host affinity and VM-VM anti-affinity.")
app.add_typer(rules_app, name="rules")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
SolverOpt = Annotated[str, typer.Option("--solver", help="auto, cpsat or heuristic.")]
TimeLimitOpt = Annotated[float, typer.Option("--time-limit", help="CP-SAT seconds at most.",
                                             min=0.1, max=600)]
SampleOpt = Annotated[float, typer.Option(
    "--sample", help="Seconds between the two local samples (without a store).",
    min=0.2, max=60)]
CpuThOpt = Annotated[float | None, typer.Option(
    "--cpu-threshold", help="Host CPU % above which a host is a hotspot (default 85).",
    min=1, max=100, show_default=False)]
StorageThOpt = Annotated[float | None, typer.Option(
    "--storage-threshold", help="Storage-service CPU % of its allocation above which a "
    "host is a hotspot (default 85).", min=1, max=100, show_default=False)]
PenaltyOpt = Annotated[int | None, typer.Option(
    "--move-penalty", help="Cost of one migration in MiB, on top of the memory it moves "
    "(default 1024).", min=0, show_default=False)]
LAST_RUN_KEY = "ads-last-run"


def _tuned(problem: Any, cpu: float | None, storage: float | None,
           penalty: int | None) -> Any:
    from dataclasses import replace

    th = problem.thresholds
    th = replace(th, cpu_pct=th.cpu_pct if cpu is None else cpu,
                 storage_pct=th.storage_pct if storage is None else storage)
    return replace(problem, thresholds=th, move_penalty_mib=problem.move_penalty_mib
                   if penalty is None else penalty)


def _records(store: str | None) -> dict[str, list[dict[str, Any]]] | None:
    url = configured_store(store)
    if url is None:
        return None
    from ahvlite.controller.coord import open_store
    from ahvlite.controller.hostmon import read_stats

    coord = open_store(url)
    try:
        return {r["host"]: [r] for r in read_stats(coord)}
    finally:
        coord.close()


def _live_problem(cluster: Path | None, store: str | None, sample_s: float) -> Any:
    from ahvlite.cluster.adsinput import snapshot

    _, spec = load(cluster)
    return snapshot(spec, records=_records(store), sample_s=sample_s)


def _read_snapshot(path: Path) -> Any:
    from ahvlite.controller.ads.model import Problem

    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NotFound(f"snapshot file {path} does not exist",
                       hint="`ahvlite ads snapshot > FILE` writes one") from None
    except json.JSONDecodeError as exc:
        raise InvalidSpec("--snapshot", str(path), f"a JSON file ({exc})") from None
    except UnicodeDecodeError as exc:
        raise InvalidSpec("--snapshot", str(path), f"a UTF-8 JSON file ({exc.reason} "
                          f"at byte {exc.start})") from None
    except OSError as exc:  # a directory, no permission, ...
        raise InvalidSpec("--snapshot", str(path),
                          f"a readable JSON file ({exc.strerror or exc})",
                          hint="`ahvlite ads snapshot > FILE` writes one") from None
    return Problem.from_dict(raw)


def _check_solver(solver: str) -> None:
    """Refuse a bad --solver before reading anything (make_plan checks it again, as
    the API's own guard, but only after the cluster was sampled)."""
    from ahvlite.controller.ads.plan import SOLVERS

    if solver not in SOLVERS:
        raise InvalidSpec("--solver", solver, ", ".join(SOLVERS))


def _make_plan(problem: Any, solver: str, time_limit_s: float) -> Any:
    from ahvlite.controller.ads.plan import make_plan

    return make_plan(problem, solver=solver, time_limit_s=time_limit_s)  # type: ignore[arg-type]


def _show_plan(plan: Any) -> None:
    hot = ", ".join(f"{h.host} {h.resource} {h.demand_pct:g}% (> {h.threshold_pct:g}%)"
                    for h in plan.hotspots) or "none"
    for w in plan.warnings:
        console.print(f"[yellow]warning:[/] {w}", highlight=False)
    console.print(f"hotspots: {hot}", highlight=False)
    if not plan.moves:
        console.print(f"no moves ({plan.status}). {plan.note}".strip(), highlight=False)
    else:
        rows = [[i + 1, m.vm, m.source, m.target, m.memory_mib,
                 "temporary hop" if m.temporary else ""] for i, m in enumerate(plan.moves)]
        console.print(table("moves, in order", ["step", "vm", "from", "to", "memory MiB", ""],
                            rows))
        bound = "" if plan.bound_mib is None else f", bound {plan.bound_mib:g} MiB"
        console.print(f"cost {plan.cost_mib} MiB ({plan.memory_moved_mib} MiB moved + "
                      f"penalties){bound}; solver {plan.solver}, {plan.status}"
                      + (f"; {plan.note}" if plan.note else ""), highlight=False)
    if plan.remaining:
        console.print("[yellow]still above threshold after the plan:[/] "
                      + ", ".join(f"{h.host} {h.resource}" for h in plan.remaining))
    rows = [[h, u.cpu_pct, u.storage_pct, u.memory_pct] for h, u in plan.predicted.items()]
    console.print(table("predicted utilization", ["host", "cpu %", "storage cpu %",
                                                  "memory %"], rows))


@app.command()
def snapshot(cluster: ClusterOpt = None, store: StoreOpt = None,
             sample_s: SampleOpt = 1.0) -> None:
    """Print the live cluster as ADS input (JSON), for `ads plan --snapshot FILE`."""
    problem = _live_problem(cluster, store, sample_s)
    typer.echo(json.dumps(problem.to_dict(), indent=2))


@app.command()
def plan(cluster: ClusterOpt = None, store: StoreOpt = None,
         snapshot_file: Annotated[Path | None, typer.Option(
             "--snapshot", help="Plan on this snapshot file instead of the live cluster.",
             show_default=False)] = None,
         solver: SolverOpt = "auto", time_limit_s: TimeLimitOpt = 5.0,
         sample_s: SampleOpt = 1.0, cpu_threshold: CpuThOpt = None,
         storage_threshold: StorageThOpt = None, move_penalty: PenaltyOpt = None,
         json_out: JsonOpt = False) -> None:
    """Dry run: the hotspots and the migrations ADS would make, in order, with cost."""
    _check_solver(solver)
    with progress(not json_out, "reading the cluster") as report:
        if snapshot_file is not None:
            problem = _read_snapshot(snapshot_file)
        else:
            problem = _live_problem(cluster, store, sample_s)
        report("planning")
        problem = _tuned(problem, cpu_threshold, storage_threshold, move_penalty)
        result = _make_plan(problem, solver, time_limit_s)
    if json_out:
        emit_json(result.to_dict())
        return
    _show_plan(result)


@app.command()
def run(cluster: ClusterOpt = None, store: StoreOpt = None, solver: SolverOpt = "auto",
        time_limit_s: TimeLimitOpt = 5.0, sample_s: SampleOpt = 1.0,
        cpu_threshold: CpuThOpt = None, storage_threshold: StorageThOpt = None,
        move_penalty: PenaltyOpt = None, json_out: JsonOpt = False) -> None:
    """Plan on the live cluster and carry out its migrations in order (stops at the
    first failure; what moved stays moved). With a controller store each migration is
    a vm.migrate task, submitted when the one before has succeeded."""
    from ahvlite.cluster.migrate import migrate_vm
    from ahvlite.errors import AhvliteError

    _check_solver(solver)
    path, spec = load(cluster)
    results: list[dict[str, Any]] = []
    error: AhvliteError | None = None
    with progress(not json_out, "reading the cluster") as report:
        problem = _live_problem(path, store, sample_s)
        report("planning")
        problem = _tuned(problem, cpu_threshold, storage_threshold, move_penalty)
        result = _make_plan(problem, solver, time_limit_s)
        url = configured_store(store)
        for i, m in enumerate(result.moves):
            report(f"step {i + 1}/{len(result.moves)}: {m.vm} {m.source} -> {m.target}")
            try:
                if url is not None:
                    results.append(_migrate_by_task(url, m.vm, m.target, path))
                else:
                    results.append(migrate_vm(spec, m.vm, to=m.target).to_dict())
            except AhvliteError as exc:
                error = exc
                break
    record = {"at": time.time(), "plan": result.to_dict(), "migrations": results,
              "error": error.to_dict() if error else None}
    spec.state.put(LAST_RUN_KEY, record)
    if json_out:
        emit_json(record)
    else:
        _show_plan(result)
        if result.moves and error is None:
            console.print(f"[green]done:[/] {len(results)} migration(s)")
    if error is not None:
        error.message = (f"step {len(results) + 1} ({result.moves[len(results)].vm}): "
                         f"{error.message}; {len(results)} earlier step(s) done")
        raise error


def _controller_plan(store: str | None) -> dict[str, Any] | None:
    """The controller's newest ADS plan with moves, if a store is configured."""
    url = configured_store(store)
    if url is None:
        return None
    from ahvlite.controller.adsservice import LAST_MOVING_KEY
    from ahvlite.controller.coord import open_store

    coord = open_store(url)
    try:
        got = coord.get(LAST_MOVING_KEY)
    finally:
        coord.close()
    return None if got is None else dict(json.loads(got.value))


def _migrate_by_task(url: str, vm: str, to: str, cluster_file: Path) -> dict[str, Any]:
    from ahvlite.controller.coord import open_store
    from ahvlite.controller.kinds import registry
    from ahvlite.controller.tasks import TaskStore
    from ahvlite.errors import OperationFailed

    ts = TaskStore(open_store(url), time.time)
    try:
        task = ts.submit("vm.migrate", {"name": vm, "to": to}, registry())
        task = ts.wait(task.id, 3600.0, time.sleep, time.monotonic)
    finally:
        ts.coord.close()
    if task.state != "succeeded":
        raise OperationFailed(f"task {task.id} {task.state}: {task.error or task.message}")
    return {"task": task.id, **(task.result or {})}


@app.command()
def effectiveness(cluster: ClusterOpt = None, store: StoreOpt = None,
                  sample_s: SampleOpt = 1.0, json_out: JsonOpt = False) -> None:
    """Predicted (by the last ADS plan that moved VMs: the controller's with a store,
    else the last `ads run`) vs observed CPU utilization of each host now."""
    from ahvlite.controller.ads.effectiveness import compare, observe

    _, cspec = load(cluster)
    last_plan = _controller_plan(store) or cspec.state.get(LAST_RUN_KEY).get("plan")
    if not last_plan:
        raise NotFound("no ADS run recorded for this cluster",
                       hint="`ahvlite ads run` first (or let the controller's ADS run)")
    with progress(not json_out, "reading the cluster"):
        problem = _live_problem(cluster, store, sample_s)
    observed = {h: u.cpu_pct for h, u in observe(problem).items()}
    # Each hotspot is judged by the threshold its plan used, not today's setting.
    eff = compare(last_plan, observed)
    if json_out:
        emit_json(eff.to_dict())
        return
    console.print(table("predicted vs observed CPU %", ["host", "predicted", "observed",
                                                        "error"],
                        [[h.host, h.predicted_cpu_pct, h.observed_cpu_pct, h.error_pct]
                         for h in eff.hosts]))
    console.print(f"mean |error| {eff.mean_abs_error_pct} points, max "
                  f"{eff.max_abs_error_pct}; relieved: {', '.join(eff.relieved) or '-'}; "
                  f"still hot: {', '.join(eff.still_hot) or '-'}"
                  + (f"; not observed now: {', '.join(eff.unknown)}" if eff.unknown else ""),
                  highlight=False)


# -- rules --------------------------------------------------------------------------

def _split(value: str | None, field: str) -> tuple[str, ...]:
    items = tuple(x.strip() for x in (value or "").split(",") if x.strip())
    if not items:
        raise InvalidSpec(field, value, "a comma-separated list of names")
    return items


@rules_app.command("add")
def rules_add(
    name: Annotated[str, typer.Argument(help="Rule name.")],
    vms: Annotated[str, typer.Option("--vms", help="VM names, comma-separated.")],
    hosts: Annotated[str | None, typer.Option(
        "--hosts", help="Host names for VM-host affinity, comma-separated.",
        show_default=False)] = None,
    kind: Annotated[str, typer.Option(
        "--kind", help="must or should (VM-host affinity), anti (VM-VM anti-affinity).")
    ] = "must",
    cluster: ClusterOpt = None, json_out: JsonOpt = False,
) -> None:
    """Add a rule: `--kind must|should --vms A,B --hosts H1,H2`, or `--kind anti --vms A,B`."""
    from ahvlite.cluster.adsinput import add_rule
    from ahvlite.controller.ads.model import AntiAffinityGroup, VmHostAffinity

    _path, spec = load(cluster)
    vm_names = _split(vms, "--vms")
    rule: VmHostAffinity | AntiAffinityGroup
    if kind == "anti":
        if hosts:
            raise InvalidSpec("--hosts", hosts, "nothing for --kind anti (VM-VM rule)")
        if len(vm_names) < 2:
            raise InvalidSpec("--vms", vms, "at least two VM names for anti-affinity")
        rule = AntiAffinityGroup(name, vm_names)
    elif kind in ("must", "should"):
        rule = VmHostAffinity(name, vm_names, _split(hosts, "--hosts"), kind)  # type: ignore[arg-type]
    else:
        raise InvalidSpec("--kind", kind, "must, should or anti")
    rules = add_rule(spec, rule)
    if json_out:
        emit_json(rules.to_dict())
        return
    console.print(f"rule {name} added ({len(rules.names())} in all)", highlight=False)


@rules_app.command("list")
def rules_list(cluster: ClusterOpt = None, json_out: JsonOpt = False) -> None:
    """The ADS rules of the cluster."""
    from ahvlite.cluster.adsinput import load_rules
    from ahvlite.controller.ads.model import stale_rule_hosts

    _, spec = load(cluster)
    rules = load_rules(spec.state)
    # Hosts removed since the rule was added: ignored by ADS, flagged here.
    stale = stale_rule_hosts(rules, {h.name for h in spec.hosts})
    if json_out:
        emit_json({**rules.to_dict(), "stale": {k: list(v) for k, v in stale.items()}})
        return
    rows = [[r.name, r.kind, ", ".join(r.vms), ", ".join(r.hosts),
             f"hosts gone: {', '.join(stale[r.name])}" if r.name in stale else ""]
            for r in rules.host_affinity]
    rows += [[r.name, "anti", ", ".join(r.vms), "", ""] for r in rules.anti_affinity]
    console.print(table("ADS rules", ["name", "kind", "vms", "hosts", "stale"], rows))


@rules_app.command("remove")
def rules_remove(name: Annotated[str, typer.Argument(help="Rule name.")],
                 cluster: ClusterOpt = None, json_out: JsonOpt = False) -> None:
    """Remove a rule by name."""
    from ahvlite.cluster.adsinput import remove_rule

    _, spec = load(cluster)
    rules = remove_rule(spec.state, name)
    if json_out:
        emit_json(rules.to_dict())
        return
    console.print(f"rule {name} removed ({len(rules.names())} left)", highlight=False)
