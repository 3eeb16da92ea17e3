"""The chat path under ASGI: what a turn holds while the model thinks, and what happens past
a process's limits. Requests go through Django's real ASGI handler (tests/asgi.py)."""

import asyncio
import gc
import logging
import threading
import time

import pytest
from asgiref.sync import SyncToAsync, async_to_sync
from django.core.exceptions import SynchronousOnlyOperation
from django.core.signals import request_started
from django.db import close_old_connections, connections, reset_queries
from django.db.backends.signals import connection_created

from chat.capacity import turn_slots
from chat.exceptions import Overloaded
from chat.llm import get_chat_model
from chat.models import Turn
from chatproject.asyncdb import UnitThreads, _RequestThread
from chatproject.middleware import skip_request_started_thread_hop
from tests.asgi import asgi_post, asgi_post_async

pytestmark = pytest.mark.django_db


def test_a_turn_past_the_cap_is_refused_at_once_with_a_503_and_retry_after(
    token, llm_server, settings
):
    gc.collect()  # responses of earlier tests give their slots back when collected
    before = turn_slots.in_flight
    settings.CHAT_MAX_TURNS_IN_FLIGHT = before + 1
    llm_server.mode = "slow"
    llm_server.slow_seconds = 0.5

    async def two_at_once():
        return await asyncio.gather(
            asgi_post_async("/api/chat/", {"message": "first"}, token=token),
            asgi_post_async("/api/chat/", {"message": "second"}, token=token),
        )

    responses = sorted(async_to_sync(two_at_once)(), key=lambda r: r.status)

    assert [r.status for r in responses] == [200, 503]
    refused = responses[1]
    assert refused.json()["error"] == "overloaded"
    assert refused.headers["retry-after"] == str(settings.CHAT_OVERLOAD_RETRY_AFTER_S)
    assert Turn.objects.count() == 1  # the refused turn stored nothing
    assert turn_slots.in_flight == before


def test_a_full_process_refuses_a_turn_at_the_door_before_django_runs(token, settings):
    gc.collect()
    settings.CHAT_MAX_TURNS_IN_FLIGHT = turn_slots.in_flight + 1
    held = turn_slots.take()  # the process is now full
    started = []
    request_started.connect(receiver := lambda **kwargs: started.append(1), weak=False)
    try:
        refused = asgi_post("/chat", {"message": "hello"}, token=token)
        other = asgi_post("/api/sessions/", {"title": "not a turn"}, token=token)
    finally:
        request_started.disconnect(receiver)
        held.release()

    assert refused.status == 503 and refused.json()["error"] == "overloaded"
    assert refused.headers["retry-after"] == str(settings.CHAT_OVERLOAD_RETRY_AFTER_S)
    assert len(started) == 1  # only the request that is no turn reached Django
    assert other.status != 503
    assert Turn.objects.count() == 0


def test_a_streamed_turn_counts_as_several_slots_at_the_door(token, settings):
    gc.collect()
    settings.CHAT_STREAM_TURN_WEIGHT = 3
    settings.CHAT_MAX_TURNS_IN_FLIGHT = turn_slots.in_flight + 3
    held = turn_slots.take()  # one slot taken: room for two JSON turns, not for a stream
    try:
        by_body = asgi_post("/api/chat/", {"message": "hi", "stream": True}, token=token)
        by_header = asgi_post(
            "/api/chat/", {"message": "hi"}, token=token, headers={"accept": "text/event-stream"}
        )
        json_turn = asgi_post("/api/chat/", {"message": "hi"}, token=token)
    finally:
        held.release()

    assert by_body.status == 503 and by_header.status == 503
    assert json_turn.status == 200 and json_turn.json()["response"]  # body replayed to Django
    assert Turn.objects.count() == 1


def test_a_turn_arriving_while_the_event_loop_runs_late_is_refused_at_the_door(token, settings):
    gc.collect()
    settings.CHAT_MAX_LOOP_LAG_MS = 100
    before = turn_slots.in_flight

    async def scenario():
        first = await asgi_post_async("/api/chat/", {"message": "on time"}, token=token)
        time.sleep(0.3)  # the event loop's thread busy: what is due on it waits
        late = await asgi_post_async("/api/chat/", {"message": "late"}, token=token)
        other = await asgi_post_async("/api/sessions/", {"title": "not a turn"}, token=token)
        await asyncio.sleep(0.2)  # the loop on time again
        again = await asgi_post_async("/api/chat/", {"message": "on time again"}, token=token)
        return first, late, other, again

    try:
        first, late, other, again = async_to_sync(scenario)()
    finally:
        turn_slots.adapted_cap = None  # what the late tick cut is this test's alone

    assert first.status == 200 and again.status == 200
    assert late.status == 503 and late.json()["error"] == "overloaded"
    assert late.headers["retry-after"] == str(settings.CHAT_OVERLOAD_RETRY_AFTER_S)
    assert other.status == 201  # only chat turns are shed
    assert Turn.objects.count() == 2  # the refused turn stored nothing
    assert turn_slots.in_flight == before


