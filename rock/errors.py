"""The typed exception tree of ROCK, shared by the server and the SDK.

The server turns a `RockError` into `{"error": {"code", "message"}}` with the class's HTTP status;
the SDK looks the code up in `BY_CODE` and raises the same class again, so callers catch
`rock.errors.NotFound` whether they run in-process or over HTTP.
"""

from __future__ import annotations


class RockError(Exception):
    """Base of every ROCK error; `code` travels over the wire, `status` is the HTTP status."""

    code = "rock_error"
    status = 400

    def __init__(self, message: str = ""):
        super().__init__(message or self.code)
        self.message = message or self.code


class BadRequest(RockError):
    code = "bad_request"
    status = 400


class InvalidPath(BadRequest):
    """A file path that is relative or contains `..`."""

    code = "invalid_path"


class IsADirectory(BadRequest):
    """A file call (`GET .../files`) on a directory; the archive call reads directories."""

    code = "is_a_directory"


class Unauthorized(RockError):
    code = "unauthorized"
    status = 401


class NotFound(RockError):
    code = "not_found"
    status = 404


class SandboxNotFound(NotFound):
    code = "sandbox_not_found"


class ImageNotFound(NotFound):
    code = "image_not_found"


class SnapshotNotFound(NotFound):
    code = "snapshot_not_found"


class SessionNotFound(NotFound):
    code = "session_not_found"


class FileNotFound(NotFound):
    code = "file_not_found"


class Conflict(RockError):
    """The sandbox is in a state that does not allow the call (stopped, session busy or gone)."""

    code = "conflict"
    status = 409


class PayloadTooLarge(RockError):
    code = "payload_too_large"
    status = 413


class ValidationFailed(RockError):
    """A request that parses but breaks a rule: over a maximum, a mount outside the allowed roots."""

    code = "validation_error"
    status = 422


class ImageBuildFailed(RockError):
    """A task image whose Dockerfile does not build (offline, as every build here); the message ends with
    the last lines of the build log."""

    code = "image_build_failed"
    status = 422


class BackendError(RockError):
    """The Docker daemon (or the model gateway) failed in a way the caller cannot fix."""

    code = "backend_error"
    status = 502


def _all_subclasses(cls: type[RockError]) -> list[type[RockError]]:
    out = [cls]
    for sub in cls.__subclasses__():
        out.extend(_all_subclasses(sub))
    return out


BY_CODE: dict[str, type[RockError]] = {c.code: c for c in _all_subclasses(RockError)}


def from_wire(status: int, code: str, message: str) -> RockError:
    """The exception a client raises for an error body; unknown codes keep the status family."""
    cls = BY_CODE.get(code)
    if cls is None:
        cls = {401: Unauthorized, 404: NotFound, 409: Conflict, 413: PayloadTooLarge, 422: ValidationFailed}.get(
            status, BackendError if status >= 500 else RockError
        )
    return cls(message)
