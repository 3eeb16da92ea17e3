"""SQLite's writers queue on the process's lock (chatproject.db.sqlite3), released however the
transaction ends."""

import fcntl
import os
import threading
import time

import pytest
from django.contrib.auth import get_user_model
from django.db import OperationalError, connection, transaction

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's write lock"),
]
User = get_user_model()


def in_thread(func) -> threading.Thread:
    def run():
        try:
            func()
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_second_writer_waits_for_the_first_then_writes_at_once():
    writing, finish = threading.Event(), threading.Event()
    second_done = []

    def first():
        with transaction.atomic():
            User.objects.create(username="first")
            writing.set()
            finish.wait(5)

    def second():
        with transaction.atomic():
            User.objects.create(username="second")
        second_done.append(time.monotonic())

    one = in_thread(first)
    assert writing.wait(5)
    two = in_thread(second)
    time.sleep(0.3)
    assert not second_done  # queued behind the first writer
    released = time.monotonic()
    finish.set()
    one.join(5), two.join(5)
    assert second_done and second_done[0] - released < 0.2
    assert set(User.objects.values_list("username", flat=True)) == {"first", "second"}


def test_a_rolled_back_or_closed_writer_gives_the_lock_back():
    def fails():
        with pytest.raises(ValueError), transaction.atomic():
            User.objects.create(username="rolled-back")
            raise ValueError

    def left_open():
        transaction.atomic().__enter__()  # never exited: the connection is closed instead
        User.objects.create(username="never-committed")

    for func in (fails, left_open):
        in_thread(func).join(5)
    started = time.monotonic()
    in_thread(lambda: User.objects.create(username="next") and None).join(5)
    with transaction.atomic():
        User.objects.create(username="after")
    assert time.monotonic() - started < 1
    assert set(User.objects.values_list("username", flat=True)) == {"next", "after"}


# --- Another process writing: its lock on `<database>.writelock` --------------------------------


@pytest.fixture
def other_process():
    """The database file's lock as another process holds it (another open file of it)."""
    fd = os.open(f"{connection.settings_dict['NAME']}.writelock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    yield fd
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


@pytest.fixture
def short_timeout():
    options = connection.settings_dict["OPTIONS"]  # one dict for every thread's connection
    before = options.get("timeout")
    options["timeout"] = 0.5
    yield 0.5
    options["timeout"] = before


def _write_in_thread(username: str, outcome: dict) -> threading.Thread:
    def write():
        try:
            with transaction.atomic():  # a write transaction: it takes the write lock
                User.objects.create(username=username)
            outcome[username] = time.monotonic()
        except OperationalError as exc:
            outcome[username] = exc

    return in_thread(write)


def test_a_writer_waits_for_another_process_and_writes_the_moment_it_lets_go(other_process):
    outcome = {}
    writer = _write_in_thread("waited", outcome)
    time.sleep(0.3)
    assert not outcome  # the other process still writes
    released = time.monotonic()
    fcntl.flock(other_process, fcntl.LOCK_UN)
    writer.join(5)
    assert outcome["waited"] - released < 0.1
    assert User.objects.filter(username="waited").exists()


def test_a_writer_gives_up_after_its_timeout_and_the_lock_is_not_kept_for_it(
    other_process, short_timeout
):
    outcome = {}
    started = time.monotonic()
    _write_in_thread("gave-up", outcome).join(10)
    assert isinstance(outcome["gave-up"], OperationalError)
    assert "database is locked" in str(outcome["gave-up"])
    assert short_timeout <= time.monotonic() - started < short_timeout + 1

    # The process's next writer, already waiting when the other process lets go, gets the lock.
    waiting = _write_in_thread("next", outcome)
    time.sleep(0.1)
    fcntl.flock(other_process, fcntl.LOCK_UN)
    waiting.join(5)
    assert not isinstance(outcome["next"], Exception)

    # Nobody waits now: whatever this process took for its writers, it has let go of.
    time.sleep(0.2)
    fcntl.flock(other_process, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if still held here


def test_a_writer_that_gave_up_leaves_the_lock_to_the_other_processes(other_process, short_timeout):
    outcome = {}
    _write_in_thread("gave-up", outcome).join(10)
    assert isinstance(outcome["gave-up"], OperationalError)
    fcntl.flock(other_process, fcntl.LOCK_UN)
    deadline = time.monotonic() + 2
    while True:  # nothing of this process's gets the lock now and keeps it
        try:
            fcntl.flock(other_process, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            assert time.monotonic() < deadline, "the lock stayed with a writer that gave up"
            time.sleep(0.01)
