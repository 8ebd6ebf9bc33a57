"""remote/ansible.py with real ansible-runner + ansible-playbook on a local playbook:
progress events, changes per task, check mode, failures naming task/host/message; and
the CLI's refusals of bad input."""

from __future__ import annotations

import gc
import json
import os
import sys
import warnings
from pathlib import Path

import pytest

from ahvlite.errors import NotFound, OperationFailed
from ahvlite.remote import ansible
from tests.clirun import ahvlite

PLAY = """\
- name: Tiny play
  hosts: ahvlite_hosts
  gather_facts: false
  tasks:
    - name: Write the marker
      ansible.builtin.copy:
        dest: "{{ out }}/marker.txt"
        content: "hello\\n"
        mode: "0644"
    - name: Look around
      ansible.builtin.command: "true"
      changed_when: false
    - name: Break on request
      ansible.builtin.fail:
        msg: "boom on {{ inventory_hostname }}"
      when: break_it | default(false) | bool
"""


@pytest.fixture
def books(tmp_path, monkeypatch):
    d = tmp_path / "books"
    d.mkdir()
    (d / "host.yml").write_text(PLAY)
    monkeypatch.setenv(ansible.PLAYBOOKS_ENV, str(d))
    out = tmp_path / "out"
    out.mkdir()
    inv = {"all": {"children": {"ahvlite_hosts": {
        "hosts": {"t1": {"ansible_connection": "local",
                         "ansible_python_interpreter": sys.executable}},
        "vars": {"out": str(out)}}}}}
    return inv, out


def test_changes_then_idempotent_with_progress(books):
    inv, out = books
    lines: list[str] = []
    first = ansible.run_playbook("host.yml", inv, progress=lines.append)
    assert (out / "marker.txt").read_text() == "hello\n"
    assert first.status == "successful" and first.changed == 1
    assert [(c.host, c.task) for c in first.changes] == [("t1", "Write the marker")]
    assert any("Write the marker" in line for line in lines)
    assert "t1: changed: Write the marker" in lines
    second = ansible.run_playbook("host.yml", inv)
    assert second.changed == 0 and second.changes == []
    assert second.stats["t1"]["ok"] == 2


SECRET_PLAY = """\
- name: Secret play
  hosts: ahvlite_hosts
  gather_facts: false
  tasks:
    - name: Every process's command line while the play runs
      ansible.builtin.command: ps -eo args
      register: procs
      changed_when: false
    - name: The variable arrived, and no command line carries it
      ansible.builtin.assert:
        that:
          - the_secret | length == 24
          - the_secret not in procs.stdout
          - ansible_playbook_python in procs.stdout or 'ansible-playbook' in procs.stdout
"""


def test_extra_vars_reach_the_play_but_no_command_line(books):
    inv, _ = books
    (Path(os.environ[ansible.PLAYBOOKS_ENV]) / "secret.yml").write_text(SECRET_PLAY)
    result = ansible.run_playbook("secret.yml", inv, extravars={"the_secret": "k" * 24})
    assert result.status == "successful" and result.failures == []


def test_check_mode_reports_and_changes_nothing(books):
    inv, out = books
    result = ansible.run_playbook("host.yml", inv, check=True)
    assert result.check and result.changed == 1
    assert [c.task for c in result.changes] == ["Write the marker"]
    assert not (out / "marker.txt").exists()


def test_failure_names_task_host_and_message(books):
    inv, _ = books
    with pytest.raises(OperationFailed) as exc:
        ansible.run_playbook("host.yml", inv, extravars={"break_it": True})
    assert "host t1" in exc.value.message
    assert "task 'Break on request'" in exc.value.message
    assert "boom on t1" in exc.value.message


def test_tags_select_tasks(books):
    inv, out = books
    # No task carries this tag: nothing runs, nothing changes.
    result = ansible.run_playbook("host.yml", inv, tags=["network"])
    assert result.changed == 0 and not (out / "marker.txt").exists()


def test_missing_playbook_is_not_found(books):
    inv, _ = books
    with pytest.raises(NotFound, match=r"nosuch\.yml"):
        ansible.run_playbook("nosuch.yml", inv)


def test_refused_before_any_task_shows_ansibles_output_and_leaks_no_file(books):
    inv, _ = books
    (Path(os.environ[ansible.PLAYBOOKS_ENV]) / "host.yml").write_text(
        "- name: Broken\n  hosts: ahvlite_hosts\n  tasks:\n    - name: Odd\n"
        "      no_such_module_here: {}\n")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(OperationFailed) as exc:
            ansible.run_playbook("host.yml", inv)
        gc.collect()
    # The tail of ansible's own output says why it refused ...
    assert "before any task failed" in exc.value.message
    assert "no_such_module_here" in exc.value.message
    # ... and reading it left no file handle open.
    # (Files only: a collection here may also finalize another test's asyncio transport.)
    assert [str(w.message) for w in seen if issubclass(w.category, ResourceWarning)
            and str(w.message).startswith("unclosed file")] == []


def test_the_venv_ansible_playbook_is_used():
    assert ansible.ansible_playbook() == Path(sys.prefix) / "bin" / "ansible-playbook"


