"""The API as a FastAPI app over an injected backend (no globals: one app per backend).

Every route but ``GET /v1/health`` needs a principal (mutual TLS or a bearer token).
Endpoints that touch the store are plain ``def`` functions: FastAPI runs them in its
thread pool, so the store's blocking calls never stall the event loop. The two that
wait on the client or on the store (uploads, task long-polls) are ``async`` and hand
each store call to the pool themselves, so waiting holds no thread. Writes become
tasks in the store (any controller may submit; the leader runs them). Uploads are the
leader's: a follower answers 307 to the leader's API. Errors are ahvlite's, mapped to
HTTP statuses once, here, with a JSON body the client maps back.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at
# run time, and they name dependencies local to create_app.

import asyncio
import inspect
import json
import logging
import re
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import asdict, dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.security import HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from ahvlite.clock import SYSTEM, Clock
from ahvlite.controller.api import read_cluster, read_images, read_ops, read_templates, read_vms
from ahvlite.controller.api.auth import Forbidden, Principal, TokenTable, authenticate
from ahvlite.controller.api.models import (
    API_VERSION,
    MAX_WAIT_S,
    TASK_ID,
    TOKEN_NAME,
    ErrorBody,
    Health,
    TaskListQuery,
    TaskOut,
    TaskQuery,
    TaskSubmit,
    TokenCreate,
    TokenCreated,
    TokenInfo,
    UploadOut,
    WhoAmI,
)
from ahvlite.controller.api.reads import CORE, Read, ReadContext, leader_info
from ahvlite.controller.api.uploads import TooLarge, UploadArea
from ahvlite.controller.coord.api import Coordinator, Versioned
from ahvlite.controller.tasks import Handler, Task, TaskStore
from ahvlite.errors import (
    AhvliteError,
    Conflict,
    HostUnreachable,
    InvalidSpec,
    NotFound,
    OperationTimeout,
    Unauthorized,
    Unsupported,
)
from ahvlite.spec.cluster import ClusterSpec

log = logging.getLogger(__name__)

MAX_JSON_BYTES = 1 << 20
UPLOAD_PATH = "/v1/uploads"
WRITE_CHUNK = 1 << 20
SWEEP_EVERY_S = 600.0
SLOW_REQUEST_S = 5.0


@dataclass
class ApiBackend:
    """What the API serves from: this controller's store session and task kinds."""

    coord: Coordinator
    controller: str
    registry: Mapping[str, Handler]
    # The controller's cluster as the store holds it now (controller.clusterview);
    # None for a controller that serves no cluster (tests of the API alone).
    cluster: Callable[[], ClusterSpec] | None = None
    uploads: UploadArea | None = None
    clock: Clock = SYSTEM


def all_reads() -> tuple[Read, ...]:
    """Every read the API serves: the core ones and each noun's own table."""
    return (*CORE, *read_vms.READS, *read_cluster.READS, *read_ops.READS, *read_images.READS,
            *read_templates.READS)

def _status(exc: AhvliteError) -> int:
    if isinstance(exc, Forbidden):
        return 403
    if isinstance(exc, Unauthorized):
        return 401
    if isinstance(exc, TooLarge):
        return 413
    if isinstance(exc, InvalidSpec):
        return 422
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, Conflict):
        return 409
    if isinstance(exc, HostUnreachable | OperationTimeout):
        return 503  # the store did not answer (no quorum): worth retrying elsewhere
    if isinstance(exc, Unsupported):
        return 501
    return 500


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)


def error_response(exc: AhvliteError) -> JSONResponse:
    body = ErrorBody(error=exc.kind, message=exc.message, hint=exc.hint)
    if isinstance(exc, InvalidSpec):
        body.field, body.value, body.allowed = exc.field, _jsonable(exc.value), exc.allowed
    status = _status(exc)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def _validation_response(exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    field = ".".join(loc) or "request"
    reason = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    return error_response(InvalidSpec(field, _jsonable(first.get("input")), reason))


class BodyLimit:
    """Bodies of JSON requests must declare a length within ``max_bytes``: the app
    reads a body before it authenticates, so an unbounded one is refused unread."""

    def __init__(self, app: ASGIApp, max_bytes: int, exempt: tuple[str, ...]) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in self.exempt:
            headers = dict(scope.get("headers") or [])
            length, chunked = headers.get(b"content-length"), b"transfer-encoding" in headers
            size = int(length) if length is not None and length.isdigit() else None
            if chunked or (size is not None and size > self.max_bytes):
                exc = TooLarge("body", size if size is not None else "chunked",
                               f"a body with Content-Length of at most {self.max_bytes} bytes")
                await error_response(exc)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class SlowLog:
    """A request whose answer took over ``slow_s`` to begin is logged with its time: a
    read that waits on a lost host shows in the controller's log, not only as a
    client's timeout."""

    def __init__(self, app: ASGIApp, slow_s: float = SLOW_REQUEST_S) -> None:
        self.app = app
        self.slow_s = slow_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or b"wait_s=" in scope.get("query_string", b"") \
                or scope["path"].startswith(UPLOAD_PATH):  # long on purpose
            await self.app(scope, receive, send)
            return
        started = SYSTEM.monotonic()

        async def timed_send(message: Any) -> None:
            if message["type"] == "http.response.start":
                took = SYSTEM.monotonic() - started
                if took > self.slow_s:
                    log.warning("%s %s answered %s after %.1f s", scope["method"],
                                scope["path"], message["status"], took)
            await send(message)

        await self.app(scope, receive, timed_send)


def task_out(task: Task, version: int) -> TaskOut:
    return TaskOut(**asdict(task), version=version)


async def _wait_version(coord: Coordinator, key: str, after: int, timeout_s: float) -> None:
    """Return once ``key``'s version is above ``after`` (or it is gone), or on timeout.

    The wait itself holds no thread: a long-poll per CLI must not use up the thread
    pool that every other request needs.
    """
    loop = asyncio.get_running_loop()
    changed = asyncio.Event()

    def seen(v: Versioned | None) -> None:  # on the store's watch thread
        if v is None or v.version > after:
            with suppress(RuntimeError):  # the loop has closed: nobody waits any more
                loop.call_soon_threadsafe(changed.set)

    cancel = await run_in_threadpool(coord.watch, key, seen)
    try:
        with suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), timeout_s)
    finally:
        cancel()


