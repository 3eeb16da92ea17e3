"""Open-loop load on the app as `make run` runs it: latency, and every answer's trace in MLflow.

    .venv/bin/python bench/load.py                  # 100/s and 200/s for 60 s each, compare at 20/s
    .venv/bin/python bench/load.py --quick          # smoke: 20/s for 5 s, compare 3 s
    .venv/bin/python bench/load.py --rates 50,150 --duration 30 --json /tmp/load.json
    .venv/bin/python bench/load.py --worker "deliver_feedback --loop" --worker "other_cmd --loop"
    .venv/bin/python bench/load.py --rest           # trace worker over REST (TRACE_WORKER_DIRECT=0)

Starts, on loopback with free ports and in a fresh temporary directory (never var/): an
`mlflow server` exactly as bin/serve does (bin/mlflow-server, SQLite store, `--workers 1`),
`manage.py migrate`, a user with a DRF token, gunicorn with gunicorn.conf.py and the background
workers (`--worker`, a manage.py command line; repeatable; the trace worker writing into the
tracking server's database unless --rest), with bin/serve's environment and the local responder
at full speed (LLM_LOCAL_TOKEN_DELAY_MS=0).

At each offered rate, POST /api/chat/ goes out on a fixed schedule whatever the answers' latency
(open loop; asyncio + aiohttp), each with its own X-Request-ID. Latency counts from a request's
scheduled send time, so a late load generator shows up as latency (its own lag is reported).
After the load, MLflow is searched by client request id until every answered request has a
finished trace or --drain-timeout passes (polled every 0.5 s, asking only for the ids still
missing: `client_request_id IN (...)`). `traces` counts sent requests with a trace in any state,
`lost` answered requests without one, `not OK` traces whose state is not OK (ERROR,
IN_PROGRESS), `in prog` those still IN_PROGRESS, `drain s` the time from the last answer until
the last trace was seen.

Last, traced vs untraced p50 at a low rate: the gunicorn that carried the load is stopped, and
two fresh ones, one with TRACING_ENABLED=false, get the same warm-up and then the same load in
alternating blocks so machine drift hits both alike, with the app workers' CPU per answered turn
in each (from /proc: steadier than a p50 of a few ms). Both start fresh because a worker that has
carried 200 turns/s of overload answers slower than a fresh one whatever it traces (6.75 against
6.35 ms of CPU a turn, docs/serving.md): comparing it with a fresh untraced one charged its age to
tracing. The trace workers keep running: what they cost the machine is tracing's.

The temp dir (logs, stores) is deleted at the end unless --keep is given or something went
wrong: dead processes, failed trace searches and WARNING / ERROR lines and tracebacks in the
processes' logs are printed as PROBLEM lines.
"""

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from _setup import ROOT, percentile

# The comparison's p50s (~7 ms) differ by tenths of a millisecond: 20 s per mode in 5 s blocks
# gave 1.00-1.06x for the same code across runs; 60 s in 10 s blocks is steadier (docs/tracing.md).
FULL = {"rates": "100,200", "duration": 60.0, "compare_duration": 60.0, "compare_block": 10.0}
QUICK = {"rates": "20", "duration": 5.0, "compare_duration": 3.0, "compare_block": 3.0}
# As bin/serve: the tracking server and the delivery workers yield the CPU to request threads.
BACKGROUND = ["nice", "-n", "10"]
DEFAULT_WORKERS = ["deliver_traces --loop", "deliver_feedback --loop"]  # as bin/serve
STOP_GRACE_S = 30.0  # gunicorn's graceful_timeout: workers flush queued traces on the way out
POLL_S = 0.5


class BenchError(Exception):
    """Set-up failed; the message says what and where its log is."""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + line for line in text[-lines:])


# --- Processes ------------------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path

    def exited(self) -> int | None:
        return self.popen.poll()

    def describe_exit(self) -> str:
        return (
            f"{self.name} exited with code {self.popen.returncode}; {self.log}:\n{tail(self.log)}"
        )


