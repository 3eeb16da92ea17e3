"""The gunicorn worker's process settings (chatproject/workers.py)."""

import gc

import pytest

from chatproject.workers import _tune_gc


@pytest.fixture
def gc_state():
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_a_gc_threshold_freezes_what_is_loaded_and_collects_the_young_less_often(gc_state):
    older = gc.get_threshold()[1:]
    _tune_gc(50_000)

    assert gc.get_threshold() == (50_000, *older)
    assert gc.get_freeze_count() > 10_000  # Django, DRF and the app, out of the collector's way


def test_no_gc_threshold_leaves_python_s_collector_alone(gc_state):
    before = gc.get_threshold()
    _tune_gc(0)

    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
