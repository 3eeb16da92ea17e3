"""`manage.py traces search`: the same filters as the staff API, from a terminal."""

import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

pytestmark = pytest.mark.django_db


def test_the_traces_command_searches_with_the_same_filters(world, capsys):
    call_command("traces", "search", "--user", "alice", "--tag", "team=support", "--format", "json")
    found = json.loads(capsys.readouterr().out)
    expected = {world["turns"][0]["trace_id"], world["turns"][1]["trace_id"]}
    assert {t["trace_id"] for t in found} == expected

    call_command("traces", "search", "--feedback", "response_is_correct:false", "--format", "csv")
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("trace_id,time,duration_ms") and len(lines) == 3

    call_command("traces", "search", "--request-id", "req-b1")
    captured = capsys.readouterr()
    assert world["turns"][3]["trace_id"] in captured.out and "1 trace(s)" in captured.err


def test_the_traces_command_refuses_hostile_values(world):
    with pytest.raises(CommandError, match="invalid filter"):
        call_command("traces", "search", "--tag", "team=x' OR '1'='1")


def test_the_traces_command_says_what_is_wrong_with_a_request_id():
    with pytest.raises(CommandError, match="--request-id"):
        call_command("traces", "search", "--request-id", "x" * 51)


def test_runserver_says_in_one_line_what_delivers_traces(tmp_path):
    """What a Django developer sees first: how traces get to MLflow without `make run`."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.mlflow_server import free_port

    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "chatproject.settings",
        "DJANGO_SECRET_KEY": "runserver-test",
        "DJANGO_DOT_ENV": "",
        "DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite3",
        "TRACING_ENABLED": "false",
        "PYTHONUNBUFFERED": "1",
    }
    server = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", "--noreload", f"127.0.0.1:{free_port()}"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # Ctrl-C as a terminal delivers it: a suite run as a background job (`make test &`)
        # ignores SIGINT, its children inherit that, and runserver would never stop.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = server.stdout.readline()
            lines.append(line)
            if "Quit the server" in line or not line:
                break
    finally:
        # Ctrl-C, as a developer stops it; its output read meanwhile, so a full pipe cannot
        # hold it up.
        server.send_signal(signal.SIGINT)
        try:
            rest, _ = server.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            server.kill()
            rest, _ = server.communicate()
            output = "".join(lines) + rest
            raise AssertionError(f"runserver did not stop on Ctrl-C: {output}") from None
    hints = [line for line in lines if "deliver_traces --loop" in line]
    assert len(hints) == 1 and "deliver_feedback --loop" in hints[0], "".join(lines)
