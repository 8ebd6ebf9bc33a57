"""VM high availability: fence a lost host provably, restart its VMs elsewhere, and (in
guarantee mode) keep enough memory reserved that every protected VM fits.

Pure parts (no I/O): ``settings`` (mode, RF, the fencing timings), ``lease`` (the
agent's lease and the leader's fence clock), ``records`` (VM records, restart intents,
agent heartbeats as stored), ``mthm`` (Martello-Toth multiple-knapsack heuristic),
``reservation`` (host- and segment-based reservations, admission control); the order
and placement of restarts is ``ahvlite.sched.restart``. Live parts: ``service`` (leader
only), ``hostops`` (its libvirt hands), ``agent`` (a process on every host: keeps the
host's VMs only while it holds its lease, feeds the host's ``watchdog``) and
``localvms``. docs/ha.md has the safety argument.
"""
