"""ADS, the dynamic scheduler: pure planning (no I/O) over a :class:`model.Problem`.

model (input), demand (smoothing), hotspot, heuristic and cpsat (solvers), plan (ordered,
feasible moves), placement (power-on), effectiveness (predicted vs observed). The live
cluster becomes a Problem in ``ahvlite.cluster.adsinput``.
"""
