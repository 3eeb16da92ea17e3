"""`manage.py evaluate`: the assistant as configured over a dataset version, scored and gated."""

import json
from pathlib import Path

import mlflow
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from chat.llm import ChatMessage, LocalResponder
from evals import scoring, services
from evals.models import Dataset, EvaluationResult, EvaluationRun

pytestmark = pytest.mark.django_db

RIGHT = "Refunds take five working days."


@pytest.fixture
def prod(corrected):
    """support@v1, tagged prod: one question whose correction is RIGHT."""
    turn = corrected("How long does a refund take?", RIGHT)
    services.dataset_stage(dataset_name="support", turn=turn, reason="r")
    call_command("datasets", "freeze", "support")
    call_command("datasets", "tag", "support", "prod", "v1")
    return Dataset.objects.get().versions.get()


def evaluate(*args):
    call_command("evaluate", "--dataset", "support@prod", *args)


def test_a_changed_prompt_fixes_the_answer_and_the_old_one_is_a_regression(
    prod, llm_server, mlflow_experiment, settings, capsys
):
    llm_server.replies_by_system_word = {"refund-policy": RIGHT, "strict grader": "FAIL vague"}
    call_command("datasets", "sync")
    settings.APP_VERSION = "2.0.0"

    evaluate()  # the configured prompt: the model echoes, which is not the correction
    out = capsys.readouterr().out
    assert "evaluating support@v1 (support@prod): 1 records" in out
    assert "evaluation run" in out and ": 0/1 passed (0.0%)" in out
    assert "first completed run on support@v1" in out
    assert "LLM judge: 0/1 judged right" in out

    evaluate("--system-prompt", "Answer from the refund-policy page.")
    out = capsys.readouterr().out
    assert ": 1/1 passed (100.0%)" in out
    assert "1 newly passing" in out and "no regression" in out

    with pytest.raises(CommandError, match="regression on support@v1: 1 record") as raised:
        evaluate()
    assert raised.value.returncode == 1
    assert "- turn:" in capsys.readouterr().out

    first, fixed, regressed = EvaluationRun.objects.order_by("id")
    assert [r.passed for r in (first, fixed, regressed)] == [0, 1, 0]
    assert (regressed.previous, regressed.regression, regressed.newly_failing) == (fixed, True, 1)
    assert fixed.system_prompt == "Answer from the refund-policy page."
    assert fixed.system_prompt_sha256 != first.system_prompt_sha256
    result = EvaluationResult.objects.get(run=fixed)
    assert (result.output, result.passed, result.exact, result.score) == (RIGHT, True, True, 1.0)
    assert result.judge_passed is False  # the judge said FAIL; the code scorer decides
    # The model saw the configured system prompt, then the record's conversation.
    asked = [r["messages"] for r in llm_server.chat_requests() if "strict" not in str(r)]
    assert asked[0] == [
        {"role": "system", "content": settings.LLM_SYSTEM_PROMPT},
        {"role": "user", "content": "How long does a refund take?"},
    ]

    runs = mlflow.search_runs(experiment_ids=[mlflow_experiment], output_format="list")
    by_id = {r.info.run_id: r for r in runs}
    logged = by_id[fixed.mlflow_run_id]
    assert logged.data.params["dataset"] == "support"
    assert logged.data.params["dataset_version"] == "1"
    assert logged.data.params["asked_as"] == "prod"
    assert logged.data.params["app_version"] == "2.0.0"
    assert logged.data.params["system_prompt_sha256"] == fixed.system_prompt_sha256
    assert logged.data.metrics["pass_rate"] == 1.0
    assert logged.data.tags["chat.evaluation_run"] == str(fixed.pk)
    assert [d.dataset.name for d in logged.inputs.dataset_inputs] == ["support@v1"]
    assert by_id[regressed.mlflow_run_id].data.tags["regression"] == "true"
    path = mlflow.MlflowClient().download_artifacts(fixed.mlflow_run_id, "eval_results.json")
    table = json.loads(Path(path).read_text())
    assert table["columns"][:4] == ["record_key", "question", "expected", "output"]
    assert table["data"][0][3] == RIGHT


def test_the_judge_can_decide(prod, llm_server, mlflow_experiment, capsys):
    llm_server.replies_by_system_word = {"strict grader": "PASS: the same facts"}
    evaluate("--decide-by", "judge")
    assert ": 1/1 passed" in capsys.readouterr().out
    assert EvaluationResult.objects.get().judge_passed is True


def test_offline_with_the_local_responder_and_no_judge(corrected, mlflow_experiment, capsys):
    question = "Where is my parcel?"
    echoed = LocalResponder.reply_text([ChatMessage("user", question)])
    for turn in (corrected(question, echoed), corrected("Other?", "Something else entirely.")):
        services.dataset_stage(dataset_name="offline", turn=turn, reason="r")
    call_command("datasets", "freeze", "offline")

    call_command("evaluate", "--dataset", "offline@v1")

    out = capsys.readouterr().out
    assert "LLM judge skipped: no model configured" in out
    assert "model local-responder" in out
    assert ": 1/2 passed (50.0%)" in out
    assert "MLflow run " in out
    with pytest.raises(CommandError, match="needs the LLM judge"):
        call_command("evaluate", "--dataset", "offline", "--decide-by", "judge")


def test_a_model_that_answers_nothing_fails_the_run_without_becoming_the_baseline(
    prod, llm_server, mlflow_experiment
):
    llm_server.mode = "error"
    with pytest.raises(CommandError, match="every answer failed") as raised:
        evaluate("--no-judge")
    assert raised.value.returncode == 2
    failed = EvaluationRun.objects.get()
    assert failed.state == EvaluationRun.State.FAILED
    assert "HTTP 500" in failed.results.get().error
    llm_server.mode = "ok"
    evaluate("--no-judge")
    assert EvaluationRun.objects.order_by("-id").first().previous is None


def test_runs_compare_only_with_runs_scored_the_same_way(prod, mlflow_experiment, capsys):
    evaluate("--threshold", "0")  # every answer "matches"
    evaluate()  # fails, but against no baseline: no regression
    # (split on the run's own line: an MLflow run id may start with "2" too)
    assert (
        "first completed run on support@v1"
        in capsys.readouterr().out.split("evaluation run 2:")[-1]
    )
    evaluate("--threshold", "0")
    loose, strict, again = EvaluationRun.objects.order_by("id")
    assert (loose.passed, strict.passed, again.passed) == (1, 0, 1)
    assert (strict.previous, strict.regression, again.previous) == (None, False, loose)


def test_min_pass_rate_gates_too(prod, mlflow_experiment):
    with pytest.raises(CommandError, match="below --min-pass-rate") as raised:
        evaluate("--min-pass-rate", "0.9")
    assert raised.value.returncode == 1


@pytest.mark.parametrize(
    ("output", "expected", "passed"),
    [
        ("Refunds take five working days!", RIGHT, True),  # punctuation, case
        ("refunds take FIVE working days", RIGHT, True),
        ("Refunds usually take five working days.", RIGHT, True),  # F1 0.91
        ("Refunds take ten days.", RIGHT, False),
        ("", RIGHT, False),
    ],
)
def test_the_code_scorer(output, expected, passed):
    assert scoring.match_expected(output=output, expected=expected, threshold=0.8).passed is passed
