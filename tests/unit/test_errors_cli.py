"""User mistakes print one clear message and a distinct exit code, never a traceback."""

from __future__ import annotations

import json

import pytest

from tests.clirun import ahvlite


@pytest.mark.parametrize(("args", "code", "needle"), [
    (["lab", "up", "--hosts", "0"], 2, "hosts=0"),
    (["lab", "up", "--name", "Bad_Name"], 2, "name='Bad_Name'"),
    (["lab", "up", "--subnet", "10.0.0.0/30"], 2, "/29 or shorter"),
    (["lab", "up", "--hosts", "3", "--subnet", "10.0.0.0/29"], 2, "needs 7 addresses"),
    (["lab", "status", "--name", "nosuch"], 3, "no lab named 'nosuch'"),
])
def test_bad_input_exit_codes_and_messages(tmp_path, args, code, needle):
    result = ahvlite(*args, extra_env={"AHVLITE_LAB_DIR": str(tmp_path)}, timeout_s=60)
    assert result.returncode == code, result.stderr
    assert needle in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_json_errors_are_machine_readable(tmp_path):
    result = ahvlite("lab", "status", "--name", "nosuch", "--json",
                     extra_env={"AHVLITE_LAB_DIR": str(tmp_path)}, timeout_s=60)
    assert result.returncode == 3
    payload = json.loads(result.stdout)
    assert payload["error"] == "not_found"
    assert payload["hint"]


def test_bad_input_creates_nothing(tmp_path):
    ahvlite("lab", "up", "--hosts", "3", "--subnet", "10.0.0.0/29",
            extra_env={"AHVLITE_LAB_DIR": str(tmp_path)}, timeout_s=60)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("make", "needle"), [
    (lambda p: p.write_bytes(b"\x7fELF\x02\x01\x01\x00\xff\xfe"), "UTF-8 text"),
    (lambda p: p.mkdir(), "a file, not a directory"),
    (lambda p: p.write_text("name: c\nhosts: " + "[" * 5000), "YAML"),
    (lambda p: p.write_bytes(b"name: c\x00\n"), "YAML that parses"),
])
def test_a_cluster_file_that_cannot_be_read_gives_one_clear_error(tmp_path, make, needle):
    path = tmp_path / "cluster.yaml"
    make(path)
    # Refused before any API is asked: no endpoint is configured here at all.
    result = ahvlite("cluster", "apply", "-f", str(path),
                     extra_env={"COLUMNS": "300", "AHVLITE_API": "", "HOME": str(tmp_path)},
                     timeout_s=60)
    assert result.returncode == 2, result.stderr
    assert "cluster file=" in result.stderr and needle in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