def test_the_cap_is_cut_while_the_loop_runs_late_and_grows_back_while_it_is_on_time(settings):
    from chat.capacity import TurnSlots

    settings.CHAT_MAX_TURNS_IN_FLIGHT = 100
    settings.CHAT_STREAM_TURN_WEIGHT = 4
    settings.CHAT_MAX_LOOP_LAG_MS = 100
    slots = TurnSlots()
    held = [slots.take(streamed=True) for _ in range(20)]  # 80 slots in flight
    assert slots.cap() == 100

    slots.adapt(lag_s=0.3, now=10.0)
    assert slots.cap() == 60  # three quarters of what is in flight
    slots.adapt(lag_s=0.3, now=10.2)
    assert slots.cap() == 60  # one cut per CUT_EVERY_S: the first has not shown yet
    with pytest.raises(Overloaded):
        slots.take()
    slots.adapt(lag_s=0.3, now=10.6)
    assert slots.cap() == 45

    for slot in held[:15]:
        slot.release()  # 20 slots in flight
    slots.adapt(lag_s=0.01, now=10.65)
    assert slots.cap() == 49  # on time: one streamed turn more
    assert slots.take(streamed=True).weight == 4
    for n in range(20):
        slots.adapt(lag_s=0.01, now=10.7 + n * 0.05)
    assert slots.cap() == 100  # never past the configured cap

    settings.CHAT_MAX_LOOP_LAG_MS = 0
    slots.adapt(lag_s=5.0, now=20.0)
    assert slots.cap() == 100  # 0: the configured cap alone


def test_with_no_lag_limit_a_late_event_loop_still_answers(token, settings):
    settings.CHAT_MAX_LOOP_LAG_MS = 0

    async def scenario():
        await asgi_post_async("/api/chat/", {"message": "first"}, token=token)
        time.sleep(0.3)
        return await asgi_post_async("/api/chat/", {"message": "late"}, token=token)

    assert async_to_sync(scenario)().status == 200


def test_a_model_that_stops_answering_frees_the_turns_slot_with_a_504(token, llm_server, settings):
    llm_server.mode = "slow"
    llm_server.slow_seconds = 2.0
    settings.LLM_TIMEOUT_S = 0.2
    gc.collect()
    before = turn_slots.in_flight

    json_turn = asgi_post("/api/chat/", {"message": "hi"}, token=token)
    streamed = asgi_post("/api/chat/", {"message": "hi", "stream": True}, token=token)

    assert json_turn.status == 504 and json_turn.json()["error"] == "llm_timeout"
    assert streamed.events()[-1][1]["error"] == "llm_timeout"
    assert turn_slots.in_flight == before


def test_a_stream_that_stalls_midway_frees_its_slot_after_the_timeout(token, llm_server, settings):
    llm_server.mode = "stalled_stream"
    llm_server.slow_seconds = 3.0
    settings.LLM_TIMEOUT_S = 0.3
    gc.collect()
    before = turn_slots.in_flight

    started = time.monotonic()
    streamed = asgi_post("/api/chat/", {"message": "one two three", "stream": True}, token=token)

    assert time.monotonic() - started < 2.0
    events = streamed.events()
    assert [d["text"] for k, d in events if k == "token"] == ["echo[2]: ", "one "]
    assert events[-1][1]["error"] == "llm_timeout"
    assert Turn.objects.get().status == Turn.Status.FAILED
    assert turn_slots.in_flight == before


