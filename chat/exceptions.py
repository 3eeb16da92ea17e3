"""Domain errors; chatproject.api_errors maps each to its HTTP answer in one place."""


class ChatError(Exception):
    status_code = 400
    code = "chat_error"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


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


class TurnNotRateable(ChatError):
    """Only a turn that produced an answer (with a trace) can be rated."""

    status_code = 409
    code = "turn_not_rateable"


class TracesUnavailable(ChatError):
    """Trace search needs the tracking store, and it did not answer."""

    status_code = 503
    code = "traces_unavailable"


class ClientDisconnected(ChatError):
    """The client went away before a streamed answer was complete."""

    status_code = 499
    code = "client_disconnected"
