"""Versioned datasets: staging, freezing, immutability, tags and diffs."""

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from evals import selectors, services
from evals.exceptions import NothingToFreeze, VersionImmutable
from evals.models import Dataset, DatasetRecord, DatasetStage, DatasetTag, DatasetVersion
from feedback.models import QueueItem
from tests.factories import FeedbackFactory, answered_turn

pytestmark = pytest.mark.django_db


def freeze(name="support", by=None, **kwargs):
    dataset = Dataset.objects.get(name=name)
    return services.dataset_version_create(dataset=dataset, created_by=by, **kwargs)


def test_staging_makes_the_dataset_and_refuses_a_turn_twice(corrected):
    turn = corrected()
    assert services.dataset_stage(dataset_name="support", turn=turn, reason="rule: thumbs")
    assert not services.dataset_stage(dataset_name="support", turn=turn, reason="again")
    stage = DatasetStage.objects.get()
    assert (stage.dataset.name, stage.turn, stage.reason) == ("support", turn, "rule: thumbs")


def test_a_record_holds_the_conversation_up_to_the_question_and_its_provenance(
    corrected, follow_up, staff
):
    first = corrected("How do I reset?", "Use the reset link.")
    second = follow_up(first, question="And if the link expired?")
    FeedbackFactory(turn=second, user=staff, is_correct=False, expected_response="Ask again.")
    second.trace_id = "tr-abc"
    second.save()
    item = QueueItem.objects.create(turn=second, reason="rule: thumbs down")
    services.dataset_stage(dataset_name="support", turn=second, reason="r")

    made = freeze(by=staff, note="first")

    record = made.version.records.get()
    assert record.inputs == [
        {"role": "user", "content": "How do I reset?"},
        {"role": "assistant", "content": "I don't know."},
        {"role": "user", "content": "And if the link expired?"},
    ]
    assert record.expectation == "Ask again."
    assert (record.turn, record.trace_id, record.corrected_by) == (second, "tr-abc", staff)
    assert record.queue_item == item
    assert record.corrected_at is not None
    assert record.key == f"turn:{second.pk}"
    assert (made.version.number, made.version.created_by, made.version.note) == (1, staff, "first")


def test_a_version_is_the_previous_one_plus_staged_corrected_turns(corrected):
    one, two = corrected("one?", "One."), corrected("two?", "Two.")
    services.dataset_stage(dataset_name="support", turn=one, reason="r")
    v1 = freeze().version
    services.dataset_stage(dataset_name="support", turn=two, reason="r")

    made = freeze()

    assert (made.version.number, made.added, made.kept) == (2, 1, 1)
    assert sorted(made.version.records.values_list("expectation", flat=True)) == ["One.", "Two."]
    assert list(v1.records.values_list("expectation", flat=True)) == ["One."]
    assert not DatasetStage.objects.exists()


def test_staged_turns_without_a_staff_correction_stay_staged(corrected):
    fixed = corrected()
    plain, _ = answered_turn()
    users_own, _ = answered_turn()
    # The user's own suggested answer is not a staff correction.
    FeedbackFactory(turn=users_own, is_correct=False, expected_response="My idea.")
    for turn in (fixed, plain, users_own):
        services.dataset_stage(dataset_name="support", turn=turn, reason="r")

    made = freeze()

    assert (made.version.record_count, made.waiting) == (1, 2)
    assert set(DatasetStage.objects.values_list("turn_id", flat=True)) == {plain.pk, users_own.pk}


def test_nothing_new_to_freeze_is_refused(corrected):
    turn = corrected()
    services.dataset_stage(dataset_name="support", turn=turn, reason="r")
    freeze()
    with pytest.raises(NothingToFreeze):
        freeze()
    # Staged again with the same correction: refused, and no longer staged (it is in v1).
    services.dataset_stage(dataset_name="support", turn=turn, reason="again")
    with pytest.raises(NothingToFreeze, match="support@v1 already holds"):
        freeze()
    assert DatasetVersion.objects.count() == 1
    assert not DatasetStage.objects.exists()


def test_a_frozen_version_and_its_records_refuse_every_change(corrected):
    services.dataset_stage(dataset_name="support", turn=corrected(), reason="r")
    version = freeze().version
    record = version.records.get()

    record.expectation = "Something else."
    with pytest.raises(VersionImmutable):
        record.save()
    with pytest.raises(VersionImmutable):
        DatasetRecord.objects.filter(pk=record.pk).update(expectation="x")
    with pytest.raises(VersionImmutable):
        record.delete()
    with pytest.raises(VersionImmutable):
        DatasetRecord.objects.all().delete()
    version.note = "rewritten"
    with pytest.raises(VersionImmutable):
        version.save()
    with pytest.raises(VersionImmutable):
        version.delete()
    assert DatasetRecord.objects.get().expectation == "Use the reset link."


def test_deleting_the_turn_keeps_the_record_and_clears_its_link(corrected):
    turn = corrected()
    services.dataset_stage(dataset_name="support", turn=turn, reason="r")
    freeze()
    turn.session.delete()
    record = DatasetRecord.objects.get()
    assert (record.turn, record.expectation) == (None, "Use the reset link.")


