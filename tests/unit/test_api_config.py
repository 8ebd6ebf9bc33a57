"""The API client's config: a file, the environment on top, bad values named."""

from __future__ import annotations

import pytest

from ahvlite.controller.api.config import load_client_config
from ahvlite.errors import InvalidSpec, NotFound


@pytest.fixture
def files(tmp_path):
    d = tmp_path / "cfg"
    d.mkdir()
    for name in ("ca.pem", "me.pem", "me-key.pem", "token", "other-ca.pem"):
        (d / name).write_text("x\n")
    (d / "token").write_text("  s3cret-token-from-file-0123456789\n")
    return d


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_file_in_home_with_paths_relative_to_the_file(tmp_path, files):
    home = tmp_path / "home"
    write(home / ".config/ahvlite/client.yaml",
          f"endpoints: [https://10.0.0.1:9440, https://ctl2:9440/]\nca: {files}/ca.pem\n"
          f"cert: {files}/me.pem\nkey: {files}/me-key.pem\n")
    cfg = load_client_config({}, home=home)
    assert cfg.endpoints == ["https://10.0.0.1:9440", "https://ctl2:9440"]
    assert cfg.cert == files / "me.pem" and cfg.bearer() is None

    rel = write(files / "client.yaml", "endpoints: [https://h:1]\nca: ca.pem\ntoken_file: token\n")
    cfg = load_client_config({"AHVLITE_CONFIG": str(rel)}, home=home)
    assert cfg.ca == files / "ca.pem"
    assert cfg.bearer() == "s3cret-token-from-file-0123456789"


def test_environment_overrides_each_field(tmp_path, files):
    path = write(files / "client.yaml",
                 "endpoints: [https://a:9440]\nca: ca.pem\ntoken_file: token\n")
    env = {"AHVLITE_CONFIG": str(path), "AHVLITE_API": "https://b:9440, https://c:9440",
           "AHVLITE_CA": str(files / "other-ca.pem")}
    cfg = load_client_config(env)
    assert cfg.endpoints == ["https://b:9440", "https://c:9440"]
    assert cfg.ca == files / "other-ca.pem"
    assert cfg.bearer() == "s3cret-token-from-file-0123456789"

    cfg = load_client_config({**env, "AHVLITE_TOKEN": "from-env"})
    assert cfg.token_file is None and cfg.bearer() == "from-env"

    # A certificate from the environment is the credential: the file's token is dropped.
    cfg = load_client_config({**env, "AHVLITE_CERT": str(files / "me.pem"),
                              "AHVLITE_KEY": str(files / "me-key.pem")})
    assert cfg.bearer() is None and cfg.key == files / "me-key.pem"


def test_environment_alone_is_enough(files, tmp_path):
    cfg = load_client_config({"AHVLITE_API": "https://h:9440", "AHVLITE_CA": str(files / "ca.pem"),
                              "AHVLITE_TOKEN": "t"}, home=tmp_path)
    assert cfg.endpoints == ["https://h:9440"] and cfg.bearer() == "t"


@pytest.mark.parametrize(("text", "field", "needle"), [
    ("endpoints: [http://h:9440]\nca: ca.pem\ntoken: t\n", "endpoints.0", "https://"),
    ("endpoints: [https://h:9440/v1]\nca: ca.pem\ntoken: t\n", "endpoints.0", "no path"),
    ("endpoints: [https://h:99999]\nca: ca.pem\ntoken: t\n", "endpoints.0", "port"),
    ("endpoints: []\nca: ca.pem\ntoken: t\n", "endpoints", "at least 1"),
    ("endpoints: [https://h]\nca: nope.pem\ntoken: t\n", "ca", "does not exist"),
    ("endpoints: [https://h]\nca: ca.pem\ncert: me.pem\n", "key", "together"),
    ("endpoints: [https://h]\nca: ca.pem\n", "credentials", "cert and key, or token"),
    ("endpoints: [https://h]\nca: ca.pem\ntoken: t\ntoken_file: token\n", "token", "not both"),
    ("endpoints: [https://h]\nca: ca.pem\ntoken: t\nmystery: 1\n", "mystery", "Extra"),
    ("endpoints: [https://h]\nca: ca.pem\ntoken: t\ndeadline_s: -1\n", "deadline_s", "greater"),
    ("- just\n- a list\n", "config", "mapping"),
    ("endpoints: [\n", "config", "YAML"),
])
def test_bad_values_name_the_field(files, text, field, needle):
    path = write(files / "client.yaml", text)
    with pytest.raises(InvalidSpec) as exc:
        load_client_config({"AHVLITE_CONFIG": str(path)})
    assert exc.value.field == field
    assert needle in exc.value.message


def test_a_bad_token_is_never_echoed(files):
    path = write(files / "client.yaml", "endpoints: [https://h]\nca: ca.pem\n"
                                        "token: [not-a-string-secret-value]\n")
    with pytest.raises(InvalidSpec) as exc:
        load_client_config({"AHVLITE_CONFIG": str(path)})
    assert exc.value.field == "token" and "not-a-string-secret-value" not in exc.value.message


def test_missing_config_says_how_to_make_one(tmp_path):
    with pytest.raises(NotFound) as exc:
        load_client_config({}, home=tmp_path)
    assert "AHVLITE_API" in (exc.value.hint or "")
    with pytest.raises(NotFound):
        load_client_config({"AHVLITE_CONFIG": str(tmp_path / "nope.yaml")})


def test_server_settings_name_what_is_missing(tmp_path):
    from ahvlite.controller.api.server import parse_listen
    from ahvlite.controller.api.settings import api_settings

    assert api_settings(None, None, None, None) is None  # no listen address: no API
    assert parse_listen("[::1]:9440") == ("::1", 9440)
    for bad in ("9440", "host:", "h:70000", ":9440"):
        with pytest.raises(InvalidSpec) as exc:
            parse_listen(bad)
        assert exc.value.field == "api-listen"
    f = tmp_path / "x.pem"
    with pytest.raises(InvalidSpec) as exc:
        api_settings("0.0.0.0:9440", f, None, f)
    assert exc.value.field == "api-key"
    with pytest.raises(InvalidSpec) as exc:
        api_settings("0.0.0.0:9440", f, f, f, url="http://h:9440")
    assert exc.value.field == "api-url"
    s = api_settings("10.0.0.5:9440", f, f, f)
    assert s is not None and s.published_url(9440) == "https://10.0.0.5:9440"
