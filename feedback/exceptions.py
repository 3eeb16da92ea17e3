"""The feedback app's domain errors; `chatproject.api.exception_handler` maps each to its answer."""

from chatproject.errors import ApplicationError


class TurnNotRateable(ApplicationError):
    """Only a turn that produced an answer (with a trace) can be rated."""

    status_code = 409
    code = "turn_not_rateable"
