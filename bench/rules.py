"""Rules under load: thumbs-down -> review queue item latency, and what rules cost the worker.

    .venv/bin/python bench/rules.py [--rate 100] [--seconds 20] [--rules 3]

Votes arrive at `--rate` per second through the real feedback API (PUT
/api/messages/<id>/feedback/, the app's test client, several sending threads) while the real
feedback worker runs (`manage.py deliver_feedback --loop`, a process of its own, as `make run`
starts it). Two phases in one run, on fresh turns each:

1. no rule enabled (the worker's chore runs and finds none);
2. `--rules` rules enabled (1: thumbs down or rating <= 2 -> queue; 2: + commented -> queue and a
   webhook to a real loopback receiver; 3: + corrected -> queue and dataset).

Printed: time from sending a disliked vote to its review queue item (p50/p99/max), and the
worker's CPU time per vote in each phase (from /proc, idle polling subtracted) with the ratio.
Tracing is off, so the worker's delivery attempt per vote is the cheap "no trace" one: the ratio is
an upper bound on what rules add to a worker that also writes every vote to MLflow.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from _setup import ROOT, percentile

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


class Receiver(BaseHTTPRequestHandler):
    received = 0

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        Receiver.received += 1
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def vote(i: int) -> dict:
    """7 in 10 votes are disliked: 4 thumbs down, 2 rated 1-2 with a comment, 1 with a fix."""
    kind = i % 10
    if kind < 4:
        return {"is_correct": False}
    if kind < 6:
        return {"rating": 1 + kind % 2, "comment": "not what I asked"}
    if kind == 6:
        return {"is_correct": False, "expected_response": "The right answer."}
    return {"is_correct": True}


def sender(args) -> None:
    """One sending process: its share of the votes, on the shared schedule (DB from the env)."""
    import django

    sys.path.insert(0, str(ROOT))
    django.setup()
    from _setup import token_client
    from django.db import close_old_connections

    messages = json.loads(Path(args.send).read_text())
    local = threading.local()
    sent: dict[int, float] = {}
    late = 0

    def send(j: int, message_id: int) -> None:
        nonlocal late
        i = args.offset + j * args.step  # the vote's place in the whole phase
        delay = args.start_at + i / args.rate - time.time()
        if delay > 0:
            time.sleep(delay)
        elif delay < -0.1:
            late += 1
        if not hasattr(local, "client"):
            local.client = token_client("bench-rules")[1]
        sent[message_id] = time.time()
        response = local.client.put(f"/api/messages/{message_id}/feedback/", vote(i), format="json")
        assert response.status_code == 201, response.content
        close_old_connections()

    with ThreadPoolExecutor(args.threads) as pool:
        list(pool.map(send, range(len(messages)), messages))
    Path(args.send + ".sent").write_text(json.dumps({"sent": sent, "late": late}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=100.0, help="votes per second")
    parser.add_argument("--seconds", type=float, default=20.0, help="per phase")
    parser.add_argument("--rules", type=int, default=3, choices=[1, 2, 3])
    parser.add_argument("--senders", type=int, default=2, help="sending processes")
    parser.add_argument("--threads", type=int, default=4, help="threads per sending process")
    parser.add_argument("--send", help=argparse.SUPPRESS)  # a sending process: its ids file
    parser.add_argument("--offset", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--step", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.send:
        return sender(args)

    os.environ["TRACING_ENABLED"] = "false"
    from _setup import boot_django, token_client

    boot_django()
    from django.db import connection
    from django.utils import timezone

    from chat.models import ChatSession, Message, Turn
    from feedback.models import Feedback, QueueItem
    from quality.models import Rule, RuleMatch

    user, _ = token_client("bench-rules")
    votes = int(args.rate * args.seconds)

    def make_turns(n: int) -> list[int]:
        session = ChatSession.objects.create(owner=user, title="bench")
        now = timezone.now()
        turns = Turn.objects.bulk_create(
            Turn(
                session=session,
                user=user,
                client_request_id=f"r-{time.monotonic_ns()}-{i}",
                status=Turn.Status.COMPLETED,
                model="local",
                latency_ms=10,
                completed_at=now,
            )
            for i in range(n)
        )
        answers = Message.objects.bulk_create(
            Message(session=session, turn=t, role=Message.Role.ASSISTANT, content="an answer")
            for t in turns
        )
        return [m.pk for m in answers]

    achieved = [0.0]

    def send_phase(messages: list[int]) -> dict[int, float]:
        """Send one vote per message at the rate from `--senders` processes; returns message id
        -> send time (epoch s)."""
        tmp = Path(tempfile.mkdtemp(prefix="bench-rules-"))
        start_at = time.time() + 8  # the senders' Django is up by then
        procs = []
        for k in range(args.senders):
            ids = tmp / f"ids-{k}.json"
            ids.write_text(json.dumps(messages[k :: args.senders]))
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        __file__,
                        "--send",
                        str(ids),
                        "--offset",
                        str(k),
                        "--step",
                        str(args.senders),
                        "--start-at",
                        str(start_at),
                        "--rate",
                        str(args.rate),
                        "--threads",
                        str(args.threads),
                    ],
                    cwd=ROOT,
                )
            )
        for proc in procs:
            assert proc.wait() == 0
        sent, late = {}, 0
        for k in range(args.senders):
            result = json.loads((tmp / f"ids-{k}.json.sent").read_text())
            sent.update({int(m): t for m, t in result["sent"].items()})
            late += result["late"]
        took = max(sent.values()) - start_at
        print(
            f"  sent {len(sent)} votes in {took:.1f}s ({len(sent) / took:.0f}/s from "
            f"{args.senders} processes; {late} more than 100 ms behind schedule)",
            flush=True,
        )
        achieved[0] = len(sent) / took
        return sent

    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{receiver.server_address[1]}/hook"

    print(f"making {2 * votes} answered turns ...", flush=True)
    phase_messages = [make_turns(votes), make_turns(votes)]
    connection.close()

    worker = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "deliver_feedback", "--loop"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    results = {}
    try:
        print(f"worker: {worker.stdout.readline().strip()}", flush=True)
        threading.Thread(target=lambda: [None for _ in worker.stdout], daemon=True).start()
        time.sleep(2)  # its first pass sets the matching cursor
        idle_before = cpu_seconds(worker.pid)
        time.sleep(5)
        idle_rate = (cpu_seconds(worker.pid) - idle_before) / 5
        print(f"worker idle (polling): {idle_rate * 1000:.1f} ms CPU per second", flush=True)

        for phase, messages in (("without rules", phase_messages[0]), ("with rules", None)):
            if messages is None:
                messages = phase_messages[1]
                specs = [
                    {"name": "Disliked", "thumbs_down": True, "max_rating": 2},
                    {
                        "name": "Disliked with a comment",
                        "thumbs_down": True,
                        "max_rating": 2,
                        "has_comment": True,
                        "webhook_url": hook,
                    },
                    {"name": "Corrected", "has_correction": True, "dataset_name": "bench"},
                ][: args.rules]
                time.sleep(3)  # the first phase's votes are older than QUALITY_MATCH_LAG_S
                for spec in specs:
                    Rule.objects.create(**spec)
                connection.close()
                print(f"{args.rules} rule(s) enabled: {', '.join(s['name'] for s in specs)}")
            print(f"phase {phase}:", flush=True)
            cpu_start, wall_start = cpu_seconds(worker.pid), time.monotonic()
            sent = send_phase(messages)
            # Until the worker has handled every vote (delivery attempted), then a short tail.
            deadline = time.monotonic() + 60
            while (
                Feedback.objects.filter(turn__messages__in=messages, attempts=0).exists()
                and time.monotonic() < deadline
            ):
                time.sleep(0.2)
            if phase == "with rules":
                expected = sum(1 for i in range(len(messages)) if i % 10 < 7)
                while (
                    QueueItem.objects.filter(turn__messages__in=messages).count() < expected
                    and time.monotonic() < deadline
                ):
                    time.sleep(0.2)
            time.sleep(1)
            wall = time.monotonic() - wall_start
            cpu = cpu_seconds(worker.pid) - cpu_start - idle_rate * wall
            results[phase] = {"cpu_ms_per_vote": max(cpu, 0) * 1000 / len(messages), "wall": wall}
            connection.close()
            if phase == "with rules":
                items = QueueItem.objects.filter(turn__messages__in=messages).values_list(
                    "turn__messages__id", "created_at"
                )
                lag_ms = [(at.timestamp() - sent[mid]) * 1000 for mid, at in items]
                results["lag_ms"] = lag_ms
                results["achieved"] = achieved[0]
                results["expected"] = expected
                results["matches"] = RuleMatch.objects.count()
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        receiver.shutdown()

    lag = results["lag_ms"]
    print()
    print(
        f"thumbs-down (or rating <= 2) -> review queue item, {len(lag)} of {results['expected']} "
        f"disliked votes, {results['achieved']:.0f} votes/s arriving (asked: {args.rate:g}/s):"
    )
    print(
        f"  p50 {percentile(lag, 50):.0f} ms   p99 {percentile(lag, 99):.0f} ms   "
        f"max {max(lag):.0f} ms"
    )
    print(f"  rule matches recorded: {results['matches']}; webhooks received: {Receiver.received}")
    without = results["without rules"]["cpu_ms_per_vote"]
    with_rules = results["with rules"]["cpu_ms_per_vote"]
    print()
    print(f"{'feedback worker CPU per vote':34}{'ms':>8}")
    print(f"{'no rule enabled':34}{without:8.2f}")
    print(f"{f'{args.rules} rule(s) enabled':34}{with_rules:8.2f}")
    ratio = with_rules / without if without else float("nan")
    print(f"ratio with/without: {ratio:.2f}x (+{with_rules - without:.2f} ms per vote)")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
