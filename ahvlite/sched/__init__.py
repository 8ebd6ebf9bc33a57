"""Placement and scheduling: pure planners (no I/O, no waiting) over plain data.

``place`` is the one entry point for "which host should this VM go to" (``vm create``,
template deploys, live migration, HA restarts); ``capacity`` (a host's memory, placement
by memory), ``poweron`` (ADS power-on ranking under the rules), ``restart`` (HA restart
order and targets). ADS, the dynamic scheduler: ``model`` (input), ``demand``
(smoothing), ``hotspot``, ``heuristic`` and ``cpsat`` (solvers), ``plan`` (ordered,
feasible moves), ``effectiveness`` (predicted vs observed), ``snapshot`` (stats records
-> Problem), ``stats`` (counters -> rates, the history ADS reads). The live cluster is
read in ``ahvlite.cluster`` (``adsinput``, ``adsrules``, ``vms.capacities``) and in the
controller, and handed down.
"""
