"""Run every benchmark: ``python -m bench`` (``make bench``)."""

from __future__ import annotations

from bench import controller_failover, facts_parallel, lab_wiring, ovs_ports, vm_deploy

if __name__ == "__main__":
    lab_wiring.main()
    ovs_ports.main()
    facts_parallel.main()
    controller_failover.main()
    vm_deploy.main()