class Processes:
    """Every long-running process the bench starts, each in its own session (like `setsid`).

    Stopped in reverse order of starting, so the app and the workers flush to MLflow before the
    MLflow server goes: SIGTERM to the process group, SIGKILL after STOP_GRACE_S.
    """

    def __init__(self, logs: Path):
        self.logs = logs
        self.procs: list[Proc] = []

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> Proc:
        log_path = self.logs / f"{name}.log"
        with open(log_path, "ab") as out:
            popen = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = Proc(name, popen, log_path)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        """Stop one process now (SIGTERM, then SIGKILL after STOP_GRACE_S)."""
        self.procs.remove(proc)
        self._stop(proc)

    def stop_all(self) -> None:
        # Stopping must not be cut short by a second Ctrl-C: children would be left running.
        previous = {
            sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            while self.procs:
                self._stop(self.procs.pop())
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    @staticmethod
    def _stop(proc: Proc) -> None:
        if proc.exited() is not None:
            return
        log(f"stopping {proc.name}")
        _signal_group(proc.popen.pid, signal.SIGTERM)
        try:
            proc.popen.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            log(f"{proc.name} still running after {STOP_GRACE_S:.0f}s: SIGKILL")
            _signal_group(proc.popen.pid, signal.SIGKILL)
            proc.popen.wait()
        _signal_group(proc.popen.pid, signal.SIGKILL)  # anything it left behind in its group


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def manage(args: list[str], env: dict[str, str], log_path: Path, timeout: float = 300) -> str:
    """Run a one-off manage.py command; its output (also appended to log_path) is returned."""
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    with open(log_path, "a") as out:
        out.write(f"$ manage.py {shlex.join(args)}\n{result.stdout}{result.stderr}\n")
    if result.returncode != 0:
        raise BenchError(
            f"manage.py {args[0]} failed (code {result.returncode}); {log_path}:\n{tail(log_path)}"
        )
    return result.stdout


def wait_http(url: str, proc: Proc, timeout: float, headers: dict | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.exited() is not None:
            raise BenchError(proc.describe_exit())
        try:
            request = urllib.request.Request(url, headers=headers or {})
            with urllib.request.urlopen(request, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise BenchError(f"{proc.name} did not answer {url} within {timeout:.0f}s; see {proc.log}")


# "2026/11/25 15:34:08 WARNING mlflow.tracing.export: ..." or gunicorn's "[ERROR] Worker ...".
LOG_LEVEL = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b:?\s+([\w.]+)|\[(ERROR|CRITICAL)\]")

# Token for the bench user; also fails clearly when a --worker names no manage.py command.
SHELL_SETUP = """
from django.contrib.auth import get_user_model
from django.core.management import get_commands
from rest_framework.authtoken.models import Token

known = get_commands()
missing = [name for name in {names!r} if name not in known]
if missing:
    print("MISSING " + " ".join(missing))
else:
    user, _ = get_user_model().objects.get_or_create(username="bench-load")
    print("TOKEN " + Token.objects.get_or_create(user=user)[0].key)
"""


@dataclass
class App:
    """The stack under load: MLflow server, app DB and user, traced gunicorn, workers."""

    tmp: Path
    procs: Processes
    env: dict[str, str]
    mlflow_url: str
    mlflow_workers: int = 1
    experiment_id: str = ""
    token: str = ""
    masters: dict[str, int] = field(default_factory=dict)  # a gunicorn's URL: its master's pid

    def start_mlflow(self, port: int) -> None:
        log(f"starting mlflow server on {self.mlflow_url}")
        proc = self.procs.start(
            "mlflow-server",
            [
                *BACKGROUND,
                sys.executable,
                str(ROOT / "bin" / "mlflow-server"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                str(self.mlflow_workers),
                "--backend-store-uri",
                self.backend_store_uri,
                "--artifacts-destination",
                str(self.tmp / "mlartifacts"),
            ],
            self.env,
        )
        wait_http(f"{self.mlflow_url}/health", proc, timeout=120)

    def prepare_db(self, worker_commands: list[list[str]]) -> None:
        setup_log = self.tmp / "logs" / "setup.log"
        log("migrating the app database")
        manage(["migrate", "--noinput"], self.env, setup_log)
        names = [argv[0] for argv in worker_commands]
        output = manage(["shell", "-c", SHELL_SETUP.format(names=names)], self.env, setup_log)
        for line in output.splitlines():
            if line.startswith("MISSING "):
                raise BenchError(
                    "--worker names a command manage.py does not have: "
                    + ", ".join(repr(name) for name in line.split()[1:])
                )
            if line.startswith("TOKEN "):
                self.token = line.split()[1]
        if not self.token:
            raise BenchError(f"no token from manage.py shell; see {setup_log}")

    def start_gunicorn(self, name: str, port: int, traced: bool) -> str:
        env = {**self.env, "APP_PORT": str(port), "TRACING_ENABLED": str(traced).lower()}
        proc = self.procs.start(
            name,
            [
                str(Path(sys.executable).with_name("gunicorn")),
                "-c",
                "gunicorn.conf.py",
                "--bind",
                f"127.0.0.1:{port}",
            ],
            env,
        )
        url = f"http://127.0.0.1:{port}"
        self.masters[url] = proc.popen.pid
        log(f"starting {name} on {url} (TRACING_ENABLED={env['TRACING_ENABLED']})")
        wait_http(f"{url}/api/sessions/", proc, timeout=90, headers={"Authorization": self.auth})
        return url

    @property
    def backend_store_uri(self) -> str:
        return f"sqlite:///{self.tmp}/mlflow-server.db"

    def start_workers(self, worker_commands: list[list[str]], *, direct: bool = False) -> None:
        for i, argv in enumerate(worker_commands, 1):
            env = self.env
            if direct and argv[0] == "deliver_traces":
                # Traces written into the tracking server's database, as bin/serve does.
                env = {**env, "MLFLOW_TRACKING_URI": self.backend_store_uri}
            where = env["MLFLOW_TRACKING_URI"]
            log(f"starting worker: manage.py {shlex.join(argv)} (tracking {where})")
            name = f"worker-{i}-{argv[0]}"
            self.procs.start(name, [*BACKGROUND, sys.executable, "manage.py", *argv], env)

    def dead(self) -> list[str]:
        """Problems: app processes that are no longer running."""
        return [p.describe_exit() for p in self.procs.procs if p.exited() is not None]

    def log_problems(self) -> list[str]:
        """Problems: tracebacks and WARNING / ERROR lines (by logger) in the processes' logs."""
        problems = []
        for path in sorted((self.tmp / "logs").glob("*.log")):
            counts = Counter()
            for line in path.read_text(errors="replace").splitlines():
                if "Traceback (most recent call last)" in line:
                    counts["Traceback"] += 1
                elif match := LOG_LEVEL.search(line):
                    counts[" ".join(filter(None, match.groups()))] += 1
            if counts:
                found = ", ".join(f"{n} x {what}" for what, n in counts.most_common())
                problems.append(f"{path.name}: {found}")
        return problems

    @property
    def auth(self) -> str:
        return f"Token {self.token}"


# --- Load -----------------------------------------------------------------------------------------


@dataclass
class Load:
    """What one open-loop run sent and got back."""

    rate: float
    seconds: float
    offered: int = 0
    sent: set[str] = field(default_factory=set)  # request ids
    answered: set[str] = field(default_factory=set)
    latency_ms: list[float] = field(default_factory=list)  # of 2xx answers
    errors: Counter = field(default_factory=Counter)
    untraced: int = 0  # 2xx answers whose trace_id was null
    dropped: int = 0  # not sent: --max-inflight requests were already open
    lag_ms: list[float] = field(default_factory=list)  # actual send time - scheduled
    started: float = 0.0  # monotonic, first scheduled send
    last_answer: float = 0.0  # monotonic
    cpu_pct: float = 0.0  # the load generator's CPU time / wall time

    def p(self, q: float) -> float | None:
        return percentile(self.latency_ms, q) if self.latency_ms else None


async def open_loop(
    session: aiohttp.ClientSession,
    url: str,
    auth: str,
    *,
    rate: float,
    seconds: float,
    prefix: str,
    max_inflight: int,
    label: str,
    progress_every: float = 5.0,
) -> Load:
    """Send `rate` requests a second for `seconds`, on schedule; wait for every answer."""
    loop = asyncio.get_running_loop()
    load = Load(rate=rate, seconds=seconds, offered=round(rate * seconds))
    inflight: set[asyncio.Task] = set()
    start = load.started = loop.time() + 0.05
    cpu = time.process_time()
    next_progress = start + progress_every
    for i in range(load.offered):
        due = start + i / rate
        delay = due - loop.time()
        await asyncio.sleep(max(0.0, delay))  # sleep(0) still lets answers in when behind
        if len(inflight) >= max_inflight:
            load.dropped += 1
            continue
        request_id = f"{prefix}-{i}"
        load.sent.add(request_id)
        load.lag_ms.append((loop.time() - due) * 1000)
        task = asyncio.create_task(post_chat(session, url, auth, request_id, i, due, load))
        inflight.add(task)
        task.add_done_callback(inflight.discard)
        if loop.time() >= next_progress:
            next_progress += progress_every
            log(
                f"  {label}: {loop.time() - start:4.0f}s sent {len(load.sent)}, answered "
                f"{len(load.answered)}, errors {sum(load.errors.values())}, "
                f"in flight {len(inflight)}"
            )
    if inflight:
        await asyncio.gather(*inflight)
    load.last_answer = load.last_answer or loop.time()
    load.cpu_pct = 100 * (time.process_time() - cpu) / max(1e-9, loop.time() - start)
    return load


async def post_chat(
    session: aiohttp.ClientSession,
    url: str,
    auth: str,
    request_id: str,
    i: int,
    due: float,
    load: Load,
) -> None:
    loop = asyncio.get_running_loop()
    headers = {"Authorization": auth, "X-Request-ID": request_id}
    body = {"message": f"Load test question {i}: how do I reset my password?"}
    try:
        async with session.post(f"{url}/api/chat/", json=body, headers=headers) as response:
            payload = await response.read()
            status = response.status
    except TimeoutError:
        load.errors["timeout"] += 1
        return
    except aiohttp.ClientError as exc:
        load.errors[type(exc).__name__] += 1
        return
    finally:
        load.last_answer = loop.time()
    if 200 <= status < 300:
        load.answered.add(request_id)
        load.latency_ms.append((loop.time() - due) * 1000)
        if json.loads(payload).get("trace_id") is None:
            load.untraced += 1
    else:
        load.errors[f"HTTP {status}"] += 1


def client_session(max_inflight: int, timeout: float) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=max_inflight),
        timeout=aiohttp.ClientTimeout(total=timeout),
    )


async def run_load(
    url: str, auth: str, args, *, rate: float, seconds: float, prefix: str, label: str
):
    async with client_session(args.max_inflight, args.timeout) as session:
        return await open_loop(
            session,
            url,
            auth,
            rate=rate,
            seconds=seconds,
            prefix=prefix,
            max_inflight=args.max_inflight,
            label=label,
        )


async def warm_up(url: str, auth: str, prefix: str, traced: bool, turns: int = 20) -> None:
    """First turns load code and open connections; for the traced app, tracing must be ready."""
    async with client_session(8, 60) as session:
        load = Load(rate=0, seconds=0)
        loop = asyncio.get_running_loop()
        for batch in range(0, turns, 4):  # a few at once, so both gunicorn workers get some
            await asyncio.gather(
                *(
                    post_chat(session, url, auth, f"{prefix}-{i}", i, loop.time(), load)
                    for i in range(batch, batch + 4)
                )
            )
    if load.errors:
        raise BenchError(f"warm-up of {url} failed: {dict(load.errors)}")
    if traced and load.untraced:
        raise BenchError(f"{url}: {load.untraced} warm-up turns had no trace (tracing not ready)")
    if not traced and load.untraced != len(load.answered):
        raise BenchError(f"{url} traced turns although started with TRACING_ENABLED=false")


# --- Traces ---------------------------------------------------------------------------------------

SEARCH_BATCH = 200  # request ids per search


@dataclass
class Search:
    states: dict[str, str] = field(default_factory=dict)  # client request id -> trace state
    duplicates: int = 0  # traces beyond the first for a request id
    unchecked: set[str] = field(default_factory=set)  # ids whose search failed


def trace_states(client, experiment_id: str, request_ids, label: str) -> Search:
    """The traces in MLflow of those of request_ids that have one.

    Searches by `client_request_id IN (...)`: the server's cost is in the traces it returns, so
    asking only for ids not seen yet keeps the polling from starving trace ingestion. After a
    failed search (an overloaded server times out) the rest is left unchecked for the next poll.
    """
    search = Search()
    ids = sorted(request_ids)
    for start in range(0, len(ids), SEARCH_BATCH):
        batch = ids[start : start + SEARCH_BATCH]
        if search.unchecked:
            search.unchecked.update(batch)
            continue
        quoted = ", ".join(f"'{rid}'" for rid in batch)
        token = None
        try:
            while True:
                page = client.search_traces(
                    locations=[experiment_id],
                    filter_string=f"attributes.client_request_id IN ({quoted})",
                    max_results=SEARCH_BATCH,
                    page_token=token,
                    include_spans=False,
                )
                for trace in page:
                    search.duplicates += trace.info.client_request_id in search.states
                    search.states[trace.info.client_request_id] = trace.info.state.value
                token = page.token
                if not token:
                    break
        except Exception as exc:
            log(f"  {label}: trace search failed ({type(exc).__name__}: {exc})")
            search.unchecked.update(batch)
    return search


@dataclass
class Drain:
    states: dict[str, str]  # request id (of this load) -> trace state
    duplicates: int
    lost: int  # answered; the last search for it found no trace
    unchecked: int  # answered, no trace found, and the last search for it failed
    seconds: float | None  # last answer -> last finished trace seen; None: not all in time


def drain(client, experiment_id: str, load: Load, timeout: float, label: str) -> Drain:
    """Poll MLflow until every answered request has a finished trace, or `timeout` passes."""
    waiting = set(load.answered)
    unchecked: set[str] = set()
    states: dict[str, str] = {}
    duplicates = 0
    started = time.monotonic()
    last_seen = load.last_answer
    next_progress = started + 5
    while waiting:
        search = trace_states(client, experiment_id, waiting, label)
        states.update(search.states)
        duplicates += search.duplicates
        unchecked = search.unchecked
        finished = {rid for rid, state in search.states.items() if state != "IN_PROGRESS"}
        waiting -= finished
        if finished:
            last_seen = time.monotonic()
        if not waiting or time.monotonic() - started > timeout:
            break
        if time.monotonic() >= next_progress:
            next_progress += 5
            log(
                f"  {label}: {len(waiting)} of {len(load.answered)} traces not in MLflow yet "
                f"({time.monotonic() - load.last_answer:.0f}s after the last answer)"
            )
        time.sleep(POLL_S)
    # Requests that got no 2xx answer (timeouts) may have traces too.
    others = trace_states(client, experiment_id, load.sent - load.answered, label)
    states.update(others.states)
    missing = {rid for rid in load.answered if rid not in states}
    return Drain(
        states=states,
        duplicates=duplicates + others.duplicates,
        lost=len(missing - unchecked),
        unchecked=len(missing & unchecked),
        seconds=None if waiting else max(0.0, last_seen - load.last_answer),
    )


# --- Report ---------------------------------------------------------------------------------------


def rate_row(load: Load, result: Drain) -> dict:
    states = Counter(result.states.values())
    return {
        "rate": load.rate,
        "seconds": load.seconds,
        "offered": load.offered,
        "sent": len(load.sent),
        "dropped": load.dropped,
        "answered": len(load.answered),
        "errors": sum(load.errors.values()),
        "error_kinds": dict(load.errors),
        "p50_ms": load.p(50),
        "p99_ms": load.p(99),
        "untraced_answers": load.untraced,
        "generator_lag_p99_ms": percentile(load.lag_ms, 99) if load.lag_ms else None,
        "generator_cpu_pct": load.cpu_pct,
        "throughput_per_s": len(load.answered) / max(1e-9, load.last_answer - load.started),
        "traces": len(result.states),
        "duplicate_traces": result.duplicates,
        "lost": result.lost,
        "unchecked": result.unchecked,
        "not_ok": sum(n for state, n in states.items() if state != "OK"),
        "in_progress": states.get("IN_PROGRESS", 0),
        "trace_states": dict(states),
        "drain_s": result.seconds,
    }


def fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def print_table(rows: list[dict], drain_timeout: float) -> None:
    columns = (
        ("rate/s", 7, lambda r: f"{r['rate']:g}"),
        ("sent", 7, lambda r: str(r["sent"])),
        ("answered", 9, lambda r: str(r["answered"])),
        ("errors", 7, lambda r: str(r["errors"])),
        ("p50 ms", 9, lambda r: fmt(r["p50_ms"])),
        ("p99 ms", 9, lambda r: fmt(r["p99_ms"])),
        ("traces", 7, lambda r: str(r["traces"])),
        ("lost", 6, lambda r: str(r["lost"])),
        ("not OK", 7, lambda r: str(r["not_ok"])),
        ("in prog", 8, lambda r: str(r["in_progress"])),
        ("drain s", 8, lambda r: fmt(r["drain_s"]) if r["drain_s"] is not None else "timeout"),
    )
    print("".join(f"{title:>{width}}" for title, width, _ in columns))
    for row in rows:
        print("".join(f"{cell(row):>{width}}" for _, width, cell in columns))
    for row in rows:
        notes = []
        if row["dropped"]:
            notes.append(f"{row['dropped']} not sent (in-flight cap reached)")
        if row["errors"]:
            notes.append("errors: " + ", ".join(f"{k} {n}" for k, n in row["error_kinds"].items()))
        notes.append(f"{row['throughput_per_s']:.1f} answers/s")
        if row["unchecked"]:
            notes.append(f"{row['unchecked']} answered ids not checked (trace search failed)")
        if row["duplicate_traces"]:
            notes.append(f"{row['duplicate_traces']} duplicate traces (same request id)")
        if row["untraced_answers"]:
            notes.append(f"{row['untraced_answers']} answers had no trace_id")
        if row["drain_s"] is None:
            notes.append(f"traces still missing after the {drain_timeout:g}s drain")
        notes.append(
            f"load generator: send lag p99 {fmt(row['generator_lag_p99_ms'])} ms, "
            f"CPU {row['generator_cpu_pct']:.0f}% of a core"
        )
        print(f"  {row['rate']:g}/s: " + "; ".join(notes))


# --- Main -----------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rates", help=f"offered rates per second (default {FULL['rates']})")
    parser.add_argument("--duration", type=float, help="seconds per rate (default 60)")
    parser.add_argument(
        "--compare-rate", type=float, default=20.0, help="traced vs untraced, per s (20)"
    )
    parser.add_argument("--compare-duration", type=float, help="seconds per mode (default 60)")
    parser.add_argument("--compare-block", type=float, help="seconds per alternating block (10)")
    parser.add_argument(
        "--drain-timeout", type=float, default=120.0, help="longest wait for traces, s (120)"
    )
    parser.add_argument(
        "--max-inflight", type=int, default=2000, help="open requests; past it: not sent (2000)"
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="per-request timeout, s (60)")
    parser.add_argument(
        "--worker",
        action="append",
        metavar="COMMAND",
        help="manage.py command line of a background worker; repeatable "
        f"(default: {' and '.join(repr(w) for w in DEFAULT_WORKERS)})",
    )
    parser.add_argument(
        "--database-url",
        help="the app's database (default: a fresh SQLite file), e.g. bin/with-postgres's",
    )
    parser.add_argument(
        "--rest",
        action="store_true",
        help="the trace worker writes through the tracking server's REST API (as "
        "TRACE_WORKER_DIRECT=0 make run), not into its database (the default, as make run)",
    )
    parser.add_argument(
        "--mlflow-workers", type=int, default=1, help="tracking server workers (1, as make run)"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 20/s for 5 s, compare 3 s")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, stores)")
    args = parser.parse_args()
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.rates = [float(r) for r in args.rates.split(",")]
    args.workers = [shlex.split(w) for w in (args.worker or DEFAULT_WORKERS) if w.strip()]
    args.compare_block = min(args.compare_block, args.compare_duration)
    return args


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, _raise_interrupt)
    tmp = Path(tempfile.mkdtemp(prefix="chat-bench-load-"))
    (tmp / "logs").mkdir()
    run = secrets.token_hex(3)
    mlflow_port = free_port()
    mlflow_url = f"http://127.0.0.1:{mlflow_port}"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "chatproject.settings",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_DOT_ENV": "",
        "DATABASE_URL": args.database_url or f"sqlite:///{tmp}/db.sqlite3",
        "MLFLOW_PORT": str(mlflow_port),
        "MLFLOW_TRACKING_URI": mlflow_url,
        "MLFLOW_UI_URL": mlflow_url,
        "MLFLOW_ARTIFACT_ROOT": str(tmp / "mlartifacts"),
        "MLFLOW_EXPERIMENT_NAME": f"bench-load-{run}",
        "LLM_BASE_URL": "",
        "LLM_LOCAL_TOKEN_DELAY_MS": "0",
        "TRACING_ENABLED": "true",
        "PYTHONUNBUFFERED": "1",
        # A few users at many turns/s: the bench measures capacity, not the per-user throttle.
        "THROTTLE_CHAT": "",
        "THROTTLE_FEEDBACK": "",
        # As bin/serve: no job runner in the tracking server (the app runs no server-side jobs).
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    # The bench's own trace searches: bounded, so an overloaded server costs one poll, not minutes.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    procs = Processes(tmp / "logs")
    app = App(
        tmp=tmp, procs=procs, env=env, mlflow_url=mlflow_url, mlflow_workers=args.mlflow_workers
    )
    log(f"temp dir {tmp} (logs in {tmp / 'logs'})")
    keep = True
    try:
        report = bench(app, args, run, mlflow_port)
        keep = args.keep or bool(report["problems"])
    except BenchError as exc:
        log(f"FAILED: {exc}")
        return 1
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        procs.stop_all()
        if keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        log(f"figures written to {args.json}")
    return 0


def bench(app: App, args: argparse.Namespace, run: str, mlflow_port: int) -> dict:
    app.start_mlflow(mlflow_port)
    app.prepare_db(args.workers)
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=app.mlflow_url)
    experiment = client.get_experiment_by_name(app.env["MLFLOW_EXPERIMENT_NAME"])
    app.experiment_id = experiment.experiment_id if experiment else ""
    app.start_workers(args.workers, direct=not args.rest)
    traced_url = app.start_gunicorn("gunicorn-traced", free_port(), traced=True)
    if not app.experiment_id:
        experiment = client.get_experiment_by_name(app.env["MLFLOW_EXPERIMENT_NAME"])
        app.experiment_id = experiment.experiment_id
    asyncio.run(warm_up(traced_url, app.auth, f"warm-{run}-t", traced=True))
    if dead := app.dead():  # e.g. a worker that fails at start-up
        raise BenchError("\n".join(dead))

    rows, problems = [], []
    for rate in args.rates:
        label = f"{rate:g}/s"
        log(f"load {label} for {args.duration:g}s")
        load = asyncio.run(
            run_load(
                traced_url,
                app.auth,
                args,
                rate=rate,
                seconds=args.duration,
                prefix=f"load-{run}-{rate:g}",
                label=label,
            )
        )
        log(f"  {label}: {len(load.answered)} answered; waiting for their traces")
        rows.append(
            rate_row(load, drain(client, app.experiment_id, load, args.drain_timeout, label))
        )
        log(f"  {label}: {rows[-1]['traces']} traces, {rows[-1]['lost']} lost")
        if rows[-1]["unchecked"]:
            problems.append(
                f"{label}: trace searches failed (mlflow server not answering in 30 s); "
                f"{rows[-1]['unchecked']} answered ids could not be checked"
            )

    compare = compare_tracing(app, args, run)
    problems += app.dead() + app.log_problems()

    print()
    print(f"host load average (1, 5, 15 min): {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    workers = ", ".join(shlex.join(argv) for argv in args.workers) or "none"
    print(
        f"open-loop POST /api/chat/, {args.duration:g}s per rate, gunicorn "
        f"{os.environ.get('WEB_CONCURRENCY', '2')} uvicorn (ASGI) workers, "
        f"trace workers: {workers}; traces written "
        + ("through the tracking server's REST API" if args.rest else "into its database")
    )
    print_table(rows, args.drain_timeout)
    print()
    print(
        f"traced vs untraced at {args.compare_rate:g}/s, {compare['blocks']} block(s) of "
        f"{args.compare_block:g}s per mode, alternating:"
    )
    for mode in ("traced", "untraced"):
        m = compare[mode]
        print(
            f"  {mode:9} p50 {fmt(m['p50_ms'], '.2f')} ms  p99 {fmt(m['p99_ms'], '.2f')} ms  "
            f"app CPU {m['cpu_ms_per_turn']:.2f} ms a turn "
            f"(user {m['cpu_user_ms_per_turn']:.2f})  "
            f"({m['answered']} answered, {m['errors']} errors)"
        )
    print(f"  p50 traced/untraced ratio: {fmt(compare['p50_ratio'], '.2f')}x")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    return {
        "config": {
            "rates": args.rates,
            "duration_s": args.duration,
            "max_inflight": args.max_inflight,
            "timeout_s": args.timeout,
            "drain_timeout_s": args.drain_timeout,
            "workers": [shlex.join(argv) for argv in args.workers],
        },
        "rates": rows,
        "compare": compare,
        "problems": problems,
    }


def workers_cpu_s(master: int) -> tuple[float, float]:
    """CPU seconds (user, system) of a gunicorn master's workers so far."""
    user = system = 0
    for child in Path(f"/proc/{master}/task/{master}/children").read_text().split():
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
            user, system = user + int(fields[11]), system + int(fields[12])  # utime, stime
    tick = os.sysconf("SC_CLK_TCK")
    return user / tick, system / tick


def compare_tracing(app: App, args: argparse.Namespace, run: str) -> dict:
    """p50 at a low rate, traced vs untraced gunicorn, both fresh, in alternating (ABBA) blocks."""
    for proc in [p for p in app.procs.procs if p.name.startswith("gunicorn-")]:
        app.procs.stop(proc)  # the one that carried the load
    traced_url = app.start_gunicorn("gunicorn-traced-fresh", free_port(), traced=True)
    untraced_url = app.start_gunicorn("gunicorn-untraced", free_port(), traced=False)
    asyncio.run(warm_up(traced_url, app.auth, f"warm-{run}-tf", traced=True))
    asyncio.run(warm_up(untraced_url, app.auth, f"warm-{run}-u", traced=False))
    urls = {"traced": traced_url, "untraced": untraced_url}
    latency: dict[str, list[float]] = {"traced": [], "untraced": []}
    counts = {mode: Counter() for mode in urls}
    cpu_s = {mode: 0.0 for mode in urls}  # the app workers' CPU during the mode's blocks
    cpu_user_s = {mode: 0.0 for mode in urls}  # of which user (the rest: the kernel's)
    blocks = max(1, math.ceil(args.compare_duration / args.compare_block))
    for block in range(blocks):
        order = ("traced", "untraced") if block % 2 == 0 else ("untraced", "traced")
        for mode in order:
            label = f"compare {mode} block {block + 1}/{blocks}"
            log(label)
            cpu0 = workers_cpu_s(app.masters[urls[mode]])
            load = asyncio.run(
                run_load(
                    urls[mode],
                    app.auth,
                    args,
                    rate=args.compare_rate,
                    seconds=args.compare_block,
                    prefix=f"cmp-{run}-{mode[0]}{block}",
                    label=label,
                )
            )
            latency[mode] += load.latency_ms
            cpu1 = workers_cpu_s(app.masters[urls[mode]])
            cpu_user_s[mode] += cpu1[0] - cpu0[0]
            cpu_s[mode] += sum(cpu1) - sum(cpu0)
            counts[mode].update(answered=len(load.answered), errors=sum(load.errors.values()))
    result: dict = {"rate": args.compare_rate, "blocks": blocks, "block_s": args.compare_block}
    for mode, values in latency.items():
        result[mode] = {
            "p50_ms": percentile(values, 50) if values else None,
            "p99_ms": percentile(values, 99) if values else None,
            "answered": counts[mode]["answered"],
            "cpu_ms_per_turn": 1000 * cpu_s[mode] / max(1, counts[mode]["answered"]),
            "cpu_user_ms_per_turn": 1000 * cpu_user_s[mode] / max(1, counts[mode]["answered"]),
            "errors": counts[mode]["errors"],
        }
    traced, untraced = result["traced"]["p50_ms"], result["untraced"]["p50_ms"]
    result["p50_ratio"] = traced / untraced if traced and untraced else None
    return result


if __name__ == "__main__":
    sys.exit(main())