PATH_PARAM = re.compile(r"{(\w+)}")
# Names in paths (VMs, hosts, templates ...): what every ahvlite name allows.
PATH_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,63}$"


def _query_endpoint(read: Read, ctx: ReadContext) -> Callable[..., Any]:
    """A plain ``def`` endpoint: the read's query model, plus one ``str`` parameter per
    ``{name}`` in its path (passed to the read by keyword)."""
    names = PATH_PARAM.findall(read.path)

    def endpoint(q: Any, **path: str) -> Any:
        return read.fn(ctx, q, **path)

    endpoint.__signature__ = inspect.Signature([  # type: ignore[attr-defined]
        inspect.Parameter("q", inspect.Parameter.KEYWORD_ONLY,
                          annotation=Annotated[read.query, Query()]),
        *(inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY,
                            annotation=Annotated[str, Path(pattern=PATH_NAME)])
          for n in names)])
    endpoint.__name__ = "read_" + read.path.strip("/").replace("/", "_")
    return endpoint


def create_app(backend: ApiBackend) -> FastAPI:
    tasks = TaskStore(backend.coord, backend.clock)
    tokens = TokenTable(backend.coord, backend.clock.time)
    ctx = ReadContext(backend.coord, backend.controller, backend.cluster)
    bearer = HTTPBearer(auto_error=False, description="a token from `ahvlite auth token "
                        "create`; or present a client certificate of the cluster CA")

    def principal(request: Request, _cred: Annotated[Any, Security(bearer)]) -> Principal:
        tls = (request.scope.get("extensions") or {}).get("tls")
        who = authenticate(tokens, tls, request.headers.get("authorization"))
        request.state.principal = who
        return who

    def admin(who: Annotated[Principal, Depends(principal)]) -> Principal:
        if who.method != "cert":
            raise Forbidden(f"{who.name} may not manage tokens",
                            hint="use a client certificate of the cluster CA "
                                 "(`ahvlite pki issue-client`)")
        return who

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        sweeper = None
        if backend.uploads is not None:
            area = backend.uploads

            async def sweep_forever() -> None:
                while True:
                    try:
                        await run_in_threadpool(area.sweep)
                    except OSError as exc:
                        log.warning("upload sweep: %s", exc)
                    await asyncio.sleep(SWEEP_EVERY_S)

            sweeper = asyncio.create_task(sweep_forever())
        yield
        if sweeper is not None:
            sweeper.cancel()
            with suppress(asyncio.CancelledError):
                await sweeper

    app = FastAPI(title="ahvlite", version=API_VERSION, openapi_url=None, docs_url=None,
                  redoc_url=None, lifespan=lifespan)
    app.add_middleware(BodyLimit, max_bytes=MAX_JSON_BYTES, exempt=(UPLOAD_PATH,))
    app.add_middleware(SlowLog)

    @app.exception_handler(AhvliteError)
    async def _ahvlite_error(_r: Request, exc: AhvliteError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_r: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_r: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "error")
        return JSONResponse(ErrorBody(error=kind, message=str(exc.detail)).model_dump(),
                            status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _bug(_r: Request, exc: Exception) -> JSONResponse:
        log.error("API request failed", exc_info=exc)
        body = ErrorBody(error="failed", message=f"internal error: {type(exc).__name__}",
                         hint="see the controller's log")
        return JSONResponse(body.model_dump(), status_code=500)

    @app.get("/v1/health", response_model=Health, tags=["anonymous"])
    def health() -> Health:
        """Whether this controller serves the API (no data, no credentials needed)."""
        return Health(ok=True)

    api = APIRouter(dependencies=[Depends(principal)])

    @api.get("/v1/openapi.json", include_in_schema=False)
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @api.get("/v1/auth/whoami", response_model=WhoAmI, tags=["auth"])
    def whoami(who: Annotated[Principal, Depends(principal)]) -> WhoAmI:
        return WhoAmI(principal=who.name, method=who.method)

    @api.post("/v1/auth/tokens", response_model=TokenCreated, status_code=201, tags=["auth"])
    def create_token(body: TokenCreate,
                     who: Annotated[Principal, Depends(admin)]) -> TokenCreated:
        """A new bearer token, shown once (client certificate principals only)."""
        token, rec = tokens.create(body.name, who.name, body.ttl_s)
        log.warning("token %r created by %s", rec.name, who.name)
        return TokenCreated(token=token, **asdict(rec))

    @api.get("/v1/auth/tokens", response_model=list[TokenInfo], tags=["auth"])
    def list_tokens() -> list[TokenInfo]:
        return [TokenInfo(**asdict(r)) for r in tokens.list()]

    @api.delete("/v1/auth/tokens/{name}", tags=["auth"])
    def revoke_token(name: Annotated[str, Path(pattern=TOKEN_NAME)],
                     who: Annotated[Principal, Depends(admin)]) -> dict[str, str]:
        tokens.revoke(name)
        log.warning("token %r revoked by %s", name, who.name)
        return {"revoked": name}

    @api.post("/v1/tasks", response_model=TaskOut, status_code=201, tags=["tasks"])
    def submit_task(body: TaskSubmit,
                    who: Annotated[Principal, Depends(principal)]) -> TaskOut:
        """Validate through the task kind and queue it; the leader runs it."""
        task = tasks.submit(body.kind, body.params, dict(backend.registry),
                            submitted_by=who.name, task_id=body.id)
        return task_out(*tasks.load(task.id))

    @api.get("/v1/tasks", response_model=list[TaskOut], tags=["tasks"])
    def list_tasks(q: Annotated[TaskListQuery, Query()]) -> list[TaskOut]:
        return [task_out(t, v) for t, v in tasks.all()
                if (q.state is None or t.state == q.state) and (q.kind is None or t.kind == q.kind)]

    @api.get("/v1/tasks/{task_id}", response_model=TaskOut, tags=["tasks"])
    async def get_task(task_id: Annotated[str, Path(pattern=TASK_ID)],
                       q: Annotated[TaskQuery, Query()]) -> TaskOut:
        """With ``wait_s``: a long-poll for the next change after ``after_version``."""
        task, version = await run_in_threadpool(tasks.load, task_id)
        if q.wait_s > 0 and version <= q.after_version and not task.terminal:
            await _wait_version(backend.coord, tasks.key(task_id), q.after_version,
                                min(q.wait_s, MAX_WAIT_S))
            task, version = await run_in_threadpool(tasks.load, task_id)
        return task_out(task, version)

    @api.post("/v1/tasks/{task_id}/cancel", response_model=TaskOut, tags=["tasks"])
    def cancel_task(task_id: Annotated[str, Path(pattern=TASK_ID)]) -> TaskOut:
        tasks.cancel(task_id)
        task, version = tasks.load(task_id)
        return task_out(task, version)

    @api.post(UPLOAD_PATH, response_model=UploadOut, status_code=201, tags=["uploads"],
              responses={307: {"description": "this controller is a follower: send the "
                                              "body to the leader's API at Location"}})
    async def upload(request: Request) -> Any:
        """Stage the request body (raw bytes) on the leader for a later task."""
        area = backend.uploads
        if area is None:
            raise Unsupported("this controller takes no uploads")
        if not backend.coord.is_leader():  # local state, no store round trip
            lead = await run_in_threadpool(leader_info, backend.coord)
            if lead is None or lead.api is None:
                raise HostUnreachable("no leader serves the API now; try again shortly")
            return RedirectResponse(lead.api.rstrip("/") + UPLOAD_PATH, status_code=307)
        length = request.headers.get("content-length")
        declared = int(length) if length is not None and length.isdigit() else None
        staging = await run_in_threadpool(area.begin, declared)
        try:
            buf = bytearray()
            async for chunk in request.stream():
                buf += chunk
                if len(buf) >= WRITE_CHUNK:
                    await run_in_threadpool(staging.write, bytes(buf))
                    buf.clear()
            if buf:
                await run_in_threadpool(staging.write, bytes(buf))
            upload_id, size, sha256 = await run_in_threadpool(staging.finish)
        except BaseException:
            staging.abort()  # over the cap, or the client went away: nothing stays
            raise
        log.warning("upload %s staged: %d bytes", upload_id, size)
        return UploadOut(upload=upload_id, size=size, sha256=sha256)

    for read in all_reads():
        api.add_api_route(read.path, _query_endpoint(read, ctx), methods=["GET"],
                          summary=read.summary, response_model=read.response, tags=["reads"])
    app.include_router(api)
    return app
