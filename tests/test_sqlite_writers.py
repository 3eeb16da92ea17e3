"""SQLite's writers queue on the process's lock (chatproject.db.sqlite3), released however the
transaction ends."""

import threading
import time

import pytest
from django.contrib.auth import get_user_model
from django.db import connection, transaction

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
