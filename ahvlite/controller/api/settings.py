"""How a controller serves the API: its settings (options or environment), and start.

Without a listen address no API is served. With one, the server certificate, its key
and the cluster CA are required (TLS always). The URL the controller publishes for
others (members, the leader record: clients and followers send uploads there) is
``--api-url``, else ``https://LISTEN_HOST:PORT``, with this machine's name in place of
a wildcard listen address.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ahvlite.controller.api.uploads import DEFAULT_DIR, DEFAULT_MAX_BYTES
from ahvlite.controller.coord.api import Coordinator
from ahvlite.controller.tasks import Handler
from ahvlite.errors import InvalidSpec
from ahvlite.spec.cluster import ClusterSpec

if TYPE_CHECKING:
    from ahvlite.controller.api.server import ApiServer

ENV = {"listen": "AHVLITE_API_LISTEN", "cert": "AHVLITE_API_CERT", "key": "AHVLITE_API_KEY",
       "ca": "AHVLITE_API_CA", "url": "AHVLITE_API_URL", "uploads": "AHVLITE_API_UPLOADS"}
WILDCARDS = ("0.0.0.0", "::", "")


@dataclass(frozen=True)
class ApiSettings:
    host: str
    port: int
    cert: Path
    key: Path
    ca: Path
    url: str | None = None  # what to publish; None: derived from the bound address
    uploads: Path = DEFAULT_DIR
    upload_max_bytes: int = DEFAULT_MAX_BYTES

    def published_url(self, port: int) -> str:
        if self.url:
            return self.url.rstrip("/")
        host = socket.gethostname() if self.host in WILDCARDS else self.host
        return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def api_settings(listen: str | None, cert: Path | None, key: Path | None, ca: Path | None,
                 url: str | None = None, uploads: Path | None = None) -> ApiSettings | None:
    """None without ``listen``; else every TLS file named, or the missing one named."""
    from ahvlite.controller.api.server import parse_listen

    if not listen:
        return None
    host, port = parse_listen(listen)
    for opt, value in (("cert", cert), ("key", key), ("ca", ca)):
        if value is None:
            raise InvalidSpec(f"api-{opt}", None,
                              f"a PEM file (--api-{opt} or ${ENV[opt]}): the API is TLS only")
    if url is not None and not url.startswith("https://"):
        raise InvalidSpec("api-url", url, "https://HOST:PORT, as clients reach this controller")
    assert cert is not None and key is not None and ca is not None
    return ApiSettings(host, port, cert, key, ca, url, uploads or DEFAULT_DIR)


def start_api(settings: ApiSettings, coord: Coordinator, controller: str,
              registry: Mapping[str, Handler],
              cluster: Callable[[], ClusterSpec] | None = None) -> tuple[ApiServer, str]:
    """Serve the API for this controller; returns (server handle, published URL)."""
    from ahvlite.controller.api.app import ApiBackend, create_app
    from ahvlite.controller.api.server import serve_api
    from ahvlite.controller.api.uploads import TakesUploads, UploadArea

    area = UploadArea(settings.uploads, max_bytes=settings.upload_max_bytes)
    for handler in registry.values():  # kinds that take what was uploaded here
        if isinstance(handler, TakesUploads):
            handler.use_uploads(area)
    app = create_app(ApiBackend(coord, controller, registry, cluster=cluster, uploads=area))
    handle = serve_api(app, settings.host, settings.port, settings.cert, settings.key,
                       settings.ca)
    return handle, settings.published_url(handle.port)
