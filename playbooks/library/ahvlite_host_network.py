#!/usr/bin/python
"""Ansible module: a host's OVS bridges, uplink bond and virbr0 from the cluster file.

Runs on the controller machine (``delegate_to: localhost``) with the Python that runs
ansible, and calls ahvlite's own network code (``ahvlite.cluster.network.apply``, the
same as ``ahvlite net apply --host``): plan against the host's OVSDB and kernel, apply
in one transaction. Check mode plans only. No second implementation of the network.
"""

from __future__ import annotations

DOCUMENTATION = r"""
module: ahvlite_host_network
short_description: Apply the cluster file's network spec to one host (ahvlite net apply)
options:
  cluster_file:
    description: Path of the ahvlite cluster file on the controller machine.
    type: path
    required: true
  host:
    description: Host name in the cluster file.
    type: str
    required: true
"""

from pathlib import Path  # noqa: E402 - ansible wants DOCUMENTATION first

from ansible.module_utils.basic import AnsibleModule  # noqa: E402 - ansible wants DOCUMENTATION first


def main() -> None:
    module = AnsibleModule(
        argument_spec={"cluster_file": {"type": "path", "required": True},
                       "host": {"type": "str", "required": True}},
        supports_check_mode=True)
    try:
        from ahvlite.cluster import network
        from ahvlite.errors import AhvliteError
        from ahvlite.spec.cluster import load_cluster
    except ImportError as exc:
        module.fail_json(msg=f"ahvlite is not importable by {module._name}'s Python "
                             f"({exc}); run the playbook with ahvlite's ansible-playbook")
        return
    try:
        spec = load_cluster(Path(module.params["cluster_file"]))
        (result,) = network.apply(spec, [module.params["host"]], dry_run=module.check_mode)
    except AhvliteError as exc:
        module.fail_json(msg=exc.message + (f" ({exc.hint})" if exc.hint else ""))
        return
    steps = [s.describe() for s in result.steps]
    module.exit_json(changed=bool(steps), steps=steps, dry_run=result.dry_run,
                     ovsdb_commands=result.ovsdb_commands)


if __name__ == "__main__":
    main()
