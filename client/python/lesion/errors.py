"""Every failed call raises LesionError: the gRPC status code and the server's message."""

import functools

import grpc


class LesionError(Exception):
    """A failed lesiond call (or a local failure such as lesiond not starting).

    ``code`` is a ``grpc.StatusCode`` (``None`` for local failures), ``details`` the server's message
    (what to fix: "interventions[0].head_ablation: layer 9 out of range ..."), ``rpc`` the name of
    the call and ``cause`` the original ``grpc.RpcError`` if any.
    """

    def __init__(self, code, details, rpc=None, cause=None):
        self.code = code
        self.details = details or ""
        self.rpc = rpc
        self.cause = cause
        name = code.name if isinstance(code, grpc.StatusCode) else str(code or "ERROR")
        where = f"{rpc}: " if rpc else ""
        super().__init__(f"{where}{name}: {self.details}")

    @classmethod
    def from_rpc_error(cls, error, rpc=None):
        """The error for a grpc.RpcError (its code and details), ``rpc`` naming the call."""
        code = error.code() if callable(getattr(error, "code", None)) else None
        details = error.details() if callable(getattr(error, "details", None)) else str(error)
        return cls(code, details, rpc=rpc, cause=error)


class NotFound(LesionError):
    """NOT_FOUND: no such experiment or model (``Client.get``, a spec naming a model not loaded)."""


class InvalidArgument(LesionError):
    """INVALID_ARGUMENT: a spec, query or request the server refuses; ``details`` says what to fix."""


class PermissionDenied(LesionError):
    """PERMISSION_DENIED: an admin call as a user, or another user's experiment to cancel."""


class Unauthenticated(LesionError):
    """UNAUTHENTICATED: no token, or an unknown one, on a server with a tokens file."""


_BY_CODE = {
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
}


def wrap_rpc_error(error, rpc=None):
    """The LesionError (subclass by status code) for a grpc.RpcError."""
    code = error.code() if callable(getattr(error, "code", None)) else None
    return _BY_CODE.get(code, LesionError).from_rpc_error(error, rpc=rpc)


def translate_errors(rpc):
    """Decorator: re-raise grpc.RpcError from the wrapped function as LesionError."""

    def deco(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except grpc.RpcError as e:
                raise wrap_rpc_error(e, rpc) from e

        return inner

    return deco
