"""Frozen versions copied to MLflow's evaluation datasets (real MLflow store)."""

import mlflow
import mlflow.genai.datasets
import pytest
from django.core.management import call_command

from chat import tracing
from evals import services
from evals.models import Dataset, DatasetSync, EvaluationRun
from tests.factories import FeedbackFactory

pytestmark = pytest.mark.django_db


def in_mlflow(experiment_id: str, name: str):
    """The dataset of that name in this test's experiment (other tests' share the store)."""
    [found] = mlflow.genai.datasets.search_datasets(
        experiment_ids=[experiment_id], filter_string=f"name = '{name}'"
    )
    return found


def test_each_version_becomes_an_mlflow_dataset_with_its_records_and_tags(
    corrected, follow_up, staff, mlflow_experiment, capsys
):
    first = corrected("How do I reset?", "Use the reset link.")
    first.trace_id = "tr-1"
    first.save()
    services.dataset_stage(dataset_name="support", turn=first, reason="r")
    call_command("datasets", "freeze", "support")
    second = follow_up(first, question="And if it expired?")
    FeedbackFactory(turn=second, user=staff, is_correct=False, expected_response="Ask again.")
    services.dataset_stage(dataset_name="support", turn=second, reason="r")
    call_command("datasets", "freeze", "support")
    call_command("datasets", "tag", "support", "prod", "v1")
    call_command("datasets", "tag", "support", "candidate", "v2")

    call_command("datasets", "sync", "support")

    v1 = in_mlflow(mlflow_experiment, "support@v1")
    v2 = in_mlflow(mlflow_experiment, "support@v2")
    assert v1.tags["dataset"] == "support" and v1.tags["version"] == "1"
    assert v1.tags["tag.prod"] == "true" and "tag.candidate" not in v1.tags
    assert v2.tags["tag.candidate"] == "true" and v2.tags["version"] == "2"
    rows = v1.to_df()
    assert len(rows) == 1
    record = rows.iloc[0]
    assert record["inputs"] == {"messages": [{"role": "user", "content": "How do I reset?"}]}
    assert record["expectations"] == {"expected_response": "Use the reset link."}
    assert record["source"].source_data["trace_id"] == "tr-1"
    assert record["tags"]["record_key"] == f"turn:{first.pk}"
    assert sorted(r["expected_response"] for r in v2.to_df()["expectations"]) == [
        "Ask again.",
        "Use the reset link.",
    ]

    # The tag moves: the next sync moves it in MLflow too, and writes no record again.
    call_command("datasets", "tag", "support", "prod", "v2")
    call_command("datasets", "sync")
    out = capsys.readouterr().out
    assert "support@v1 → MLflow dataset 'support@v1': 1 records (written)" in out
    assert "support@v1 → MLflow dataset 'support@v1': 1 records (up to date)" in out
    assert "tag.prod" not in in_mlflow(mlflow_experiment, "support@v1").tags
    v2 = in_mlflow(mlflow_experiment, "support@v2")
    assert v2.tags["tag.prod"] == "true"
    assert len(v2.to_df()) == 2
    assert DatasetSync.objects.count() == 2
    assert Dataset.objects.get().versions.count() == 2


@pytest.mark.slow
def test_sync_and_evaluate_through_a_tracking_server(corrected, mlflow_server, settings, capsys):
    """Over MLflow's REST API, as production runs it (the dataset search, tags, the run)."""
    assert tracing.configure(tracking_uri=mlflow_server.url, experiment_name="evals-server")
    try:
        services.dataset_stage(dataset_name="served", turn=corrected(), reason="r")
        call_command("datasets", "freeze", "served")
        call_command("datasets", "tag", "served", "prod", "v1")
        call_command("datasets", "sync")
        call_command("datasets", "sync")
        call_command("evaluate", "--dataset", "served@prod")
        out = capsys.readouterr().out
        assert "served@v1 → MLflow dataset 'served@v1': 1 records (written)" in out
        assert "served@v1 → MLflow dataset 'served@v1': 1 records (up to date)" in out
        found = in_mlflow(tracing.experiment_id(), "served@v1")
        assert found.tags["tag.prod"] == "true"
        run = mlflow.MlflowClient().get_run(EvaluationRun.objects.get().mlflow_run_id)
        assert run.data.params["dataset_ref"] == "served@v1"
        assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["served@v1"]
    finally:
        tracing.configure(tracking_uri=settings.MLFLOW_TRACKING_URI)


def test_erasing_a_person_takes_their_records_out_of_frozen_versions_and_mlflow(
    corrected, follow_up, staff, mlflow_experiment
):
    """The one change a frozen version allows: an erased person's conversation must not live on
    in a dataset, in the database or in its MLflow copy."""
    from evals.models import DatasetVersion
    from privacy import services as privacy_services
    from privacy.models import Erasure

    theirs = corrected("My card is 4111 1111 1111 1111, why was it refused?", "Call the bank.")
    other = corrected("How do I reset?", "Use the reset link.")
    for turn in (theirs, other):
        services.dataset_stage(dataset_name="support", turn=turn, reason="r")
    call_command("datasets", "freeze", "support")
    call_command("datasets", "sync", "support")
    assert len(in_mlflow(mlflow_experiment, "support@v1").to_df()) == 2

    erasure = privacy_services.user_erase(user=theirs.user, via=Erasure.Via.COMMAND)
    assert erasure.rows_removed["dataset_records"] == 1
    assert erasure.eval_datasets == ["support@v1"]
    erasure = privacy_services.erasure_finish(erasure=erasure)

    assert erasure.state == Erasure.State.COMPLETED, erasure.last_error
    version = DatasetVersion.objects.get(dataset__name="support", number=1)
    assert (version.record_count, version.erased_records) == (1, 1)
    assert [r.expectation for r in version.records.all()] == ["Use the reset link."]
    assert not mlflow.genai.datasets.search_datasets(
        experiment_ids=[mlflow_experiment], filter_string="name = 'support@v1'"
    )
    # The next sync makes the copy again, without them.
    call_command("datasets", "sync", "support")
    rows = in_mlflow(mlflow_experiment, "support@v1").to_df()
    assert [m["messages"][0]["content"] for m in rows["inputs"]] == ["How do I reset?"]