def test_cli_refuses_bad_tags_and_hosts_without_ssh(tmp_path):
    cf = tmp_path / "cluster.yaml"
    cf.write_text("name: c\nhosts:\n- name: h1\n  uri: qemu+tls://10.0.0.1/system\n")
    bad_tag = ahvlite("host", "provision", "-f", str(cf), "--tags", "network,bogus")
    assert bad_tag.returncode == 2
    assert "--tags='bogus'" in bad_tag.stderr and "network" in bad_tag.stderr
    no_ssh = ahvlite("host", "provision", "h1", "-f", str(cf), "--json")
    assert no_ssh.returncode == 2
    payload = json.loads(no_ssh.stdout)
    assert payload["error"] == "invalid" and "hosts[h1].ssh" in payload["message"]
    assert not (tmp_path / "pki").exists()  # refused before the ZooKeeper secret is made
    unknown = ahvlite("host", "provision", "h7", "-f", str(cf))
    assert unknown.returncode == 3 and "'h7'" in unknown.stderr
    for r in (bad_tag, no_ssh, unknown):
        assert "Traceback" not in r.stdout + r.stderr


PKI_PLAY = """\
- name: Certificates
  hosts: ahvlite_hosts
  gather_facts: false
  tasks:
    - name: Issue or keep
      ahvlite_host_pki:
        ca_dir: "{{ out }}/ca"
        dest_dir: "{{ out }}/hosts/t1"
        common_name: t1
        ips: ["{{ ip }}"]
        create_ca: true
        ca_name: testcluster
        client_dir: "{{ out }}/client"
        ahvlite_dir: "{{ out }}/hosts/t1-ahvlite"
        peers: [t1, t2]
      register: pki
    - name: Keep what it said
      ansible.builtin.copy:
        dest: "{{ out }}/allowed.json"
        content: "{{ pki.allowed_dns | to_json }}"
        mode: "0644"
      when: not ansible_check_mode
"""


def _san_ips(cert_path: Path) -> list[str]:
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return [str(a) for a in san.value.get_values_for_type(x509.IPAddress)]


def test_pki_module_issues_once_keeps_valid_certs_and_plans_reissue(tmp_path, monkeypatch):
    d = tmp_path / "books"
    d.mkdir()
    (d / "host.yml").write_text(PKI_PLAY)
    (d / "library").symlink_to(Path(__file__).resolve().parents[2] / "playbooks" / "library")
    monkeypatch.setenv(ansible.PLAYBOOKS_ENV, str(d))
    out = tmp_path / "out"
    inv = {"all": {"children": {"ahvlite_hosts": {
        "hosts": {"t1": {"ansible_connection": "local",
                         "ansible_python_interpreter": sys.executable}},
        "vars": {"out": str(out), "ip": "10.1.2.3"}}}}}
    first = ansible.run_playbook("host.yml", inv)
    assert first.changed == 2
    server = out / "hosts/t1/libvirt/servercert.pem"
    assert _san_ips(server) == ["10.1.2.3"]
    assert (out / "hosts/t1/libvirt/private/serverkey.pem").stat().st_mode & 0o077 == 0
    assert (out / "client/clientcert.pem").exists() and (out / "ca/cakey.pem").exists()
    # QEMU's migration TLS, and ahvlite's own (API, store client, ZooKeeper member).
    for name in ("ca-cert.pem", "server-cert.pem", "server-key.pem", "client-cert.pem",
                 "client-key.pem"):
        assert (out / "hosts/t1/qemu" / name).exists(), name
    assert _san_ips(out / "hosts/t1/qemu/server-cert.pem") == ["10.1.2.3"]
    ahv = out / "hosts/t1-ahvlite"
    assert _san_ips(ahv / "api.pem") == ["10.1.2.3"]
    assert _san_ips(ahv / "zk-server/server.pem") == ["10.1.2.3"]
    assert (ahv / "zk/client-key.pem").stat().st_mode & 0o077 == 0
    # libvirtd's list: each peer's client certificate subject, then the admin's (the
    # controller machine's, which is an admin's certificate).
    org = "O=ahvlite lab"
    assert json.loads((out / "allowed.json").read_text()) == [
        f"{org},CN=t1", f"{org},CN=t2",
        f"{org},OU=ahvlite-admins,CN=ahvlite-testcluster-controller"]
    from ahvlite.pki import libvirt_dn
    assert libvirt_dn((out / "hosts/t1/libvirt/clientcert.pem").read_bytes()) == f"{org},CN=t1"
    issued = server.read_bytes()
    second = ansible.run_playbook("host.yml", inv)
    assert second.changed == 0 and server.read_bytes() == issued
    # A new management address needs a new certificate: check mode says so, keeps it.
    inv["all"]["children"]["ahvlite_hosts"]["vars"]["ip"] = "10.1.2.4"
    planned = ansible.run_playbook("host.yml", inv, check=True)
    assert planned.changed == 1 and "10.1.2.4" in (planned.changes[0].detail or "")
    assert server.read_bytes() == issued
