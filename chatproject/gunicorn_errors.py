"""gunicorn's own error responses (a 10 KB header is its 431) in the API's JSON error shape.

gunicorn answers requests it cannot parse before the app sees them, with an HTML page and no
hook to change it; `gunicorn.conf.py` swaps in this writer. A test sends such a request to a
real gunicorn, so an upgrade that moves the function fails loudly rather than going HTML again.
"""

import json

from gunicorn import util

_CODES = {
    400: "bad_request",
    403: "permission_denied",
    417: "expectation_failed",
    431: "headers_too_large",
    500: "server_error",
    501: "not_implemented",
}


def write_json_error(sock, status_int: int, reason: str, mesg: str) -> None:
    detail = {431: "A request header is too large (8 KB at most per header line); send less."}
    body = json.dumps(
        {
            "error": _CODES.get(status_int, "bad_request"),
            "detail": detail.get(status_int, mesg or reason),
        }
    ).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode("latin1")
    util.write_nonblock(sock, head + body)


def install() -> None:
    util.write_error = write_json_error