def test_a_served_stream_starts_its_model_call_before_its_start_event_goes_out(
    token, llm_server, get_trace
):
    """The model thinks while the response goes out through the middleware: the turn is run to
    its start event in the view, its model call started (its llm span open) before that."""
    llm_server.mode = "slow"
    llm_server.slow_seconds = 0.2

    response = asgi_post("/api/chat/", {"message": "be quick", "stream": True}, token=token)

    events = response.events()
    assert [kind for kind, _ in events][:1] == ["start"] and events[-1][0] == "done"
    start_sent_ns = response.body_sent_ns[0]  # the start event is the first body message
    spans = {s.name: s for s in get_trace(events[0][1]["trace_id"]).data.spans}
    assert spans["llm"].start_time_ns < start_sent_ns
    assert spans["chat_turn"].start_time_ns <= spans["llm"].start_time_ns


def test_a_streamed_turn_whose_client_left_before_its_response_went_out_is_cancelled(
    token, llm_server, settings
):
    """Run to its start event in the view, a turn whose response is never sent (the client
    left first) is still closed: cancelled, its model call stopped, its slot given back."""
    llm_server.mode = "slow"
    llm_server.slow_seconds = 3.0
    settings.LLM_TIMEOUT_S = 10.0
    gc.collect()
    before = turn_slots.in_flight

    from chat import apis

    async def run() -> None:
        # The view's response dropped unsent, as when Django's request task is cancelled
        # between the view and sending its response.
        original = apis.event_stream_response
        dropped = []

        def dropping(events, **kwargs):
            response = original(events, **kwargs)
            dropped.append(response.status_code)
            raise asyncio.CancelledError

        apis.event_stream_response = dropping
        try:
            await asgi_post_async(
                "/api/chat/", {"message": "never mind", "stream": True}, token=token
            )
        except asyncio.CancelledError:
            pass
        finally:
            apis.event_stream_response = original
        assert dropped == [200]
        for _ in range(50):  # the generator's close is scheduled by the event loop
            gc.collect()
            await asyncio.sleep(0.02)
            if turn_slots.in_flight == before:
                break

    started = time.monotonic()
    async_to_sync(run)()
    assert time.monotonic() - started < llm_server.slow_seconds / 2
    assert Turn.objects.get().status == Turn.Status.CANCELLED
    assert turn_slots.in_flight == before


def test_a_client_that_leaves_while_the_model_thinks_cancels_its_turn_at_once(
    token, llm_server, settings
):
    llm_server.mode = "slow"
    llm_server.slow_seconds = 3.0
    settings.LLM_TIMEOUT_S = 10.0
    gc.collect()
    before = turn_slots.in_flight

    started = time.monotonic()
    asgi_post(
        "/api/chat/",
        {"message": "never mind"},
        token=token,
        leave_after_s=0.2,
        headers={"x-request-id": "gone"},
    )
    waited = time.monotonic() - started

    assert waited < llm_server.slow_seconds / 2  # not until the model would have answered
    turn = Turn.objects.get()
    assert turn.status == Turn.Status.CANCELLED and turn.partial_response == ""
    assert turn_slots.in_flight == before


@pytest.mark.django_db(transaction=True)
def test_no_database_connection_is_held_while_the_model_thinks(token, llm_server):
    # The ORM units run in this thread (async_to_sync): its connection is the turn's.
    connection = connections["default"]
    open_while_thinking = []
    llm_server.on_request = lambda: open_while_thinking.append(connection.connection is not None)

    response = asgi_post("/api/chat/", {"message": "one"}, token=token)
    streamed = asgi_post("/api/chat/", {"message": "two", "stream": True}, token=token)

    assert response.status == 200 and streamed.events()[-1][0] == "done"
    assert open_while_thinking == [False, False]


def test_the_chat_path_runs_no_middleware_adapted_to_sync(token, caplog, settings):
    settings.DEBUG = True  # Django says which middleware it adapted only in debug mode
    caplog.set_level(logging.DEBUG, logger="django.request")
    response = asgi_post("/api/chat/", {"message": "hi"}, token=token)
    seed = asgi_post("/chat", {"message": "hi"}, token=token)

    assert response.status == 200 and seed.status == 200
    adapted = [r.getMessage() for r in caplog.records if "adapted for middleware" in r.getMessage()]
    assert adapted == []


def test_no_middleware_hook_hops_to_a_thread_on_a_chat_turn(token, monkeypatch):
    hops = []
    original = SyncToAsync.__init__

    def spy(self, func, *args, **kwargs):
        hops.append(getattr(func, "__qualname__", repr(func)))
        original(self, func, *args, **kwargs)

    monkeypatch.setattr(SyncToAsync, "__init__", spy)
    response = asgi_post("/api/chat/", {"message": "hi"}, token=token)

    assert response.status == 200
    hooks = ("process_request", "process_view", "process_response")
    assert [hop for hop in hops if hop.endswith(hooks)] == []
    assert hops  # the turn's own ORM units still run in a thread


