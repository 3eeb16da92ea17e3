"""p50 latency of GET /api/traces/?user=... with 1k and with 50k traces in the store, one run.

    .venv/bin/python bench/trace_search.py [--small 1000] [--large 50000] [--users 100]

Trace rows are written straight into a SQLite MLflow store, shaped like the app's (user and
session metadata, request id, deployment metadata, tags), spread over --users users.
Each size is queried through the real DRF view by a staff token, 30 times per filter.
"""

import argparse
import time

from _setup import boot_django, percentile, token_client

USER_BASE = 1000


def load(n_from: int, n_to: int, users: int) -> None:
    """Trace rows as the app's exporter leaves them (info, metadata, tags), written in bulk.

    Spans are left out: search reads trace info only (include_spans=False), and writing
    50k full traces through the exporter takes most of an hour on this machine.
    """
    import uuid

    from mlflow.entities import TraceInfo, TraceLocation, TraceState
    from mlflow.tracking._tracking_service.utils import _get_store

    from chat import tracing

    store = _get_store()
    location = TraceLocation.from_experiment_id(tracing.experiment_id())
    started, now_ms = time.monotonic(), int(time.time() * 1000)
    for i in range(n_from, n_to):
        user = USER_BASE + i % users
        store.start_trace(
            TraceInfo(
                trace_id=f"tr-{uuid.uuid4().hex}",
                trace_location=location,
                request_time=now_ms - (n_to - i) * 1000,
                execution_duration=12,
                state=TraceState.OK,
                request_preview=f"question {i}",
                response_preview="ok",
                client_request_id=f"req-{i}",
                trace_metadata={
                    **tracing.deployment_metadata(),
                    "mlflow.trace.user": str(user),
                    "mlflow.trace.session": f"session-{user}-{i // (users * 5)}",
                },
                tags={"team": "support" if i % 2 else "sales", "endpoint": "api_chat"},
            )
        )
        done = i + 1
        if done % 5000 == 0 or done == n_to:
            rate = (done - n_from) / (time.monotonic() - started)
            print(f"  {done} traces in the store ({rate:.0f}/s)", flush=True)


def measure(client, params: dict, repeat: int = 30) -> float:
    timings = []
    for _ in range(repeat):
        started = time.perf_counter()
        response = client.get("/api/traces/", params)
        timings.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.content
    return percentile(timings, 50)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--large", type=int, default=50000)
    parser.add_argument("--users", type=int, default=100)
    args = parser.parse_args()

    boot_django()
    from django.contrib.auth import get_user_model

    staff, client = token_client("bench-staff")
    get_user_model().objects.filter(pk=staff.pk).update(is_staff=True)
    # Users 0..N-1 exist in the ORM so `user=<id>` resolves; ids line up with the loader's.
    User = get_user_model()
    User.objects.bulk_create([User(id=USER_BASE + u, username=f"u{u}") for u in range(args.users)])

    queries = {
        "user": lambda: {"user": str(USER_BASE + 7)},
        "user + tag": lambda: {"user": str(USER_BASE + 7), "tag": "team:support"},
        "client_request_id": lambda: {"client_request_id": "req-507"},
    }
    results: dict[int, dict[str, float]] = {}
    for size, start in ((args.small, 0), (args.large, args.small)):
        print(f"loading traces up to {size} ...", flush=True)
        load(start, size, args.users)
        results[size] = {name: measure(client, q()) for name, q in queries.items()}
        page = {"user": str(USER_BASE + 7), "page_size": 200}
        n = len(client.get("/api/traces/", page).json()["results"])
        print(f"  one user has {n}{'+' if n == 200 else ''} traces at {size}: {results[size]}")

    print()
    print(f"{'GET /api/traces/ p50 (ms)':28}{args.small:>10}{args.large:>10}{'ratio':>8}")
    for name in queries:
        small, large = results[args.small][name], results[args.large][name]
        print(f"{name:28}{small:10.1f}{large:10.1f}{large / small:7.1f}x")


if __name__ == "__main__":
    main()
