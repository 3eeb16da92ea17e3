import pytest

from tests.factories import FeedbackFactory, UserFactory, answered_turn


@pytest.fixture
def staff(db):
    return UserFactory(is_staff=True, username="reviewer")


@pytest.fixture
def corrected(staff):
    """A turn (question + answer) corrected by staff; returns the turn."""

    def make(question="How do I reset?", expected="Use the reset link.", *, by=None, **fields):
        turn, _ = answered_turn(question=question, answer="I don't know.", **fields)
        FeedbackFactory(turn=turn, user=by or staff, is_correct=False, expected_response=expected)
        return turn

    return make


@pytest.fixture
def follow_up():
    """A second turn in the conversation of `turn`, answered."""

    def make(turn, question="And then?", answer="Then log in."):
        later, _ = answered_turn(question=question, answer=answer, session=turn.session)
        return later

    return make