def test_the_llm_span_times_the_awaited_model_call(api, llm_server, get_trace):
    llm_server.mode = "slow"
    llm_server.slow_seconds = 0.3

    reply = api.post("/api/chat/", {"message": "time me"}, format="json").json()

    spans = {s.name: s for s in get_trace(reply["trace_id"]).data.spans}
    llm, root = spans["llm"], spans["chat_turn"]
    assert llm.end_time_ns - llm.start_time_ns >= 0.3e9
    assert root.start_time_ns <= llm.start_time_ns and llm.end_time_ns <= root.end_time_ns


@pytest.mark.django_db(transaction=True)
def test_served_turns_run_their_orm_units_in_the_event_loops_own_thread(
    token, llm_server, settings, monkeypatch
):
    # As under uvicorn: an event loop with no sync thread above it (not async_to_sync).
    assert settings.DB_UNITS_IN_LOOP  # the default
    # The browser tests' conftest turns Django's guard off for this process; a server has it on.
    monkeypatch.delenv("DJANGO_ALLOW_ASYNC_UNSAFE", raising=False)
    units = _submitted_to(UnitThreads, monkeypatch)
    made = []  # (thread, connection) of every connection a unit opened
    connection_created.connect(
        created := lambda sender, connection, **kwargs: made.append(
            (threading.get_ident(), connection)
        ),
        weak=False,
    )

    def idle() -> bool:
        connection = connections["default"]  # the loop's thread's: the test's own thread
        if connection.vendor == "sqlite":  # kept open between units, out of any transaction
            return not connection.in_atomic_block and not connection._holds_write_lock
        return connection.connection is None  # back in psycopg's pool

    idle_while_thinking = []
    llm_server.on_request = lambda: idle_while_thinking.append(idle())
    connections.close_all()  # the units open what they use
    try:

        async def turns():
            answered = [
                await asgi_post_async("/api/chat/", {"message": "one"}, token=token),
                await asgi_post_async("/api/chat/", {"message": "2", "stream": True}, token=token),
            ]
            session = answered[0].json()["session_id"]
            answered.append(
                await asgi_post_async(
                    "/api/chat/",
                    {"message": "three"},
                    token=token,
                    headers={"x-session-id": session},
                )
            )
            await get_chat_model().aclose()
            # Django's guard is back between units: the ORM refuses a coroutine's direct call.
            with pytest.raises(SynchronousOnlyOperation):
                Turn.objects.count()
            return answered, threading.get_ident()

        responses, loop_thread = asyncio.run(turns())
    finally:
        connection_created.disconnect(created)

    assert [r.status for r in responses] == [200, 200, 200]
    assert responses[1].events()[-1][0] == "done"
    assert Turn.objects.filter(status=Turn.Status.COMPLETED).count() == 3
    assert units == []  # no unit thread was woken
    assert made and {thread for thread, _ in made} == {loop_thread}
    assert idle_while_thinking == [True, True, True]
    if connections["default"].vendor == "sqlite":
        assert len(made) == 1  # six units, one connection, kept open between them


@pytest.mark.django_db(transaction=True)
def test_served_turns_run_their_orm_units_on_the_shared_unit_threads(token, llm_server, settings):
    # As under uvicorn: an event loop with no sync thread above it (not async_to_sync).
    settings.DB_UNITS_IN_LOOP = False
    settings.DB_UNIT_THREADS = 2
    made = []  # (thread, connection) of every connection a unit opened

    def created(sender, connection, **kwargs):
        made.append((threading.current_thread().name, connection))

    def idle(connection) -> bool:
        if connection.vendor == "sqlite":  # the unit thread's own, kept open between units
            return not connection.in_atomic_block
        return connection.connection is None  # back in psycopg's pool

    idle_while_thinking = []
    llm_server.on_request = lambda: idle_while_thinking.append(all(idle(c) for _, c in made))
    connection_created.connect(created)
    # The request's own sync work (its signals' receivers): a long-lived thread, not a new one.
    settings.WEB_REQUEST_THREADS = 2
    signalled = []
    request_started.connect(
        spy := lambda **kwargs: signalled.append(threading.current_thread().name), weak=False
    )
    try:

        async def three_turns():  # one after another: no other turn's unit runs meanwhile
            answered = [
                await asgi_post_async("/api/chat/", {"message": "one"}, token=token),
                await asgi_post_async("/api/chat/", {"message": "two"}, token=token),
                await asgi_post_async("/api/chat/", {"message": "3", "stream": True}, token=token),
            ]
            await get_chat_model().aclose()  # the loop's kept client, before the loop closes
            return answered

        responses = asyncio.run(three_turns())
    finally:
        connection_created.disconnect(created)
        request_started.disconnect(spy)

    assert [r.status for r in responses] == [200, 200, 200]
    assert responses[2].events()[-1][0] == "done"
    assert Turn.objects.filter(status=Turn.Status.COMPLETED).count() == 3
    assert made and {name.split("_")[0] for name, _ in made} == {"db-unit"}
    assert idle_while_thinking == [True, True, True]
    assert len(signalled) == 3 and {name.split("_")[0] for name in signalled} <= {
        "request-0",
        "request-1",
    }
    if connections["default"].vendor == "sqlite":
        # Twelve units, two threads: each opened its connection once.
        assert len(made) <= settings.DB_UNIT_THREADS


