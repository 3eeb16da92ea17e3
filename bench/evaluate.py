"""`manage.py evaluate` over a 1,000-record dataset version with the local responder.

    .venv/bin/python bench/evaluate.py [--records 1000] [--runs 2] [--concurrency 8]

The version is built directly in the database (no chat turns: the records are what `evaluate`
reads); half the expectations are the local responder's own answer (pass), half are not (fail),
so the scorer does real work on both outcomes. Then `evaluate --dataset bench@prod` runs
`--runs` times, as a CI job would, each timed from the outside (wall time, records/s) and with
the command's own output printed; the second run compares against the first. Everything a run
does is in the figure: reading the records, answering (the local responder, as the issue asks:
no model latency), scoring, storing the results, and logging the MLflow run with its table.
"""

import argparse
import io
import time

from _setup import boot_django


def build(records: int) -> None:
    from chat.llm import ChatMessage, LocalResponder
    from evals import services
    from evals.models import Dataset, DatasetRecord, DatasetVersion

    dataset = Dataset.objects.create(name="bench")
    version = DatasetVersion.objects.create(dataset=dataset, number=1, record_count=records)
    rows = []
    for i in range(records):
        inputs = [
            {"role": "user", "content": f"Order {i}: where is my parcel number {i * 7}?"},
            {"role": "assistant", "content": "It left the warehouse yesterday."},
            {"role": "user", "content": f"And when does parcel {i * 7} arrive in town {i % 40}?"},
        ]
        messages = [ChatMessage(m["role"], m["content"]) for m in inputs]
        right = LocalResponder.reply_text(messages)
        expectation = right if i % 2 == 0 else f"Parcel {i * 7} arrives on Tuesday."
        rows.append(
            DatasetRecord(version=version, key=f"bench:{i}", inputs=inputs, expectation=expectation)
        )
    DatasetRecord.objects.bulk_create(rows, batch_size=500)
    services.dataset_tag_move(dataset=dataset, name="prod", version=version, moved_by=None)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    boot_django()
    from django.core.management import call_command

    from chat import tracing

    started = time.perf_counter()
    build(args.records)
    print(f"built bench@v1: {args.records} records in {time.perf_counter() - started:.2f} s")
    print(f"MLflow ready: {tracing.is_ready()}")
    walls = []
    for n in range(1, args.runs + 1):
        out = io.StringIO()
        started = time.perf_counter()
        call_command(
            "evaluate",
            "--dataset",
            "bench@prod",
            "--concurrency",
            str(args.concurrency),
            "--show",
            "3",
            stdout=out,
        )
        wall = time.perf_counter() - started
        walls.append(wall)
        print(f"--- run {n}: manage.py evaluate --dataset bench@prod ---")
        print(out.getvalue().rstrip())
        print(f"wall {wall:.2f} s, {args.records / wall:.0f} records/s")
    print(
        f"evaluate over {args.records} records, local responder: wall "
        + ", ".join(f"{w:.2f} s" for w in walls)
        + f" ({args.records / min(walls):.0f} records/s at best)"
    )


if __name__ == "__main__":
    main()
