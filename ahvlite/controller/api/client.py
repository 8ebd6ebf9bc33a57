"""The API's HTTP client: the CLI's way to the cluster (also the lab's and benches').

It tries the configured endpoints starting from the last one that answered and moves
on when one cannot be reached; while none answers, or they answer 503 (their store
has no quorum), it keeps trying with backoff until its deadline, so a call survives a
controller dying. A TLS refusal is a credential problem and is never retried. A
request whose body may have reached a controller that then vanished is not sent again
(a task could be queued twice), except uploads, which stage a fresh copy each time.
HTTP errors come back as ahvlite's errors, with the server's field, value and hint.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from ahvlite.clock import SYSTEM
from ahvlite.controller.api.config import ClientConfig, load_client_config
from ahvlite.controller.api.models import (
    MAX_WAIT_S,
    Info,
    TaskOut,
    TokenCreated,
    TokenInfo,
    UploadOut,
    WhoAmI,
)
from ahvlite.errors import (
    AhvliteError,
    Conflict,
    HostUnreachable,
    InvalidSpec,
    NotFound,
    OperationFailed,
    OperationTimeout,
    Unauthorized,
)

CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 30.0
LONG_POLL_S = 25.0
UPLOAD_CHUNK = 1 << 20
MAX_BACKOFF_S = 2.0
MAX_REDIRECTS = 3


def _tls_refusal(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error behind a transport error, unless it is just a closed connection."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ssl.SSLError) and not isinstance(
                cur, ssl.SSLEOFError | ssl.SSLZeroReturnError):
            return cur
        cur = cur.__cause__ or cur.__context__
    return None


def _unreached(exc: httpx.TransportError) -> bool:
    """True when the request surely never reached the server (safe to send again)."""
    return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)


def error_from(resp: httpx.Response, where: str) -> AhvliteError:
    """An HTTP error answer as ahvlite's error (the server sends an ErrorBody)."""
    try:
        body = resp.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {}
    message = str(body.get("message") or f"HTTP {resp.status_code} from {where}")
    hint = body.get("hint") if isinstance(body.get("hint"), str) else None
    code = resp.status_code
    if code in (401, 403):
        return Unauthorized(message, hint=hint or "check the credentials in your client "
                            "config (cert/key or token)")
    if code == 404:
        return NotFound(message, hint=hint)
    if code == 409:
        return Conflict(message, hint=hint)
    if code in (400, 413, 422):
        if body.get("field"):
            return InvalidSpec(str(body["field"]), body.get("value"),
                               str(body.get("allowed") or message), hint=hint)
        return InvalidSpec("request", None, message, hint=hint)
    return OperationFailed(f"{where}: {message}", hint=hint)


