"""VM high availability: detect a lost host, fence safely, restart its VMs elsewhere,
and (in guarantee mode) keep enough memory reserved that every protected VM fits.

Pure parts (no I/O): ``settings`` (mode, RF, timeouts), ``detection`` (two signals and
a countdown), ``mthm`` (Martello-Toth multiple-knapsack heuristic), ``reservation``
(host- and segment-based reservations, admission control), ``restart`` (order and
placement of restarts). Live parts: ``service`` (leader only) and ``agent`` (every host:
self-fence when cut off from the coordination store).
"""
