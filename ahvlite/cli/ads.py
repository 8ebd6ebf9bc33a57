"""``ahvlite ads``: the dynamic scheduler's plan (dry run), run, rules, effectiveness.

Through the API: demand comes from the stats each host's controller publishes (hosts
without them are sampled by the controller that answers, ``--sample`` apart). ``run``
and the rules are tasks the leader runs. ``plan --snapshot FILE`` plans on a saved
snapshot (``ahvlite ads snapshot > FILE``) here, without the cluster: the planner is
pure.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from ahvlite.cli import api
from ahvlite.cli.output import console, emit_json, progress, table
from ahvlite.errors import InvalidSpec, NotFound

app = typer.Typer(no_args_is_help=True,
                  help="ADS, the dynamic scheduler: plan, run, snapshot, rules, effectiveness.")
rules_app = typer.Typer(no_args_is_help=True, help="VM-host affinity and VM-VM anti-affinity.")
app.add_typer(rules_app, name="rules")

SOLVERS = ("auto", "cpsat", "heuristic")
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
SolverOpt = Annotated[str, typer.Option("--solver", help="auto, cpsat or heuristic.")]
TimeLimitOpt = Annotated[float, typer.Option("--time-limit", help="CP-SAT seconds at most.",
                                             min=0.1, max=600)]
SampleOpt = Annotated[float, typer.Option(
    "--sample", help="Seconds between the two samples of a host whose controller "
    "publishes no stats.", min=0.2, max=60)]
CpuThOpt = Annotated[float | None, typer.Option(
    "--cpu-threshold", help="Host CPU % above which a host is a hotspot (default 85).",
    min=1, max=100, show_default=False)]
StorageThOpt = Annotated[float | None, typer.Option(
    "--storage-threshold", help="Storage-service CPU % of its allocation above which a "
    "host is a hotspot (default 85).", min=1, max=100, show_default=False)]
PenaltyOpt = Annotated[int | None, typer.Option(
    "--move-penalty", help="Cost of one migration in MiB, on top of the memory it moves "
    "(default 1024).", min=0, show_default=False)]
READ_SLACK_S = 30.0  # beyond the planner's time limit and the sampling


def _read_snapshot(path: Path) -> Any:
    from ahvlite.sched.model import Problem

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
    """Refuse a bad --solver before anything is read (the API checks it again)."""
    if solver not in SOLVERS:
        raise InvalidSpec("--solver", solver, ", ".join(SOLVERS))


def _long_get(path: str, timeout_s: float, **params: Any) -> Any:
    """A read that may take a while (sampling, planning): waits ``timeout_s``."""
    with api.session() as c:
        query = {k: v for k, v in params.items() if v is not None}
        return c.request("GET", path, params=query, timeout_s=timeout_s).json()


def _options(solver: str, time_limit_s: float, sample_s: float, cpu: float | None,
             storage: float | None, penalty: int | None) -> dict[str, Any]:
    return {"solver": solver, "time_limit_s": time_limit_s, "sample_s": sample_s,
            "cpu_threshold": cpu, "storage_threshold": storage, "move_penalty": penalty}


def _show_plan(plan: dict[str, Any]) -> None:
    hot = ", ".join(f"{h['host']} {h['resource']} {h['demand_pct']:g}% "
                    f"(> {h['threshold_pct']:g}%)" for h in plan["hotspots"]) or "none"
    for w in plan.get("warnings", []):
        console.print(f"[yellow]warning:[/] {w}", highlight=False)
    console.print(f"hotspots: {hot}", highlight=False)
    moves = plan["moves"]
    if not moves:
        console.print(f"no moves ({plan['status']}). {plan.get('note', '')}".strip(),
                      highlight=False)
    else:
        rows = [[i + 1, m["vm"], m["source"], m["target"], m["memory_mib"],
                 "temporary hop" if m.get("temporary") else ""] for i, m in enumerate(moves)]
        console.print(table("moves, in order", ["step", "vm", "from", "to", "memory MiB", ""],
                            rows))
        bound = "" if plan.get("bound_mib") is None else f", bound {plan['bound_mib']:g} MiB"
        console.print(f"cost {plan['cost_mib']} MiB ({plan['memory_moved_mib']} MiB moved + "
                      f"penalties){bound}; solver {plan['solver']}, {plan['status']}"
                      + (f"; {plan['note']}" if plan.get("note") else ""), highlight=False)
    if plan.get("remaining"):
        console.print("[yellow]still above threshold after the plan:[/] "
                      + ", ".join(f"{h['host']} {h['resource']}" for h in plan["remaining"]))
    rows = [[h, u["cpu_pct"], u["storage_pct"], u["memory_pct"]]
            for h, u in plan["predicted"].items()]
    console.print(table("predicted utilization", ["host", "cpu %", "storage cpu %",
                                                  "memory %"], rows))


@app.command()
def snapshot(sample_s: SampleOpt = 1.0) -> None:
    """Print the live cluster as ADS input (JSON), for `ads plan --snapshot FILE`."""
    problem = _long_get("/v1/ads/snapshot", 2 * sample_s + READ_SLACK_S, sample_s=sample_s)
    typer.echo(json.dumps(problem, indent=2))


@app.command()
def plan(snapshot_file: Annotated[Path | None, typer.Option(
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
            from dataclasses import replace

            from ahvlite.sched.plan import make_plan

            problem = _read_snapshot(snapshot_file)
            th = replace(problem.thresholds,
                         cpu_pct=problem.thresholds.cpu_pct if cpu_threshold is None
                         else cpu_threshold,
                         storage_pct=problem.thresholds.storage_pct
                         if storage_threshold is None else storage_threshold)
            problem = replace(problem, thresholds=th,
                              move_penalty_mib=problem.move_penalty_mib
                              if move_penalty is None else move_penalty)
            report("planning")
            result = make_plan(problem, solver=solver,  # type: ignore[arg-type]
                               time_limit_s=time_limit_s).to_dict()
        else:
            result = _long_get("/v1/ads/plan", 2 * sample_s + time_limit_s + READ_SLACK_S,
                               **_options(solver, time_limit_s, sample_s, cpu_threshold,
                                          storage_threshold, move_penalty))
    if json_out:
        emit_json(result)
        return
    _show_plan(result)


@app.command()
def run(solver: SolverOpt = "auto", time_limit_s: TimeLimitOpt = 5.0,
        sample_s: SampleOpt = 1.0, cpu_threshold: CpuThOpt = None,
        storage_threshold: StorageThOpt = None, move_penalty: PenaltyOpt = None,
        wait: api.WaitOpt = True, json_out: JsonOpt = False) -> None:
    """Plan on the live cluster and carry out its migrations in order (a task of the
    leader; HA guarantee mode admits the moves first; stops at the first failure, what
    moved stays moved)."""
    _check_solver(solver)
    record = api.run_task("ads.run", _options(solver, time_limit_s, sample_s, cpu_threshold,
                                              storage_threshold, move_penalty),
                          json_out=json_out, wait=wait, title="ADS: planning")
    if record is None:
        return
    if json_out:
        emit_json(record)
        return
    _show_plan(record["plan"])
    if record["plan"]["moves"]:
        console.print(f"[green]done:[/] {len(record['migrations'])} migration(s)")


@app.command()
def effectiveness(sample_s: SampleOpt = 1.0, json_out: JsonOpt = False) -> None:
    """Predicted (by the last ADS plan that moved VMs: the leader's, or the last
    `ads run`, whichever is newer) vs observed CPU utilization of each host now."""
    with progress(not json_out, "reading the cluster"):
        eff = _long_get("/v1/ads/effectiveness", 2 * sample_s + READ_SLACK_S,
                        sample_s=sample_s)
    if json_out:
        emit_json(eff)
        return
    console.print(table("predicted vs observed CPU %", ["host", "predicted", "observed",
                                                        "error"],
                        [[h["host"], h["predicted_cpu_pct"], h["observed_cpu_pct"],
                          h["error_pct"]] for h in eff["hosts"]]))
    console.print(f"mean |error| {eff['mean_abs_error_pct']} points, max "
                  f"{eff['max_abs_error_pct']}; relieved: "
                  f"{', '.join(eff['relieved']) or '-'}; still hot: "
                  f"{', '.join(eff['still_hot']) or '-'}"
                  + (f"; not observed now: {', '.join(eff['unknown'])}" if eff["unknown"]
                     else ""), highlight=False)


# -- rules --------------------------------------------------------------------------

def _split(value: str | None, field: str) -> list[str]:
    items = [x.strip() for x in (value or "").split(",") if x.strip()]
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
    wait: api.WaitOpt = True,
    json_out: JsonOpt = False,
) -> None:
    """Add a rule: `--kind must|should --vms A,B --hosts H1,H2`, or `--kind anti --vms A,B`."""
    vm_names = _split(vms, "--vms")
    host_names: list[str] = []
    if kind == "anti":
        if hosts:
            raise InvalidSpec("--hosts", hosts, "nothing for --kind anti (VM-VM rule)")
        if len(vm_names) < 2:
            raise InvalidSpec("--vms", vms, "at least two VM names for anti-affinity")
    elif kind in ("must", "should"):
        host_names = _split(hosts, "--hosts")
    else:
        raise InvalidSpec("--kind", kind, "must, should or anti")
    rules = api.run_task("ads.rule.add", {"name": name, "kind": kind, "vms": vm_names,
                                          "hosts": host_names},
                         json_out=json_out, wait=wait, title=f"adding ADS rule {name}")
    if rules is None:
        return
    if json_out:
        emit_json(rules)
        return
    count = len(rules["host_affinity"]) + len(rules["anti_affinity"])
    console.print(f"rule {name} added ({count} in all)", highlight=False)


@rules_app.command("list")
def rules_list(json_out: JsonOpt = False) -> None:
    """The ADS rules of the cluster."""
    rules = api.get("/v1/ads/rules")
    if json_out:
        emit_json(rules)
        return
    stale = rules.get("stale", {})
    rows = [[r["name"], r["kind"], ", ".join(r["vms"]), ", ".join(r["hosts"]),
             f"hosts gone: {', '.join(stale[r['name']])}" if r["name"] in stale else ""]
            for r in rules["host_affinity"]]
    rows += [[r["name"], "anti", ", ".join(r["vms"]), "", ""] for r in rules["anti_affinity"]]
    console.print(table("ADS rules", ["name", "kind", "vms", "hosts", "stale"], rows))


@rules_app.command("remove")
def rules_remove(name: Annotated[str, typer.Argument(help="Rule name.")],
                 wait: api.WaitOpt = True, json_out: JsonOpt = False) -> None:
    """Remove a rule by name."""
    rules = api.run_task("ads.rule.remove", {"name": name}, json_out=json_out, wait=wait,
                         title=f"removing ADS rule {name}")
    if rules is None:
        return
    if json_out:
        emit_json(rules)
        return
    count = len(rules["host_affinity"]) + len(rules["anti_affinity"])
    console.print(f"rule {name} removed ({count} left)", highlight=False)
