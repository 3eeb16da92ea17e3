"""The unit threads (chatproject.asyncdb.UnitThreads): the last to go idle takes the next unit.

A pool that woke any idle thread rotated a quiet process's units over all its threads, and on
SQLite over all their connections, each of which empties its page cache when another one wrote:
a worker that had once been busy then spent ~0.4 ms more CPU per turn than a fresh one
(bench/load.py's traced vs untraced comparison). These tests need no database.
"""

import threading
import time

import pytest

from chatproject.asyncdb import UnitThreads


def name() -> str:
    return threading.current_thread().name


@pytest.fixture
def pool():
    units = UnitThreads(4, thread_name_prefix="test-unit", initializer=None)
    yield units
    units.shutdown(wait=True)


def test_units_one_after_another_run_on_one_thread_even_after_all_threads_were_busy(pool):
    release = threading.Event()
    busy = [pool.submit(lambda: (release.wait(5), name())[1]) for _ in range(4)]
    time.sleep(0.05)
    release.set()
    assert len({future.result(5) for future in busy}) == 4  # four threads made

    time.sleep(0.05)  # all four idle now; the last to finish went idle last
    quiet = [pool.submit(name).result(5) for _ in range(20)]
    assert len(set(quiet)) == 1


def test_the_thread_that_went_idle_last_takes_the_next_unit(pool):
    gates = [threading.Event() for _ in range(3)]
    running = [pool.submit(lambda gate=gate: (gate.wait(5), name())[1]) for gate in gates]
    time.sleep(0.05)
    finished = []
    for gate, future in zip(gates, running, strict=True):  # they finish in this order
        gate.set()
        finished.append(future.result(5))
        time.sleep(0.02)
    assert pool.submit(name).result(5) == finished[-1]


def test_past_max_workers_units_wait_their_turn_in_order(pool):
    release = threading.Event()
    blockers = [pool.submit(release.wait, 5) for _ in range(4)]
    order = []
    queued = [pool.submit(order.append, n) for n in range(10)]
    time.sleep(0.05)
    assert order == [] and not any(f.done() for f in queued)
    release.set()
    for future in blockers + queued:
        future.result(5)
    assert order == list(range(10))
    assert len({t.name for t in threading.enumerate() if t.name.startswith("test-unit")}) <= 4


def test_a_units_exception_reaches_its_caller_and_the_thread_goes_on(pool):
    def boom():
        raise ValueError("unit failed")

    with pytest.raises(ValueError, match="unit failed"):
        pool.submit(boom).result(5)
    assert pool.submit(lambda: 41 + 1).result(5) == 42


def test_shutdown_stops_idle_threads_and_refuses_new_units():
    units = UnitThreads(2, thread_name_prefix="test-stop")
    assert units.submit(name).result(5).startswith("test-stop_")
    units.shutdown(wait=True)
    assert not [t for t in threading.enumerate() if t.name.startswith("test-stop")]
    with pytest.raises(RuntimeError):
        units.submit(name)


def test_the_initializer_runs_once_in_each_thread():
    seen = []
    units = UnitThreads(2, thread_name_prefix="test-init", initializer=lambda: seen.append(name()))
    release = threading.Event()
    futures = [units.submit(release.wait, 5) for _ in range(2)]
    time.sleep(0.05)
    release.set()
    [f.result(5) for f in futures]
    [units.submit(name).result(5) for _ in range(5)]
    units.shutdown(wait=True)
    assert sorted(seen) == ["test-init_0", "test-init_1"]
