"""Serve the API over TLS with uvicorn, in a background thread of the controller.

TLS is always on: the server certificate and key come from files, and client
certificates are verified against the cluster CA (``CERT_OPTIONAL``: a client may
present none and use a token instead, but one that does not verify fails the
handshake). uvicorn (0.54) does not pass the client certificate to the app: it does
not fill the ASGI TLS extension (``scope["extensions"]["tls"]``). :class:`TlsH11Protocol`
adds it: per connection, after the handshake, it reads the verified peer certificate
from the transport's ``ssl_object`` and wraps the app so that every request's scope
carries ``client_cert_chain``. It relies only on ``H11Protocol.app`` and
``connection_made``, the two things every uvicorn protocol has.

We bind the socket ourselves (a clear error for a busy port, and port 0 for tests),
then hand it to uvicorn, whose event loop runs in one daemon thread.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from ahvlite.clock import SYSTEM, Clock, wait_until
from ahvlite.errors import Conflict, InvalidSpec, OperationTimeout

log = logging.getLogger(__name__)

ALLOWED_LISTEN = "HOST:PORT (e.g. 0.0.0.0:9440, 10.0.0.5:9440, [::]:9440)"


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` -> (host, port)."""
    host, sep, port = listen.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise InvalidSpec("api-listen", listen, ALLOWED_LISTEN)
    return host, int(port)


def _tls_extension(transport: asyncio.BaseTransport) -> dict[str, Any]:
    ssl_object = transport.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    return {"server_cert": None,
            "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
            "client_cert_name": None, "client_cert_error": None,
            "tls_version": None, "cipher_suite": None}


class TlsH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, plus the ASGI TLS extension in every request's scope."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        tls = _tls_extension(transport)
        inner = self.app

        async def with_tls(scope: Any, receive: Any, send: Any) -> None:
            scope.setdefault("extensions", {})["tls"] = tls
            await inner(scope, receive, send)

        self.app = with_tls


def server_context(certfile: Path, keyfile: Path, cafile: Path) -> ssl.SSLContext:
    """TLS 1.2+, our certificate, client certificates optional but verified by the CA."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    for opt, path in (("api-cert", certfile), ("api-key", keyfile), ("api-ca", cafile)):
        if not path.is_file():
            raise InvalidSpec(opt, str(path), "a readable PEM file")
    try:
        ctx.load_cert_chain(certfile, keyfile)
    except (ssl.SSLError, OSError) as exc:
        raise InvalidSpec("api-cert", str(certfile),
                          f"a PEM certificate matching the key in {keyfile} ({exc})") from None
    try:
        ctx.load_verify_locations(cafile)
    except (ssl.SSLError, OSError) as exc:
        raise InvalidSpec("api-ca", str(cafile), f"PEM CA certificates ({exc})") from None
    ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise Conflict(f"cannot listen on {host}:{port}: {exc.strerror}",
                       hint="another process holds the port, or the address is not "
                            "on this machine") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


@dataclass
class ApiServer:
    """A running API server; ``port`` is the bound one (useful with port 0)."""

    server: uvicorn.Server
    thread: threading.Thread
    host: str
    port: int

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop accepting, let requests in flight end (long-polls for at most 1 s)."""
        self.server.should_exit = True
        self.thread.join(timeout_s)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(timeout_s)


def serve_api(app: Any, listen_host: str, port: int, certfile: Path, keyfile: Path,
              cafile: Path, *, start_timeout_s: float = 10.0,
              clock: Clock = SYSTEM) -> ApiServer:
    """Start serving ``app`` on ``listen_host:port`` (TLS) in a background thread."""
    ctx = server_context(Path(certfile), Path(keyfile), Path(cafile))  # errors here, now
    sock = _bind(listen_host, port)
    config = uvicorn.Config(
        app, http=TlsH11Protocol, ws="none", lifespan="on", log_config=None,
        access_log=False, timeout_graceful_shutdown=1, server_header=False,
        ssl_certfile=str(certfile), ssl_keyfile=str(keyfile), ssl_ca_certs=str(cafile),
        ssl_cert_reqs=ssl.CERT_OPTIONAL)
    config.load()
    config.ssl = ctx  # ours: it also sets the minimum TLS version
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True,
                              name=f"api-{listen_host}:{port}")
    thread.start()
    wait_until(lambda: server.started or not thread.is_alive(), timeout_s=start_timeout_s,
               interval_s=0.01, clock=clock)
    if not server.started:
        server.should_exit = True
        sock.close()
        raise OperationTimeout(f"the API server on {listen_host}:{port} did not start",
                               hint="see the controller's log")
    bound = sock.getsockname()[1]
    log.warning("API serving on https://%s:%d", listen_host, bound)
    return ApiServer(server, thread, listen_host, bound)
