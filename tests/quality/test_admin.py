import pytest
from django.contrib.auth.models import Permission
from django.test import Client

from feedback.models import QueueItem
from quality.models import Rule, WebhookDelivery
from tests.factories import FeedbackFactory, UserFactory

pytestmark = pytest.mark.django_db

RULES = "/admin/quality/rule/"


def _staff(*perms: str) -> Client:
    user = UserFactory(is_staff=True)
    for perm in perms:
        app, codename = perm.split(".")
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label=app, codename=codename)
        )
    client = Client()
    client.force_login(user)
    return client


def _rule_form(**overrides) -> dict:
    return {
        "name": "Disliked answers",
        "enabled": "on",
        "thumbs_down": "on",
        "max_rating": "2",
        "sample_rate": "1.0",
        "enqueue": "on",
        "webhook_secret": "s3cret",
        "matches-TOTAL_FORMS": "0",
        "matches-INITIAL_FORMS": "0",
        "matches-MIN_NUM_FORMS": "0",
        "matches-MAX_NUM_FORMS": "0",
        **overrides,
    }


def test_staff_with_the_permission_add_a_rule_in_the_admin():
    client = _staff("quality.manage_rules")

    response = client.post(RULES + "add/", _rule_form())

    assert response.status_code == 302, response.content.decode()[:2000]
    rule = Rule.objects.get()
    assert (rule.name, rule.thumbs_down, rule.max_rating) == ("Disliked answers", True, 2)
    assert rule.created_by is not None


def test_staff_without_the_permission_cannot_add_or_change_rules():
    rule = Rule.objects.create(name="Existing", thumbs_down=True, webhook_secret="hidden-key")
    viewer = _staff("quality.view_rule")
    nobody = _staff()

    assert viewer.post(RULES + "add/", _rule_form()).status_code == 403
    assert viewer.post(f"{RULES}{rule.pk}/change/", _rule_form(name="Hijacked")).status_code == 403
    assert viewer.post(f"{RULES}{rule.pk}/delete/", {"post": "yes"}).status_code == 403
    page = viewer.get(f"{RULES}{rule.pk}/change/")
    assert page.status_code == 200 and "hidden-key" not in page.content.decode()
    assert nobody.get(RULES).status_code == 403
    assert Rule.objects.get().name == "Existing" and Rule.objects.count() == 1


def test_apply_to_past_turns_action_queues_matching_turns(receiver):
    past = [FeedbackFactory(is_correct=False).turn for _ in range(3)]
    FeedbackFactory(is_correct=True)
    rule = Rule.objects.create(name="Disliked", thumbs_down=True, webhook_url=receiver.url)
    client = _staff("quality.manage_rules", "quality.view_rule")

    response = client.post(
        RULES, {"action": "apply_to_past_turns", "_selected_action": [rule.pk]}, follow=True
    )

    assert "3 past turn(s) acted on" in response.content.decode()
    assert set(QueueItem.objects.values_list("turn_id", flat=True)) == {t.pk for t in past}
    assert WebhookDelivery.objects.filter(rule=rule).count() == 3


def test_webhook_deliveries_are_listed_read_only(admin_client, receiver):
    rule = Rule.objects.create(name="Hooked", thumbs_down=True, webhook_url=receiver.url)
    from quality import services

    services.rule_act(rule=rule, turn=FeedbackFactory(is_correct=False).turn)
    delivery = WebhookDelivery.objects.get()

    listing = admin_client.get("/admin/quality/webhookdelivery/").content.decode()
    detail = admin_client.get(f"/admin/quality/webhookdelivery/{delivery.pk}/change/")

    assert "rule Hooked" in listing and receiver.url in listing
    assert detail.status_code == 200
    assert admin_client.get("/admin/quality/webhookdelivery/add/").status_code == 403