class ApiClient:
    """One client over the configured endpoints; ``clock``/``sleep`` are injectable."""

    def __init__(self, config: ClientConfig, *, clock: Callable[[], float] = SYSTEM.monotonic,
                 sleep: Callable[[float], None] = SYSTEM.sleep,
                 deadline_s: float | None = None) -> None:
        self.config = config
        self.endpoints = list(config.endpoints)
        self.deadline_s = config.deadline_s if deadline_s is None else deadline_s
        self.clock = clock
        self.sleep = sleep
        self._first = 0  # the endpoint that answered last
        self._cert_checked = False
        ctx = ssl.create_default_context(cafile=str(config.ca))
        if config.cert is not None:
            try:
                ctx.load_cert_chain(str(config.cert), str(config.key))
            except (ssl.SSLError, OSError) as exc:
                raise InvalidSpec("cert", str(config.cert),
                                  f"a PEM certificate matching the key {config.key} ({exc})"
                                  ) from None
        token = config.bearer()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(verify=ctx, headers=headers, follow_redirects=False,
                                  timeout=httpx.Timeout(READ_TIMEOUT_S,
                                                        connect=CONNECT_TIMEOUT_S))

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, home: Path | None = None,
                 **kw: Any) -> ApiClient:
        return cls(load_client_config(env, home), **kw)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- the one way out -------------------------------------------------------------

    def _candidates(self, prefer: str | None) -> list[str]:
        n = len(self.endpoints)
        rotated = [self.endpoints[(self._first + i) % n] for i in range(n)]
        return ([prefer] if prefer else []) + [e for e in rotated if e != prefer]

    def request(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                json: Any = None, content: Callable[[], Any] | None = None,
                headers: dict[str, str] | None = None, resend: bool | None = None,
                timeout_s: float | None = None, prefer: str | None = None) -> httpx.Response:
        """Send to the first endpoint that answers; errors become ahvlite's errors.

        ``resend``: may the request go out again after it may have reached a server
        (default: only for GET). ``content`` makes a fresh body for every attempt.
        A 3xx answer is returned as is (the caller decides where to go).
        """
        resend = method == "GET" if resend is None else resend
        deadline = self.clock() + self.deadline_s
        delay = 0.2
        problems: list[str] = []
        while True:
            for base in self._candidates(prefer):
                url = base + path
                # An ordinary call waits no longer than the deadline leaves (a controller
                # whose store hangs must not hold us); a long-poll names its own time.
                wait = timeout_s if timeout_s is not None else min(
                    READ_TIMEOUT_S, max(deadline - self.clock(), 1.0))
                timeout = httpx.Timeout(wait, connect=CONNECT_TIMEOUT_S)
                try:
                    resp = self._http.request(method, url, params=params, json=json,
                                              content=content() if content else None,
                                              headers=headers, timeout=timeout)
                except httpx.TransportError as exc:
                    refusal = _tls_refusal(exc)
                    if refusal is not None:
                        raise self._refused(base, refusal) from None
                    self._check_certificate()
                    if not resend and not _unreached(exc):
                        raise HostUnreachable(
                            f"{base} went away during {method} {path} ({type(exc).__name__}); "
                            "it may or may not have been applied",
                            hint="check with `ahvlite task list` before trying again") from None
                    problems.append(f"{base}: {exc or type(exc).__name__}")
                    continue
                if resp.status_code == 503:
                    problems.append(f"{base}: {error_from(resp, base).message}")
                    continue
                if base in self.endpoints:
                    self._first = self.endpoints.index(base)
                if resp.status_code >= 400:
                    raise error_from(resp, base)
                return resp
            left = deadline - self.clock()
            if left <= 0:
                raise HostUnreachable(
                    f"no API endpoint answered {method} {path} within {self.deadline_s:g} s"
                    f" (last: {problems[-1] if problems else 'nothing tried'})",
                    hint="check that the controllers run (`systemctl status "
                         "ahvlite-controller`) and that their store has a quorum"
                         + ("; a controller that closes the connection at once may also "
                            "refuse our client certificate" if self.config.cert else ""))
            self.sleep(min(delay, left))
            delay = min(delay * 2, MAX_BACKOFF_S)

    def _check_certificate(self) -> None:
        """A server drops a handshake whose client certificate it refuses without a
        word (asyncio sends no TLS alert): indistinguishable from a controller dying.
        At the first connection that fails, our own check against the same CA says it
        clearly (only then: the check needs `cryptography`, slow to import for every
        command)."""
        config = self.config
        if self._cert_checked or config.cert is None:
            return
        self._cert_checked = True
        from ahvlite.pki import certificate_problem

        why = certificate_problem(config.cert.read_bytes(), config.ca.read_bytes())
        if why is not None:
            raise Unauthorized(f"client certificate {config.cert} would be refused: {why}",
                               hint=f"issue one from the cluster CA in {config.ca} "
                                    "(`ahvlite pki issue-client`)")

    @staticmethod
    def _refused(base: str, exc: ssl.SSLError) -> Unauthorized:
        if isinstance(exc, ssl.SSLCertVerificationError):
            return Unauthorized(f"{base}: its server certificate is not from our CA "
                                f"({exc.verify_message})",
                                hint="`ca` in the client config must be the cluster CA")
        return Unauthorized(f"{base} refused the TLS handshake ({exc.reason or exc})",
                            hint="a client certificate must be issued by the cluster CA "
                                 "(`ahvlite pki issue-client`), unexpired")

    # -- calls -----------------------------------------------------------------------

    def get(self, path: str, **params: Any) -> Any:
        """``GET path?params`` -> the decoded JSON body (None-valued params are left out).
        A ``wait_s`` parameter (a long-poll) extends the read timeout by that much."""
        query = {k: v for k, v in params.items() if v is not None}
        wait = query.get("wait_s")
        timeout_s = float(wait) + READ_TIMEOUT_S if isinstance(wait, int | float) else None
        return self.request("GET", path, params=query, timeout_s=timeout_s).json()

    def info(self) -> Info:
        return Info(**self.get("/v1/info"))

    def whoami(self) -> WhoAmI:
        return WhoAmI(**self.get("/v1/auth/whoami"))

    def submit(self, kind: str, params: dict[str, Any]) -> TaskOut:
        """Queue a task on any controller. The id is ours, so the submission is
        idempotent and goes out again to the next controller when one dies mid-way."""
        from ahvlite.controller.taskid import new_task_id

        body = {"kind": kind, "params": params, "id": new_task_id(SYSTEM.time())}
        resp = self.request("POST", "/v1/tasks", json=body, resend=True)
        return TaskOut(**resp.json())

    def task(self, task_id: str) -> TaskOut:
        return TaskOut(**self.get(f"/v1/tasks/{task_id}"))

    def tasks(self, state: str | None = None, kind: str | None = None) -> list[TaskOut]:
        return [TaskOut(**t) for t in self.get("/v1/tasks", state=state, kind=kind)]

    def cancel(self, task_id: str) -> TaskOut:
        return TaskOut(**self.request("POST", f"/v1/tasks/{task_id}/cancel").json())

    def wait(self, task_id: str, on_progress: Callable[[int, str], None] | None = None, *,
             timeout_s: float | None = None, poll_s: float = LONG_POLL_S) -> TaskOut:
        """Follow a task to its end by long-polling; ``on_progress(pct, message)`` on
        each change. Returns the ended task (whatever its state)."""
        start = self.clock()
        version = -1
        last: tuple[int, str] | None = None
        poll_s = min(poll_s, MAX_WAIT_S)
        while True:
            if timeout_s is not None:
                left = timeout_s - (self.clock() - start)
                if left <= 0:
                    raise OperationTimeout(f"task {task_id} still running after {timeout_s:g} s",
                                           hint=f"`ahvlite task wait {task_id}` goes on "
                                                "waiting; the task itself goes on")
                poll_s = min(poll_s, max(left, 0.1))
            resp = self.request("GET", f"/v1/tasks/{task_id}",
                                params={"wait_s": poll_s, "after_version": version},
                                timeout_s=poll_s + READ_TIMEOUT_S)
            task = TaskOut(**resp.json())
            version = task.version
            if on_progress is not None and (task.progress_pct, task.message) != last:
                last = (task.progress_pct, task.message)
                on_progress(task.progress_pct, task.message)
            if task.terminal:
                return task

    def create_token(self, name: str, ttl_s: float | None = None) -> TokenCreated:
        body = {"name": name, **({"ttl_s": ttl_s} if ttl_s is not None else {})}
        return TokenCreated(**self.request("POST", "/v1/auth/tokens", json=body).json())

    def tokens(self) -> list[TokenInfo]:
        return [TokenInfo(**t) for t in self.get("/v1/auth/tokens")]

    def revoke_token(self, name: str) -> None:
        self.request("DELETE", f"/v1/auth/tokens/{name}")

    def upload(self, path: Path, on_bytes: Callable[[int], None] | None = None) -> UploadOut:
        """Stream a file to the leader's staging area; ``on_bytes(sent)`` as it goes.

        The body goes straight to the leader's API when ``/v1/info`` names it (so a
        large body is not first sent to a follower only to be redirected); a 307 from
        a controller that is no longer the leader is followed with a fresh body.
        """
        size = path.stat().st_size

        def body() -> Iterator[bytes]:
            sent = 0
            with path.open("rb") as f:
                while chunk := f.read(UPLOAD_CHUNK):
                    yield chunk
                    sent += len(chunk)
                    if on_bytes is not None:
                        on_bytes(sent)

        lead = self.info().leader
        prefer = lead.api.rstrip("/") if lead is not None and lead.api else None
        headers = {"Content-Length": str(size), "Content-Type": "application/octet-stream"}
        for _ in range(MAX_REDIRECTS + 1):
            resp = self.request("POST", "/v1/uploads", content=body, headers=headers,
                                resend=True, prefer=prefer, timeout_s=READ_TIMEOUT_S)
            if resp.status_code != 307:
                return UploadOut(**resp.json())
            location = urlsplit(resp.headers.get("location", ""))
            if location.scheme != "https" or not location.netloc:
                raise OperationFailed(f"the API redirected the upload to {location.geturl()!r}",
                                      hint="the leader must publish an https:// API URL")
            prefer = f"https://{location.netloc}"
        raise OperationFailed(f"the upload was redirected more than {MAX_REDIRECTS} times",
                              hint="leadership is moving; try again")


def connection_counts(config: ClientConfig) -> dict[str, dict[str, int]]:
    """Per host: the libvirt connections every controller of ``config`` opened to it
    and lent to operations (each one's ``/v1/controller/connections``, summed): how a
    test or a bench sees that an operation reads each host once."""
    total: dict[str, dict[str, int]] = {}
    for endpoint in config.endpoints:
        with ApiClient(config.model_copy(update={"endpoints": [endpoint]})) as c:
            for host, counts in c.get("/v1/controller/connections")["hosts"].items():
                mine = total.setdefault(host, {"opened": 0, "leased": 0})
                for k in mine:
                    mine[k] += int(counts.get(k, 0))
    return total
