"""The API's request and response bodies, shared by the server and the client.

pydantic only (no web framework), so the client and tests import these freely.
Field names carry units (``wait_s``, ``size``: bytes) like the rest of ahvlite.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ahvlite.controller.taskid import TASK_ID_RE

API_VERSION = "v1"
MAX_WAIT_S = 60.0  # a long-poll holds a server thread: keep each one short
TOKEN_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
TASK_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
TERMINAL_STATES = ("succeeded", "failed", "cancelled")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorBody(BaseModel):
    """Every error answer: ahvlite's error kind, message, hint; for invalid input also
    the field, the value and what is allowed."""

    error: str
    message: str
    hint: str | None = None
    field: str | None = None
    value: Any = None
    allowed: str | None = None


class Health(BaseModel):
    ok: bool


class TaskSubmit(Strict):
    kind: Annotated[str, Field(min_length=1, max_length=64)]
    params: dict[str, Any] = Field(default_factory=dict)
    # Chosen by the client: a submission sent again after a lost answer (the controller
    # died meanwhile) returns the same task instead of queueing a second one.
    id: Annotated[str | None, Field(pattern=TASK_ID_RE.pattern)] = None


class TaskOut(BaseModel):
    """A task as the store holds it, with the store's version of its record."""

    id: str
    kind: str
    params: dict[str, Any]
    state: str
    progress_pct: int = 0
    message: str = ""
    owner: str | None = None
    owner_token: int | None = None
    attempts: int = 0
    steps_done: dict[str, Any] = Field(default_factory=dict)
    cancel_requested: bool = False
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    submitted_by: str | None = None
    error_kind: str | None = None
    error_hint: str | None = None
    version: int

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES


class TaskQuery(Strict):
    """``GET /v1/tasks/ID``: with ``wait_s``, answer once the task's version is above
    ``after_version`` or it has ended, or after ``wait_s`` seconds (long-poll)."""

    wait_s: Annotated[float, Field(ge=0, le=MAX_WAIT_S)] = 0.0
    after_version: Annotated[int, Field(ge=-1)] = -1


class TaskListQuery(Strict):
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"] | None = None
    kind: Annotated[str | None, Field(max_length=64)] = None


class LeaderInfo(BaseModel):
    name: str | None
    host: str | None = None
    token: int
    api: str | None = None


class Info(BaseModel):
    api_version: str = API_VERSION
    cluster: str | None
    controller: str
    leader: LeaderInfo | None


class WhoAmI(BaseModel):
    principal: str
    method: Literal["cert", "token"]


class TokenCreate(Strict):
    name: Annotated[str, Field(pattern=TOKEN_NAME)]
    ttl_s: Annotated[float | None, Field(gt=0, le=10 * 365 * 86400)] = None


class TokenInfo(BaseModel):
    name: str
    created_at: float
    created_by: str
    expires_at: float | None = None


class TokenCreated(TokenInfo):
    token: str  # shown once; the store keeps only its SHA-256


class UploadOut(BaseModel):
    upload: str
    size: int
    sha256: str
