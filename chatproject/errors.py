"""The base of every domain error; apps raise their own subclasses, the API handler maps them."""


class ApplicationError(Exception):
    """An error a client can act on: its HTTP status, a stable code and a readable message."""

    status_code = 400
    code = "error"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def headers(self) -> dict[str, str]:
        """Response headers that go with this error (e.g. `Retry-After`)."""
        return {}