@pytest.mark.django_db(transaction=True)
def test_a_served_turn_claims_itself_in_the_unit_that_authenticates_it(
    token, llm_server, settings, monkeypatch
):
    # Under load each unit waits for a free unit thread and then for the event loop (130-330
    # ms a hop at 512 JSON users): authentication and the claim share one, and the answer and
    # its trace row are the other. (Counted on the unit threads; in the loop's thread, the default,
    # the units are the same.)
    settings.DB_UNITS_IN_LOOP = False
    settings.DB_UNIT_THREADS = 2
    units = _submitted_to(UnitThreads, monkeypatch)

    async def turns():
        counted = []
        for body in ({"message": "one"}, {"message": "two", "stream": True}):
            before = len(units)
            response = await asgi_post_async("/api/chat/", body, token=token)
            counted.append((response.status, len(units) - before))
        before = len(units)
        refused = await asgi_post_async("/api/chat/", {"message": ""}, token=token)
        counted.append((refused.status, len(units) - before))
        await get_chat_model().aclose()
        return counted

    assert asyncio.run(turns()) == [(200, 2), (200, 2), (400, 1)]
    assert Turn.objects.filter(status=Turn.Status.COMPLETED).count() == 2


@pytest.mark.django_db(transaction=True)
def test_a_served_turn_runs_nothing_on_its_request_thread_unless_its_request_did(
    token, llm_server, settings, monkeypatch
):
    # As in a served worker (ChatWorker.load_wsgi): Django's request_started receivers dropped,
    # the response rendered and closed in the event loop. Under load each hop to a request's
    # thread queued for one of WEB_REQUEST_THREADS: 510 ms on average at request start and 270
    # ms for closing the response (bench/concurrency.py, 512 JSON users on PostgreSQL).
    settings.WEB_REQUEST_THREADS = 2
    submitted = _submitted_to(_RequestThread, monkeypatch)
    skip_request_started_thread_hop()
    try:

        async def turns():
            answered = [
                await asgi_post_async("/api/chat/", {"message": "one"}, token=token),
                await asgi_post_async("/api/chat/", {"message": "2", "stream": True}, token=token),
            ]
            untouched = len(submitted)
            # A request that does run something on its thread (here a sync receiver of its
            # start) is closed there too, so Django's tidy-ups reach what it left.
            request_started.connect(on_thread := lambda **kwargs: None, weak=False)
            try:
                answered.append(await asgi_post_async("/api/chat/", {"message": "3"}, token=token))
            finally:
                request_started.disconnect(on_thread)
            await get_chat_model().aclose()
            return answered, untouched

        responses, untouched = asyncio.run(turns())
    finally:
        request_started.connect(reset_queries)
        request_started.connect(close_old_connections)

    assert [r.status for r in responses] == [200, 200, 200]
    assert responses[1].events()[-1][0] == "done"
    assert untouched == 0
    assert len(submitted) == 2  # the third request: its receiver, then closing its response


def _submitted_to(executor_class, monkeypatch) -> list:
    """The functions submitted to any `executor_class` from now on, in order."""
    submitted = []
    submit = executor_class.submit

    def spy(self, fn, /, *args, **kwargs):
        submitted.append(fn)
        return submit(self, fn, *args, **kwargs)

    monkeypatch.setattr(executor_class, "submit", spy)
    return submitted
