"""The libvirt URI policy (spec/uri.py): the forms a cluster may name, everything else
refused with the field, the value and the allowed forms, wherever a URI enters."""

from __future__ import annotations

import pytest

from ahvlite.errors import InvalidSpec
from ahvlite.spec.cluster import HostSpec
from ahvlite.spec.errors import build
from ahvlite.spec.uri import check_uri
from ahvlite.virt.conn import open_connection, open_local_socket
from tests.clirun import ahvlite


@pytest.mark.parametrize(("uri", "host", "port"), [
    ("qemu+tls://10.0.0.2/system", "10.0.0.2", 16514),
    ("qemu+tls://h1.example:16600/system", "h1.example", 16600),
    ("qemu+tls://10.0.0.2/system?pkipath=/var/lib/ahvlite/labs/x/pki", "10.0.0.2", 16514),
    ("qemu+tls://[fd00::2]/system", "fd00::2", 16514),
    ("qemu+ssh://root@10.0.0.2/system", "10.0.0.2", 22),
    ("qemu+ssh://h2:2222/system", "h2", 2222),
])
def test_remote_forms_accepted(uri, host, port):
    info = check_uri(uri)
    assert (info.host, info.port, info.remote) == (host, port, True)


@pytest.mark.parametrize("uri", ["qemu:///system", "qemu:///session", "test:///default"])
def test_local_forms_accepted(uri):
    assert check_uri(uri).remote is False


@pytest.mark.parametrize("uri", [
    # programs and files chosen by query keys
    "qemu+ssh://127.0.0.1:1/system?command=/tmp/marker-writer",
    "qemu+ssh://root@h1/system?no_verify=1",
    "qemu+ssh://h1/system?netcat=/tmp/nc",
    "qemu+ssh://h1/system?keyfile=/root/.ssh/other",
    "qemu+ssh://h1/system?socket=/run/x",
    "qemu+ssh://h1/system?known_hosts_verify=ignore",
    "qemu+ssh://h1/system?",
    "qemu+tls://h1/system?no_verify=1",
    "qemu+tls://h1/system?pkipath=/etc/pki&no_verify=1",
    "qemu+tls://h1/system?pkipath=/etc/pki;command=/bin/sh",  # libvirt splits at ';'
    "qemu+tls://h1/system?pkipath=/etc/%70ki",  # libvirt unescapes %XX
    "qemu+tls://h1/system?pkipath=relative/dir",
    "qemu+tls://h1/system?pkipath=/etc/../root",
    "qemu+tls://h1/system?pkipath=/etc/pki/",
    "qemu+tls://h1/system?pkipath=",
    "qemu+tls://user@h1/system",
    # other transports and junk
    "qemu+tcp://10.0.0.2/system", "qemu+unix:///system?socket=/run/x", "qemu+ext://h/system",
    "qemu+libssh2://h/system", "xen://h1/", "qemu+tls:///system", "http://h1/", "h1", "",
    "qemu+tls://h1:99999/system", "qemu+tls://h1/session", "qemu+tls://h1/system#x",
    "test:///etc/shadow", "test://default", "qemu:///system?socket=/x", "qemu://h1/system",
    "qemu+ssh://a@b@h/system", "qemu+tls://h1 /system", "qemu+tls://h1/system\n",
])
def test_everything_else_is_refused_naming_field_value_and_forms(uri):
    with pytest.raises(InvalidSpec) as err:
        check_uri(uri, "hosts.uri")
    assert err.value.field == "hosts.uri" and err.value.value == uri
    assert "qemu+tls://HOST[:PORT]/system" in err.value.message


def test_plain_tcp_says_why():
    with pytest.raises(InvalidSpec) as err:
        check_uri("qemu+tcp://10.0.0.2/system")
    assert "qemu+tls" in (err.value.hint or "")


def test_host_spec_refuses_on_load():
    with pytest.raises(InvalidSpec) as err:
        build(HostSpec, name="h1", uri="qemu+tcp://10.0.0.2/system")
    assert err.value.field == "host.uri"
    assert build(HostSpec, name="h1", uri="qemu:///system").uri == "qemu:///system"


def test_open_connection_checks_too_and_the_socket_hatch_is_separate(tmp_path):
    marker = tmp_path / "ran"
    prog = tmp_path / "marker-writer"
    prog.write_text(f"#!/bin/sh\ntouch {marker}\n")
    prog.chmod(0o755)
    with pytest.raises(InvalidSpec):
        open_connection(f"qemu+ssh://127.0.0.1:1/system?command={prog}", timeout_s=1)
    with pytest.raises(InvalidSpec):
        open_connection(f"qemu+unix:///system?socket={tmp_path}/sock")
    with pytest.raises(InvalidSpec):
        open_local_socket(tmp_path / "sock;x")  # type: ignore[arg-type]
    assert not marker.exists()


@pytest.mark.parametrize("uri", ["qemu+tcp://127.0.0.1/system", "junk",
                                 "qemu+ssh://127.0.0.1/system?command=/bin/true"])
def test_cluster_apply_and_host_add_refuse_with_one_line_and_exit_2(tmp_path, uri):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"name: c\nhosts:\n  - name: h1\n    uri: '{uri}'\n")
    # Both refused before any API is asked (none is configured here); that nothing
    # reaches the store is shown against a real controller in
    # tests/functional/test_cli_hosts.py and test_cli_cluster_apply.py.
    no_api = {"AHVLITE_API": "", "HOME": str(tmp_path)}
    r = ahvlite("cluster", "apply", "-f", str(bad), extra_env=no_api, timeout_s=60)
    assert r.returncode == 2, r.stderr
    assert "host.uri" in r.stderr and "Traceback" not in r.stderr + r.stdout
    r = ahvlite("cluster", "apply", "-f", str(bad), "--dry-run", extra_env=no_api,
                timeout_s=60)
    assert r.returncode == 2 and "host.uri" in r.stderr, r.stderr
    r = ahvlite("host", "add", "h9", "--uri", uri, extra_env=no_api, timeout_s=60)
    assert r.returncode == 2, r.stderr
    assert "--uri" in r.stderr and "Traceback" not in r.stderr + r.stdout


def test_insecure_tcp_option_is_gone():
    r = ahvlite("host", "add", "h9", "--uri", "qemu+tcp://127.0.0.1/system", "--insecure-tcp",
                timeout_s=60)
    assert r.returncode == 2 and "No such option" in r.stderr
