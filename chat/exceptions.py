"""The chat app's domain errors; `chatproject.api.exception_handler` maps each to its answer."""

from chatproject.errors import ApplicationError


class ChatError(ApplicationError):
    code = "chat_error"


class LLMUnavailable(ChatError):
    status_code = 502
    code = "llm_unavailable"


class LLMTimeout(ChatError):
    status_code = 504
    code = "llm_timeout"


class RequestIdConflict(ChatError):
    """The X-Request-ID was already used for another message, or its turn is still running."""

    status_code = 409
    code = "request_id_conflict"


class TracesUnavailable(ChatError):
    """Trace search needs the tracking store, and it did not answer."""

    status_code = 503
    code = "traces_unavailable"


class Overloaded(ChatError):
    """This process already answers as many turns as it may (CHAT_MAX_TURNS_IN_FLIGHT), or is
    stopping: refused at once, so a client or load balancer can go elsewhere or come back."""

    status_code = 503
    code = "overloaded"

    def __init__(self, message: str, *, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class ClientDisconnected(ChatError):
    """The client went away before a streamed answer was complete."""

    status_code = 499
    code = "client_disconnected"
