"""Deploy 20 VMs from a template over 3 lab hosts vs a sequential virsh loop (the peer).

Brings up its own 3-host lab (name ``bvm``), measures, and takes it down again.

* ahvlite: ``ahvlite template deploy tp --count 20`` through the lab's API (the
  leader's task: placement, a backing-file clone and a NoCloud seed ISO per VM, define,
  start; in parallel over the hosts), timed from the CLI's start to its end;
* peer: for the same 20 domain XMLs, ``virsh -c URI define FILE`` then ``virsh -c URI
  start NAME`` one after another, the way a shell script would. The peer's volumes
  already exist (left from the ahvlite run), so it does strictly less work.

The ratio peer/ahvlite is the speed-up of the VM layer's deploy path.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

from ahvlite.cluster import vms
from ahvlite.cluster.legacy import open_cluster_file as load_cluster
from ahvlite.lab import lab
from ahvlite.spec.lab import LabSpec
from bench.labapi import ahv, ok

COUNT = 20
NAME = "bvm"


def main() -> None:
    status = lab.up(LabSpec(name=NAME, hosts=3, subnet="10.213.252.0/26"))
    try:
        cluster_file = Path(status["cluster_file"])
        cluster = load_cluster(cluster_file)  # the peer's harness: libvirt directly
        ok(ahv(NAME, "image", "import", status["guest"]["disk"], "guest", "--json"))
        ok(ahv(NAME, "vm", "create", "src", "--memory-mib", "128", "--disk", "guest",
               "--nic", "br0", "--json"))
        ok(ahv(NAME, "template", "create", "tp", "--from-vm", "src", "--json"))

        t0 = time.perf_counter()
        result = ok(ahv(NAME, "template", "deploy", "tp", "--count", str(COUNT), "--prefix",
                        "b", "--json"))
        ours = time.perf_counter() - t0
        assert not result["failed"], result["failed"]

        # Keep each VM's XML and volumes; remove only the definitions.
        saved: list[tuple[str, str, str]] = []  # (uri, name, xml)
        with vms.connect(cluster) as hosts:
            for v in result["vms"]:
                host, dom = hosts.find(v["name"])
                saved.append((cluster.host(host).uri, v["name"],
                              dom.xml(inactive=True)))
                dom.destroy()
                dom.undefine()

        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            for uri, name, xml in saved:
                path = Path(tmp) / f"{name}.xml"
                path.write_text(xml)
                subprocess.run(["virsh", "-q", "-c", uri, "define", str(path)], check=True,
                               capture_output=True)
                subprocess.run(["virsh", "-q", "-c", uri, "start", name], check=True,
                               capture_output=True)
            peer = time.perf_counter() - t0

        for _uri, name, _xml in saved:
            ok(ahv(NAME, "vm", "delete", name, "--force", "--json"))
        per_host = {h.name: sum(v["host"] == h.name for v in result["vms"])
                    for h in cluster.hosts}
        print(f"deploy {COUNT} VMs (128 MiB, TCG) over 3 lab hosts {per_host}:")
        print(f"  ahvlite template deploy:              {ours:8.2f} s")
        print(f"  sequential virsh define + start:      {peer:8.2f} s")
        print(f"  ratio peer/ahvlite: {peer / ours:.2f}")
    finally:
        lab.down(NAME)


if __name__ == "__main__":
    main()
