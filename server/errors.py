"""Domain errors. The API layer maps each type to one gRPC status (server/api/status.py)."""


class ServeError(Exception):
    """Base of every error a request can cause; the message is shown to the client as it is."""


class NotFound(ServeError):
    pass


class InvalidArgument(ServeError):
    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")


class ResourceExhausted(ServeError):
    pass


class FailedPrecondition(ServeError):
    pass


class AlreadyExists(ServeError):
    pass


class Unauthenticated(ServeError):
    """The call carries no token, or one the server does not know."""


class PermissionDenied(ServeError):
    """The call's token does not cover what it asks for."""


class Unavailable(ServeError):
    """Not now, but soon: the client should retry (the message says when)."""


class RuntimeFailure(ServeError):
    """onnxruntime failed on a step: a model or server fault, not the client's."""