def test_tags_move_between_versions(corrected, staff):
    services.dataset_stage(dataset_name="support", turn=corrected("a?"), reason="r")
    v1 = freeze().version
    services.dataset_stage(dataset_name="support", turn=corrected("b?"), reason="r")
    v2 = freeze().version
    dataset = v1.dataset

    services.dataset_tag_move(dataset=dataset, name="prod", version=v1, moved_by=staff)
    assert selectors.version_resolve(ref="support@prod") == (v1, "prod")
    services.dataset_tag_move(dataset=dataset, name="prod", version=v2, moved_by=staff)

    assert selectors.version_resolve(ref="support@prod") == (v2, "prod")
    assert selectors.version_resolve(ref="support@v1") == (v1, "v1")
    assert selectors.version_resolve(ref="support") == (v2, "")
    assert DatasetTag.objects.get().moved_by == staff
    with pytest.raises(ValueError):
        services.dataset_tag_move(dataset=dataset, name="v3", version=v2, moved_by=staff)


def test_diff_shows_added_removed_and_changed_records(corrected, staff):
    keep, change, drop = corrected("keep?", "K."), corrected("change?", "Old."), corrected("drop?")
    for turn in (keep, change, drop):
        services.dataset_stage(dataset_name="support", turn=turn, reason="r")
    v1 = freeze().version
    new = corrected("new?", "N.")
    change.feedback.filter(user=staff).update(expected_response="New.")
    for turn in (new, change):
        services.dataset_stage(dataset_name="support", turn=turn, reason="r")
    v2 = freeze(remove_keys=[f"turn:{drop.pk}"]).version

    diff = selectors.dataset_diff(old=v1, new=v2)

    assert [r.turn for r in diff.added] == [new]
    assert [r.turn for r in diff.removed] == [drop]
    assert [(a.expectation, b.expectation) for a, b in diff.changed] == [("Old.", "New.")]
    assert diff.unchanged == 1


def test_the_command_adds_freezes_tags_lists_and_diffs(corrected, staff, capsys):
    one = corrected("one?", "One.")
    call_command(
        "datasets", "add", "support", "--turn", str(one.pk), "--freeze", "--by", "reviewer"
    )
    corrected("two?", "Two.")
    call_command("datasets", "add", "support", "--corrected", "--freeze")
    call_command("datasets", "tag", "support", "prod", "v2")
    call_command("datasets", "list")
    call_command("datasets", "diff", "support", "v1", "prod")
    out = capsys.readouterr().out

    assert "support@v1: 1 records (1 added, 0 changed, 0 removed, 0 kept)" in out
    assert "support@v2: 2 records (1 added, 0 changed, 0 removed, 1 kept)" in out
    assert "support@prod → support@v2" in out
    assert "tags prod→v2" in out
    assert "support@v1 → support@v2: 1 added, 0 removed, 0 changed expectation, 1 unchanged" in out
    assert "+ turn:" in out and "expect: Two." in out
    with pytest.raises(CommandError, match="no tag 'candidate'"):
        call_command("datasets", "diff", "support", "v1", "candidate")


def test_the_admin_diff_page_and_tag_move(admin_client, corrected, staff):
    services.dataset_stage(dataset_name="support", turn=corrected("a?", "A."), reason="r")
    v1 = freeze().version
    services.dataset_stage(dataset_name="support", turn=corrected("b?", "B."), reason="r")
    v2 = freeze().version

    page = admin_client.get(f"/admin/evals/dataset/{v1.dataset.pk}/diff/?old=1&new=2")
    assert page.status_code == 200
    html = page.content.decode()
    assert "1 added, 0 removed, 0 changed expectation, 1 unchanged" in html
    assert "B." in html

    response = admin_client.post(
        "/admin/evals/datasettag/add/",
        {"dataset": v1.dataset.pk, "name": "prod", "version": v1.pk},
    )
    assert response.status_code == 302
    tag = DatasetTag.objects.get()
    response = admin_client.post(
        f"/admin/evals/datasettag/{tag.pk}/change/",
        {"dataset": v1.dataset.pk, "name": "prod", "version": v2.pk},
    )
    assert response.status_code == 302
    assert DatasetTag.objects.get().version == v2
    # Frozen rows: no change or delete in the admin.
    record = v2.records.first()
    assert admin_client.post(f"/admin/evals/datasetrecord/{record.pk}/delete/").status_code == 403
    assert admin_client.get(f"/admin/evals/datasetversion/{v2.pk}/change/").status_code == 200


def test_add_to_dataset_on_the_turns_admin_stages_and_freezes(admin_client, corrected):
    fixed = corrected("a?", "A.")
    plain, _ = answered_turn()
    selected = [fixed.pk, plain.pk]
    page = admin_client.post(
        "/admin/chat/turn/", {"action": "add_to_dataset", "_selected_action": selected}
    )
    assert "1 of the 2 selected turn(s) have a staff correction" in page.content.decode()

    response = admin_client.post(
        "/admin/chat/turn/",
        {
            "action": "add_to_dataset",
            "_selected_action": selected,
            "dataset": "support",
            "freeze": "on",
            "apply": "1",
        },
        follow=True,
    )

    text = response.content.decode()
    assert "2 turn(s) staged for support (0 already were)" in text
    assert "support@v1 frozen with 1 records (1 added, 0 changed)" in text
    assert "1 staged turn(s) wait for a staff correction" in text
    assert list(DatasetStage.objects.values_list("turn_id", flat=True)) == [plain.pk]
