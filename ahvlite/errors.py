"""One exception hierarchy for ahvlite.

Errors from libvirt, OVSDB, netlink, ZooKeeper and subprocesses are translated once,
at the package that talks to that system, into one of these. Every error carries a
message that says what was wrong and, where we know it, what to do (``hint``). The
CLI maps each class to its own exit code, so scripts can tell them apart.
"""

from __future__ import annotations


class AhvliteError(Exception):
    """Base of every error ahvlite raises on purpose."""

    exit_code = 1
    kind = "error"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def to_dict(self) -> dict[str, str | int | None]:
        return {"error": self.kind, "message": self.message, "hint": self.hint,
                "exit_code": self.exit_code}


class InvalidSpec(AhvliteError):
    """User input does not fit: names the field, the value and what is allowed."""

    exit_code = 2
    kind = "invalid"

    def __init__(self, field: str, value: object, allowed: str, *, hint: str | None = None):
        super().__init__(f"{field}={value!r} is not valid: {allowed}", hint=hint)
        self.field = field
        self.value = value
        self.allowed = allowed


class NotFound(AhvliteError):
    exit_code = 3
    kind = "not_found"


class Conflict(AhvliteError):
    """The request clashes with existing state (a name in use, a running lab)."""

    exit_code = 4
    kind = "conflict"


class MissingDependency(AhvliteError):
    """Something the machine must have is missing (a Debian package, /dev/net/tun)."""

    exit_code = 5
    kind = "missing_dependency"


class HostUnreachable(AhvliteError):
    exit_code = 6
    kind = "unreachable"


class Unsupported(AhvliteError):
    exit_code = 7
    kind = "unsupported"


class OperationTimeout(AhvliteError):
    exit_code = 8
    kind = "timeout"


class OperationFailed(AhvliteError):
    """An external system refused or failed an operation; its own message is kept."""

    exit_code = 9
    kind = "failed"


class Unauthorized(AhvliteError):
    """The API refused our credentials (none, unknown, expired, or not allowed this)."""

    exit_code = 11
    kind = "unauthorized"


class UnsafeNetwork(AhvliteError):
    """The lab would send packets off this machine; it refuses instead."""

    exit_code = 10
    kind = "unsafe_network"


def error_of(kind: str | None, message: str, hint: str | None = None) -> AhvliteError:
    """The error a remote party reported by its ``kind`` (a failed task, an API
    answer), as its own class again, so it keeps its exit code."""
    if kind == InvalidSpec.kind:  # its message already names field, value, allowed
        err = AhvliteError(message, hint=hint)
        err.exit_code, err.kind = InvalidSpec.exit_code, InvalidSpec.kind
        return err
    for cls in _all_errors(AhvliteError):
        if cls.kind == kind and cls is not AhvliteError:
            return cls(message, hint=hint)
    return OperationFailed(message, hint=hint)


def _all_errors(cls: type[AhvliteError]) -> list[type[AhvliteError]]:
    out = [cls]
    for sub in cls.__subclasses__():
        out += _all_errors(sub)
    return out
