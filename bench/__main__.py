"""Run every benchmark: ``python -m bench`` (``make bench``)."""

from __future__ import annotations

from bench import (
    ads,
    controller_failover,
    dhcp,
    facts_parallel,
    ha,
    ipam,
    lab_wiring,
    migration,
    ovs_ports,
    storage_iscsi,
    vm_create,
    vm_deploy,
)

if __name__ == "__main__":
    lab_wiring.main()
    ovs_ports.main()
    facts_parallel.main()
    controller_failover.main()
    vm_deploy.main()
    vm_create.main()
    ads.main()
    migration.main()
    ha.main()
    storage_iscsi.main()
    ipam.main()
    dhcp.main()
