"""One domain's power operations through Guest, against libvirt's own test driver."""

from __future__ import annotations

import uuid

import pytest

from ahvlite.errors import AhvliteError, Conflict, NotFound
from ahvlite.spec.smallguest import SimpleGuest
from ahvlite.virt import designer, guest
from ahvlite.virt.conn import connection


def small(name: str) -> SimpleGuest:
    return SimpleGuest(name=name, uuid=str(uuid.uuid4()), domain_type="test",
                       memory_mib=64, machine="pc")


@pytest.fixture
def conn():
    with connection("test:///default") as c:
        yield c


def test_a_guest_is_defined_from_its_typed_config_and_read_back_typed(conn):
    g = guest.define(conn, designer.design_small(small("gp-typed")))
    try:
        d = g.config(inactive=True)
        assert (d.name, d.memory_mib, g.name) == ("gp-typed", 64, "gp-typed")
        assert g.state() == "shutoff" and not g.is_active()
        assert guest.find(conn, "gp-typed") is not None
        assert guest.find_by_uuid(conn, g.uuid) is not None
    finally:
        g.undefine()
    assert guest.find(conn, "gp-typed") is None
    with pytest.raises(NotFound):
        guest.lookup(conn, "gp-typed")


def test_start_and_power_off_are_idempotent(conn):
    g = guest.define(conn, designer.design_small(small("gp-power")))
    try:
        g.start()
        g.start()  # already running: nothing to do
        assert g.state() == "running"
        assert g.destroy() is True
        assert g.destroy() is False  # already off
        assert g.state() == "shutoff"
    finally:
        guest.destroy_and_undefine(conn, "gp-power")
    assert guest.destroy_and_undefine(conn, "gp-power") is False


def test_shutdown_reboot_and_power_off_by_name(conn):
    g = guest.define(conn, designer.design_small(small("gp-acpi")))
    try:
        with pytest.raises(Conflict, match="not running"):
            g.reboot()
        g.start()
        g.reboot()
        assert g.state() == "running"
        g.shut_down(timeout_s=5, force=False)
        assert g.state() == "shutoff"
        g.start()
        assert guest.power_off(conn, "gp-acpi") is True
        assert guest.power_off(conn, "gp-acpi") is False
        assert guest.power_off(conn, "gp-nothing") is False
    finally:
        guest.destroy_and_undefine(conn, "gp-acpi")


def test_owner_power_intent_is_kept_in_the_metadata(conn):
    g = guest.define(conn, designer.design_small(small("gp-meta")))
    try:
        g.mark_power(False)
        meta = g.config(inactive=True).meta
        assert meta is not None and meta.power == "off"
        g.mark_power(True)
        meta = g.config(inactive=True).meta
        assert meta is not None and meta.power == "on"
    finally:
        g.undefine()


def test_a_stale_definition_goes_only_when_shut_off_and_the_same_vm(conn):
    g = guest.define(conn, designer.design_small(small("gp-stale")))
    try:
        g.start()
        assert guest.remove_stale(conn, "gp-stale", g.uuid) is False  # running
        g.destroy()
        assert guest.remove_stale(conn, "gp-stale", str(uuid.uuid4())) is False  # other VM
        assert guest.remove_stale(conn, "gp-stale", g.uuid) is True
        assert guest.find(conn, "gp-stale") is None
    finally:
        guest.destroy_and_undefine(conn, "gp-stale")


def test_define_and_start_leaves_no_new_definition_when_the_start_fails(conn, monkeypatch):
    def refuse(self):
        raise AhvliteError("start refused for the test")

    monkeypatch.setattr(guest.Guest, "start", refuse)
    xml = designer.simple_domain_xml(small("gp-undo"))
    with pytest.raises(AhvliteError, match="refused"):
        guest.define_and_start(conn, xml, "gp-undo")
    assert guest.find(conn, "gp-undo") is None
    monkeypatch.undo()
    guest.define_and_start(conn, xml, "gp-undo")
    try:
        assert guest.lookup(conn, "gp-undo").state() == "running"
    finally:
        guest.destroy_and_undefine(conn, "gp-undo")
