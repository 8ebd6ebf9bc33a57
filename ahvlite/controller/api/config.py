"""The client's configuration: where the API is and how we prove who we are.

Like a kubeconfig or clouds.yaml: a YAML file (``$AHVLITE_CONFIG``, else
``~/.config/ahvlite/client.yaml``)::

    endpoints: [https://10.0.0.11:9440, https://10.0.0.12:9440]
    ca: ca.pem              # the cluster CA (relative paths: from the file's directory)
    cert: admin.pem         # mutual TLS ...
    key: admin-key.pem
    # token_file: token     # ... or a bearer token (token: or token_file:)

Each key can be overridden by the environment: ``AHVLITE_API`` (comma-separated
endpoints), ``AHVLITE_CA``, ``AHVLITE_CERT``, ``AHVLITE_KEY``, ``AHVLITE_TOKEN``. The
file is optional when the environment says everything. No HTTP library here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)

from ahvlite.errors import InvalidSpec, NotFound

ENV_CONFIG = "AHVLITE_CONFIG"
ENV = {"endpoints": "AHVLITE_API", "ca": "AHVLITE_CA", "cert": "AHVLITE_CERT",
       "key": "AHVLITE_KEY", "token": "AHVLITE_TOKEN"}
DEFAULT_PATH = Path("~/.config/ahvlite/client.yaml")
DEFAULT_DEADLINE_S = 30.0


def _endpoint(url: str) -> str:
    parts = urlsplit(url)
    if (parts.scheme != "https" or not parts.hostname or parts.path not in ("", "/")
            or parts.query or parts.fragment or parts.username or parts.password):
        raise ValueError("https://HOST[:PORT] (TLS only, no path)")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError("https://HOST[:PORT] with a port from 1 to 65535") from None
    return url.rstrip("/")


def _file(path: Path) -> Path:
    if not path.is_file():
        raise ValueError(f"a readable file ({path} does not exist)")
    return path


Endpoint = Annotated[str, AfterValidator(_endpoint)]
ExistingFile = Annotated[Path, AfterValidator(_file)]


class ClientConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    endpoints: Annotated[list[Endpoint], Field(min_length=1)]
    ca: ExistingFile
    cert: ExistingFile | None = None
    key: ExistingFile | None = None
    token: SecretStr | None = None
    token_file: ExistingFile | None = None
    deadline_s: Annotated[float, Field(gt=0, le=3600)] = DEFAULT_DEADLINE_S

    @model_validator(mode="after")
    def _credentials(self) -> ClientConfig:
        # InvalidSpec passes through pydantic untouched, so it names the right field.
        if (self.cert is None) != (self.key is None):
            missing = "key" if self.key is None else "cert"
            raise InvalidSpec(missing, None, "cert and key together (mutual TLS), or neither")
        if self.token is not None and self.token_file is not None:
            raise InvalidSpec("token", "***", "token or token_file, not both")
        if self.cert is None and self.token is None and self.token_file is None:
            raise InvalidSpec("credentials", None, "cert and key, or token / token_file")
        return self

    def bearer(self) -> str | None:
        """The token to send, read from ``token_file`` when that is how it is given."""
        if self.token is not None:
            return self.token.get_secret_value()
        if self.token_file is not None:
            text = self.token_file.read_text().strip()
            if not text:
                raise InvalidSpec("token_file", str(self.token_file), "a file holding the token")
            return text
        return None


def _relative_to(base: Path, value: Any) -> Any:
    """A path in the file counts from the file's directory (as in a kubeconfig)."""
    if not isinstance(value, str) or not value:
        return value
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else base / p)


def load_client_config(env: dict[str, str] | None = None,
                       home: Path | None = None) -> ClientConfig:
    """File (if any), then the environment on top; a bad value names its field."""
    env = dict(os.environ) if env is None else env
    explicit = env.get(ENV_CONFIG)
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise NotFound(f"client config {path} (${ENV_CONFIG}) does not exist")
    else:
        path = (home / ".config/ahvlite/client.yaml") if home else DEFAULT_PATH.expanduser()
    values: dict[str, Any] = {}
    if path.is_file():
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise InvalidSpec("config", str(path), f"YAML ({exc})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise InvalidSpec("config", str(path), "a YAML mapping of endpoints, ca, cert, ...")
        values = dict(loaded or {})
        for name in ("ca", "cert", "key", "token_file"):
            values[name] = _relative_to(path.parent, values.get(name))
        values = {k: v for k, v in values.items() if v is not None}
    if env.get(ENV["endpoints"]):
        values["endpoints"] = [e.strip() for e in env[ENV["endpoints"]].split(",") if e.strip()]
    for name in ("ca", "cert", "key"):
        if env.get(ENV[name]):
            values[name] = str(Path(env[ENV[name]]).expanduser())
    if env.get(ENV["token"]):
        values["token"] = env[ENV["token"]]
        values.pop("token_file", None)  # the environment's token replaces the file's
    if env.get(ENV["cert"]) and not env.get(ENV["token"]):
        values.pop("token", None)  # a certificate from the environment is the credential
        values.pop("token_file", None)
    if "endpoints" not in values:
        raise NotFound("no API endpoints configured",
                       hint=f"write {path} (endpoints, ca, cert/key or token) or set "
                            f"{ENV['endpoints']}, {ENV['ca']} and {ENV['cert']}/{ENV['key']} "
                            f"or {ENV['token']}; or `ahvlite local up` to make this "
                            "machine a one-host cluster")
    return _build(values)


def _build(values: dict[str, Any]) -> ClientConfig:
    try:
        return ClientConfig(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "config"
        value = "***" if field == "token" else first.get("input")  # never echo a secret
        raise InvalidSpec(field, value, first["msg"].removeprefix("Value error, ")) from None
