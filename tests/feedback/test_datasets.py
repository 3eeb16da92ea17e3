"""Corrected production traces exported as an MLflow evaluation dataset."""

import mlflow.genai.datasets
import pytest
from django.core.management import call_command

from chat.models import Turn

pytestmark = pytest.mark.django_db


def test_exporting_the_eval_dataset_twice_adds_no_duplicates(world, capsys):

    call_command("export_eval_dataset", "--name", "corrections")
    call_command("export_eval_dataset", "--name", "corrections")
    out = capsys.readouterr().out
    assert out.count("1 corrected traces merged, 1 records in the dataset") == 2
    records = mlflow.genai.datasets.get_dataset(name="corrections").to_df()
    assert len(records) == 1
    record = records.iloc[0]
    assert record["inputs"]["messages"] == [{"role": "user", "content": "alice one"}]
    assert record["expectations"] == {"expected_response": "The right answer"}


def test_the_admin_action_exports_selected_corrected_turns(admin_client, world, settings):

    settings.EVAL_DATASET_NAME = "from-admin"
    response = admin_client.post(
        "/admin/chat/turn/",
        {
            "action": "export_to_eval_dataset",
            "_selected_action": list(Turn.objects.values_list("pk", flat=True)),
        },
        follow=True,
    )
    assert "1 corrected trace(s) merged" in response.content.decode()
    assert len(mlflow.genai.datasets.get_dataset(name="from-admin").to_df()) == 1
