"""Closed-loop users on the app as `make run` starts it, with a model that takes a model's time.

    .venv/bin/python bench/concurrency.py       # 8, 32, 128, 512, 1,000 users, JSON and streamed,
                                                # SQLite; then the seed app (JSON), same counts
    .venv/bin/python bench/concurrency.py --users 8,32 --duration 10 --seed-users 32,128
    .venv/bin/python bench/concurrency.py --databases sqlite,postgres --json /tmp/conc.json
    .venv/bin/python bench/concurrency.py --databases "" --users 512   # the seed app alone
    CHAT_SOMETHING=1 WEB_CONCURRENCY=2 .venv/bin/python bench/concurrency.py ...

Starts, on loopback with free ports and in a fresh temporary directory:
- bench/fake_model.py: an OpenAI-compatible server, --ttft-ms to the first token, then --tokens
  tokens every --token-ms (a reply takes ttft + tokens x token-ms: 3.4 s by default), at any
  concurrency;
- per database (--databases; PostgreSQL: a throwaway cluster made as bin/with-postgres makes
  one), the stack as bin/serve starts it, through bench/load.py's App: `mlflow server`
  (bin/mlflow-server, SQLite store), `manage.py migrate`, one Django user with a DRF token per
  simulated user, the trace worker (writing into the tracking server's database) and the
  feedback worker, and `gunicorn -c gunicorn.conf.py` (plus `chatproject.wsgi` only while
  gunicorn.conf.py names no `wsgi_app`). The app's environment: the model above
  (LLM_BASE_URL, LLM_MODEL=fake, LLM_TIMEOUT_S=30), THROTTLE_CHAT off, and every CHAT_*, WEB_*
  and GUNICORN_* variable of this command's own environment (and --env NAME=VALUE);
- last, after the app's stacks are stopped: bench/seed_app.py (the seed's FastAPI /chat, async
  def + AsyncOpenAI) under uvicorn, one worker per core, for the --seed-users rows (JSON).

A row is U users, each in a loop: POST /api/chat/ (Authorization: Token ..., a fresh
X-Request-ID; streamed: {"stream": true}), read the whole answer (JSON: the body; streamed: the
server-sent events to the end, noting the first `event: token` and whether `done` or `error`
came), then the next turn at once; a failed turn waits --error-pause first. Users start spread
over --ramp seconds (default: one reply), then the row's window of --duration seconds begins;
at its end no new turn starts and every open turn is waited for (at most --client-timeout).
Then the answered turns' traces are waited for, and the app must leave the model alone for 1 s
(at most --settle-timeout): turns whose users gave up may still be running or queued in it.
The users run in --clients processes of uvloop + aiohttp (one connection per user; by default
one process per 250 users; their start-up frozen out of the garbage collector, which runs
rarely), apart from this one, which polls the processes' memory, the database
and the model meanwhile. A client process is a user's clock: when its own loop is late, every
answer it reads looks late by as much (reported as "load generator's own loop late by").
The fake model and the client processes stand for other machines (a hosted model, users' own
computers): they run at a higher priority (nice -10, --outside-priority) so that the app's load
does not make them late and their lateness is not counted as the app's. Nothing of the app's
runs at that priority, and the seed's rows get the same model and clients. On a 2-core machine
(2026-12-07, 128 streamed users on SQLite, same code, alternating) nice -10 against the app's
priority gave 99 / 94, 97 / 95 and 97 / 97 % of the ideal, and time to first token +20 / +128,
+49 / +112 and +83 / +72 ms over the model's: a difference in some runs, within the machine's
noise in others.

Columns:
  turns/s        turns answered (HTTP 200; streamed: ended with `done`) within the window / its
                 length
  % ideal        turns/s / (users / reply seconds): 100 % is every user always waiting only on
                 the model
  turn p50, p99  seconds from sending to the whole answer, of the answered turns sent in the window
  TTFT+ p50, p99 streamed: ms from sending to the first `event: token`, minus the model's own
                 time to first token: what the app adds before the user sees anything
  errors         every failed turn of the row by kind: HTTP status, `timeout` (no whole answer
                 within --client-timeout), `stream error <code>` (an `event: error`), `stream cut`
                 (ended with neither), aiohttp's connection errors by name; the notes give each
                 kind's slowest failure
  DB conns       peak connections to the app's database during the row, every 0.15 s, the app's
                 web workers' / everybody's (delivery workers too, not the bench's own poller):
                 PostgreSQL's pg_stat_activity (web: application_name 'chat-web'; their bound is
                 DB_POOL_MAX_SIZE x WEB_CONCURRENCY, 10 x 2); SQLite: open descriptors of the
                 database file (/proc/<pid>/fd)
  RSS MB         per gunicorn (uvicorn, for the seed) worker, its largest VmRSS during the row
  traces         answered turns whose trace is in MLflow / answered turns: read from the tracking
                 server's database (trace_info by client_request_id) every 0.5 s after the row
                 until all are there or --drain-timeout passes; the notes give the drain time
  model peak     the most requests the model had at once during the row (its /stats): how many
                 turns the app actually lets wait on the model concurrently
The notes under the table: CPU of each part as % of one core over the row (app: gunicorn and
its workers; model; background: mlflow server and delivery workers; postgres; load: the client
processes; bench: this process's polling; other: whatever else kept the machine busy, from
/proc/stat), how long after the window the last open turn ended, how late the load generator's
own event loop ran at worst (a slow answer may be the client's, not the app's), the model's
replies and the requests the app cancelled, and model requests a row inherited from the one
before or left running past the settle timeout.

The temp dir is deleted at the end unless --keep, or something went wrong: processes that died
and WARNING / ERROR lines and tracebacks in the logs are printed as PROBLEM lines.
"""

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import re
import resource
import secrets
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import fake_model
import uvloop
from _setup import ROOT, percentile
from load import (
    DEFAULT_WORKERS,
    App,
    BenchError,
    Proc,
    Processes,
    _raise_interrupt,
    free_port,
    log,
    manage,
    wait_http,
)

POLL_S = 0.15
MACHINE = "machine"  # the CPU of the whole machine, beside the parts'
BENCH = "bench"  # this process: the polling of /proc, the database and the model
PROGRESS_S = 5.0
LAG_PROBE_S = 0.05  # how often a client checks its own event loop's lateness
# Passed from this command's environment to the app (settings to try, e.g. a turns-in-flight cap).
PASS_PREFIXES = ("CHAT_", "WEB_", "GUNICORN_")
KEEP_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TZ", "USER", "LOGNAME")
WSGI_APP_SETTING = re.compile(r"^\s*wsgi_app\s*=", re.MULTILINE)
MESSAGE = "How do I reset my password? I can no longer sign in."
STREAM_ERROR_CODE = re.compile(rb'"error":\s*"([\w.-]+)"')

# One Django user with a DRF token per simulated user, made in one go.
SHELL_USERS = """
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token

User = get_user_model()
names = [f"bench-user-{{i}}" for i in range({count})]
have = set(User.objects.filter(username__in=names).values_list("username", flat=True))
User.objects.bulk_create([User(username=n) for n in names if n not in have])
users = {{u.username: u for u in User.objects.filter(username__in=names)}}
tokens = {{t.user_id: t.key for t in Token.objects.filter(user__in=users.values())}}
Token.objects.bulk_create(
    [Token(user=u, key=Token.generate_key()) for u in users.values() if u.pk not in tokens]
)
tokens = {{t.user_id: t.key for t in Token.objects.filter(user__in=users.values())}}
for n in names:
    print("TOKEN " + tokens[users[n].pk])
"""


# --- The load generator (a client process) ------------------------------------------------------


@dataclass
class Target:
    """Where and how a client process sends its users' turns."""

    url: str
    mode: str  # "json" | "stream"
    seed: bool  # the seed app's POST /chat (headers, no token) instead of POST /api/chat/


async def one_turn(
    session: aiohttp.ClientSession, target: Target, token: str, user: int, request_id: str
) -> tuple[float | None, str]:
    """Sends one turn and reads its whole answer: (seconds to the first token, outcome)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    if target.seed:
        url = f"{target.url}/chat"
        headers = {
            "X-Request-ID": request_id,
            "X-Session-ID": f"00000000-0000-4000-8000-{user:012d}",
            "X-User-ID": f"user-{user}",
        }
        body = {"message": MESSAGE}
    else:
        url = f"{target.url}/api/chat/"
        headers = {"Authorization": f"Token {token}", "X-Request-ID": request_id}
        body = {"message": MESSAGE, "stream": target.mode == "stream"}
        if target.mode == "stream":
            headers["Accept"] = "text/event-stream"
    try:
        async with session.post(url, json=body, headers=headers) as response:
            if response.status != 200:
                await response.read()
                return None, f"HTTP {response.status}"
            if target.mode == "json":
                await response.read()
                return None, "ok"
            return await read_events(response, start)
    except TimeoutError:
        return None, "timeout"
    except aiohttp.ClientError as exc:
        return None, type(exc).__name__


async def read_events(response: aiohttp.ClientResponse, start: float) -> tuple[float | None, str]:
    """Reads an answer's server-sent events to the end without parsing each one.

    Scanning the raw chunks for `event: ` lines costs a fraction of splitting them into lines,
    so the load generator keeps up with many streams at a token every 25 ms.
    """
    loop = asyncio.get_running_loop()
    first_token = None
    outcome = ""
    error = b""
    tail_bytes = b""
    async for chunk in response.content.iter_any():
        data = tail_bytes + chunk
        if first_token is None and b"event: token" in data:
            first_token = loop.time() - start
        if not outcome:
            if b"event: done" in data:
                outcome = "ok"
            elif (at := data.find(b"event: error")) >= 0:
                outcome, error = "error", data[at:]
        elif outcome == "error":
            error += chunk
        tail_bytes = data[-16:]
    if outcome == "ok":
        return first_token, "ok"
    if outcome == "error":
        code = STREAM_ERROR_CODE.search(error)
        return first_token, f"stream error {code.group(1).decode() if code else '?'}"
    return first_token, "stream cut"


async def run_client(spec: dict) -> dict:
    """Closed-loop users from `spec` (written by the orchestrator); returns every turn."""
    loop = asyncio.get_running_loop()
    target = Target(**spec["target"])
    users: list[tuple[int, str]] = spec["users"]
    await asyncio.sleep(max(0.0, spec["start_at"] - time.time()))  # every client at once
    t0 = loop.time()
    cpu0 = time.process_time()
    window_end = t0 + spec["ramp"] + spec["duration"]
    turns: list[list] = []  # [start, end, first token, outcome, request id], times from t0
    open_turns = 0

    async def user_loop(session: aiohttp.ClientSession, index: int, token: str) -> None:
        nonlocal open_turns
        await asyncio.sleep(max(0.0, t0 + spec["ramp"] * index / spec["users_total"] - loop.time()))
        n = 0
        while loop.time() < window_end:
            request_id = f"{spec['prefix']}-{index}-{n}"
            n += 1
            start = loop.time()
            open_turns += 1
            first, outcome = await one_turn(session, target, token, index, request_id)
            open_turns -= 1
            end = loop.time()
            turns.append([start - t0, end - t0, first, outcome, request_id])
            if outcome != "ok":
                await asyncio.sleep(min(spec["error_pause"], max(0.0, window_end - loop.time())))

    lag = [0.0, 0.0]  # the client's own event loop: its longest lateness, and when (from t0)

    async def lag_probe() -> None:
        while True:
            due = loop.time() + LAG_PROBE_S
            await asyncio.sleep(LAG_PROBE_S)
            if loop.time() - due > lag[0]:
                lag[:] = [loop.time() - due, due - t0]

    async def progress() -> None:
        while True:
            await asyncio.sleep(PROGRESS_S)
            done = Counter(t[3] == "ok" for t in turns)
            log(
                f"  {spec['label']}: {loop.time() - t0:3.0f}s {done[True]} answered, "
                f"{done[False]} failed, {open_turns} open"
            )

    connector = aiohttp.TCPConnector(limit=len(users))
    timeout = aiohttp.ClientTimeout(total=spec["timeout"])
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        reporter = asyncio.create_task(progress())
        prober = asyncio.create_task(lag_probe())
        await asyncio.gather(*(user_loop(session, i, token) for i, token in users))
        reporter.cancel()
        prober.cancel()
    return {
        "turns": turns,
        "cpu_s": time.process_time() - cpu0,
        "wall_s": loop.time() - t0,
        "loop_lag_max_s": lag[0],
        "loop_lag_at_s": lag[1],
    }


def client_main(spec_path: Path) -> int:
    spec = json.loads(spec_path.read_text())
    # A client is a user's clock, so it must not stall. With asyncio's own loop and Python's
    # collector, each client process stopped 0.35-0.41 s for a full collection about once a
    # row at 1,000 streamed users (gc callbacks, 2026-12-07), and those answers looked late by
    # as much. Nothing a client keeps needs collecting before it exits.
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
    result = uvloop.run(run_client(spec))
    Path(spec["out"]).write_text(json.dumps(result))
    return 0


# --- Processes on this machine -------------------------------------------------------------------


def children_of(pids: set[int]) -> list[int]:
    """Every process whose parent is in `pids`, read from /proc."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) in pids:
            found.append(int(entry.name))
    return found


def descendants(pid: int) -> list[int]:
    found, level = [], {pid}
    while level:
        level = set(children_of(level))
        found += level
    return found


def rss_mb(pid: int) -> float | None:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


def cpu_seconds(pids) -> float:
    """CPU time of a whole process tree's live members, with their reaped children's (cutime,
    cstime): PostgreSQL's backends come and go within a row."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    return total


def machine_busy_seconds() -> float:
    """CPU time the whole machine has spent busy (all cores), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")


def open_files(pids, path: str) -> int:
    count = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.scandir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    count += os.readlink(fd.path) == path
    return count


def is_worker(pid: int) -> bool:
    """Not multiprocessing's resource tracker (a child of uvicorn's supervisor, not a worker)."""
    try:
        return b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def refreshed_every(seconds: float, pids):
    """`pids` (a callable scanning /proc) called at most once per `seconds`: workers seldom
    change, and scanning /proc every poll cost this process ~8 % of a core."""
    last = {"at": -seconds, "pids": []}

    def cached() -> list[int]:
        if time.monotonic() - last["at"] >= seconds:
            last["at"], last["pids"] = time.monotonic(), pids()
        return last["pids"]

    return cached


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


# --- PostgreSQL ----------------------------------------------------------------------------------


class Postgres:
    """A throwaway cluster on loopback, made as bin/with-postgres makes one (trust auth)."""

    def __init__(self) -> None:
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
        if not bins:
            raise BenchError("PostgreSQL is not installed (apt-get install postgresql)")
        self.bin = bins[-1]
        self.dir = Path(tempfile.mkdtemp(prefix="chat-bench-pg-"))
        self.port = free_port()
        self.started = False

    def _as_pg(self, argv: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *argv] if os.getuid() == 0 else argv

    def start(self) -> str:
        if os.getuid() == 0:
            shutil.chown(self.dir, "postgres")
        data = self.dir / "data"
        for argv in (
            [
                str(self.bin / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
            ],
            [
                str(self.bin / "pg_ctl"),
                *("-D", str(data), "-l", str(self.dir / "server.log"), "-w"),
                *("-o", f"-h 127.0.0.1 -p {self.port} -k {self.dir} -F", "start"),
            ],
        ):
            done = subprocess.run(self._as_pg(argv), capture_output=True, text=True, timeout=120)
            if done.returncode != 0:
                raise BenchError(f"{Path(argv[0]).name} failed: {done.stderr or done.stdout}")
        self.started = True
        log(f"PostgreSQL on 127.0.0.1:{self.port} ({self.dir})")
        return f"postgres://postgres@127.0.0.1:{self.port}/postgres"

    def pids(self) -> list[int]:
        pid_file = self.dir / "data" / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int(pid_file.read_text().splitlines()[0])
            return [pid, *descendants(pid)]
        return []

    def stop(self) -> None:
        if self.started:
            log("stopping PostgreSQL")
            stop = [str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "fast", "-w"]
            subprocess.run(self._as_pg([*stop, "stop"]), capture_output=True, timeout=120)
            self.started = False
        shutil.rmtree(self.dir, ignore_errors=True)


class ConnectionCount:
    """Connections to the app's database right now: (the app's web workers', everybody's)."""

    def __init__(self, database_url: str, db_file: str, pids, web_pids):
        self.db_file = db_file
        self.pids = pids  # callable: the processes that may hold the SQLite file open
        self.web_pids = web_pids  # callable: the app's web workers among them
        self.pg = None
        if database_url.startswith("postgres"):
            import psycopg

            self.pg = psycopg.connect(database_url, autocommit=True)

    def __call__(self) -> tuple[int, int]:
        if self.pg is not None:
            # The app names its connections by role (settings: application_name).
            return self.pg.execute(
                "SELECT count(*) FILTER (WHERE application_name = 'chat-web'), count(*) "
                "FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchone()
        return open_files(self.web_pids(), self.db_file), open_files(self.pids(), self.db_file)

    def close(self) -> None:
        if self.pg is not None:
            self.pg.close()


# --- The stacks under load -----------------------------------------------------------------------


@dataclass
class Stack(App):
    """bench/load.py's App, with gunicorn started as bin/serve starts it and one user per client."""

    database: str = "sqlite"
    tokens: list[str] = field(default_factory=list)
    gunicorn: Proc | None = None
    url: str = ""
    postgres: Postgres | None = None

    def start_gunicorn(self, name: str, port: int, traced: bool = True) -> str:
        argv = [
            str(Path(sys.executable).with_name("gunicorn")),
            *("-c", "gunicorn.conf.py", "--bind", f"127.0.0.1:{port}"),
        ]
        if not WSGI_APP_SETTING.search((ROOT / "gunicorn.conf.py").read_text()):
            argv.append("chatproject.wsgi")  # as bin/serve, while gunicorn.conf.py names no app
        env = {**self.env, "APP_PORT": str(port), "TRACING_ENABLED": str(traced).lower()}
        self.gunicorn = self.procs.start(name, argv, env)
        self.url = f"http://127.0.0.1:{port}"
        log(f"starting {shlex.join(argv[1:])} on {self.url}")
        wait_http(
            f"{self.url}/api/sessions/",
            self.gunicorn,
            timeout=90,
            headers={"Authorization": self.auth},
        )
        return self.url

    def make_users(self, count: int) -> None:
        log(f"making {count} users with DRF tokens")
        output = manage(
            ["shell", "-c", SHELL_USERS.format(count=count)],
            self.env,
            self.tmp / "logs" / "setup.log",
        )
        self.tokens = [line.split()[1] for line in output.splitlines() if line.startswith("TOKEN ")]
        if len(self.tokens) != count:
            raise BenchError(f"made {len(self.tokens)} of {count} users; see {self.tmp / 'logs'}")

    def workers(self) -> list[int]:
        return children_of({self.gunicorn.popen.pid}) if self.gunicorn else []

    def db_holders(self) -> list[int]:
        """gunicorn's workers and the delivery workers: the app's database connections."""
        pids = self.workers()
        for proc in self.procs.procs:
            if proc.name.startswith("worker-") and proc.exited() is None:
                pids += [proc.popen.pid, *descendants(proc.popen.pid)]
        return pids

    def background(self) -> list[int]:
        pids = []
        for proc in self.procs.procs:
            if proc is not self.gunicorn and proc.exited() is None:
                pids += [proc.popen.pid, *descendants(proc.popen.pid)]
        return pids

    @property
    def db_file(self) -> str:
        return str(self.tmp / "db.sqlite3")


def app_env(tmp: Path, mlflow_port: int, model_url: str, database_url: str, extra: dict) -> dict:
    mlflow_url = f"http://127.0.0.1:{mlflow_port}"
    passed = {k: v for k, v in os.environ.items() if k in KEEP_ENV or k.startswith(PASS_PREFIXES)}
    return {
        **passed,
        "DJANGO_SETTINGS_MODULE": "chatproject.settings",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_DOT_ENV": "",
        "DATABASE_URL": database_url,
        "MLFLOW_PORT": str(mlflow_port),
        "MLFLOW_TRACKING_URI": mlflow_url,
        "MLFLOW_UI_URL": mlflow_url,
        "MLFLOW_ARTIFACT_ROOT": str(tmp / "mlartifacts"),
        "MLFLOW_EXPERIMENT_NAME": "bench-concurrency",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # as bin/serve
        "LLM_BASE_URL": model_url,
        "LLM_MODEL": "fake",
        "LLM_TIMEOUT_S": "30",
        "TRACING_ENABLED": "true",
        "PYTHONUNBUFFERED": "1",
        # Many turns from each user: the bench measures capacity, not the per-user throttle.
        "THROTTLE_CHAT": "",
        "THROTTLE_FEEDBACK": "",
        **extra,
    }


def start_stack(database: str, root: Path, model_url: str, args) -> Stack:
    tmp = root / database
    (tmp / "logs").mkdir(parents=True)
    procs = Processes(tmp / "logs")
    postgres = Postgres() if database == "postgres" else None
    stack = None
    try:
        database_url = postgres.start() if postgres else f"sqlite:///{tmp}/db.sqlite3"
        mlflow_port = free_port()
        env = app_env(tmp, mlflow_port, model_url, database_url, args.env)
        stack = Stack(
            tmp=tmp,
            procs=procs,
            env=env,
            mlflow_url=env["MLFLOW_TRACKING_URI"],
            database=database,
            postgres=postgres,
        )
        stack.start_mlflow(mlflow_port)
        workers = [shlex.split(w) for w in DEFAULT_WORKERS]
        stack.prepare_db(workers)
        stack.make_users(max(args.users))
        stack.start_workers(workers, direct=True)
        stack.start_gunicorn("gunicorn", free_port())
        return stack
    except BaseException:
        procs.stop_all()
        if postgres:
            postgres.stop()
        raise


def stop_stack(stack: Stack) -> None:
    stack.procs.stop_all()
    if stack.postgres:
        stack.postgres.stop()


@dataclass
class Seed:
    url: str
    proc: Proc

    def workers(self) -> list[int]:
        return [pid for pid in children_of({self.proc.popen.pid}) if is_worker(pid)]


def start_seed(procs: Processes, model_url: str, workers: int) -> Seed:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k in KEEP_ENV},
        "LLM_BASE_URL": model_url,
        "LLM_MODEL": "fake",
        "LLM_TIMEOUT_S": "30",
        "PYTHONUNBUFFERED": "1",
    }
    argv = [
        sys.executable,
        *("-m", "uvicorn", "seed_app:app", "--app-dir", str(ROOT / "bench")),
        *("--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)),
        "--no-access-log",
    ]
    proc = procs.start("seed-app", argv, env)
    url = f"http://127.0.0.1:{port}"
    log(f"starting the seed app (uvicorn, {workers} workers) on {url}")
    wait_http(f"{url}/health", proc, timeout=60)
    return Seed(url, proc)


# --- A row ---------------------------------------------------------------------------------------


@dataclass
class Row:
    app: str  # "app" | "seed"
    database: str
    users: int
    mode: str
    duration: float
    reply_s: float
    ttft_s: float
    turns: list[list] = field(default_factory=list)
    ramp: float = 0.0
    db_peak: tuple[int, int] | None = None
    rss_mb: dict[int, float] = field(default_factory=dict)  # worker pid -> largest RSS
    model_peak: int = 0
    model_served: int = 0
    model_cancelled: int = 0
    model_busy_at_start: int = 0  # requests still running from the row before
    settle_s: float | None = None
    cpu_pct: dict[str, float] = field(default_factory=dict)
    traces: int | None = None
    drain_s: float | None = None
    client_lag_s: float = 0.0  # the load generator's own longest event-loop lateness
    client_lag_at_s: float = 0.0  # when it was, from the row's start

    @property
    def label(self) -> str:
        where = f" on {self.database}" if self.app == "app" else ""
        return f"{self.app}{where}, {self.users} users, {self.mode}"

    def answered(self) -> list[list]:
        return [t for t in self.turns if t[3] == "ok"]

    def figures(self) -> dict:
        window = (self.ramp, self.ramp + self.duration)
        answered = self.answered()
        in_window = [t for t in answered if window[0] <= t[1] <= window[1]]
        sent_in_window = [t for t in answered if window[0] <= t[0] < window[1]]
        latency = [t[1] - t[0] for t in sent_in_window]
        extra_ms = [(t[2] - self.ttft_s) * 1000 for t in sent_in_window if t[2] is not None]
        errors: dict[str, dict] = defaultdict(
            lambda: {"n": 0, "slowest_s": 0.0, "slowest_at_s": 0.0, "over_1s": 0, "took": []}
        )
        for start, end, _, outcome, _ in self.turns:
            if outcome != "ok":
                error = errors[outcome]
                error["n"] += 1
                error["took"].append(end - start)
                error["over_1s"] += end - start > 1.0
                if end - start > error["slowest_s"]:
                    error["slowest_s"], error["slowest_at_s"] = end - start, start
        for error in errors.values():  # when the slowest was sent (row start: 0) and the p99
            error["p99_s"] = percentile(error.pop("took"), 99)
        turns_per_s = len(in_window) / self.duration
        last_end = max((t[1] for t in self.turns), default=window[1])
        return {
            "app": self.app,
            "database": self.database,
            "users": self.users,
            "mode": self.mode,
            "turns": len(self.turns),
            "answered": len(answered),
            "turns_per_s": turns_per_s,
            "ideal_share": turns_per_s / (self.users / self.reply_s),
            "turn_p50_s": percentile(latency, 50) if latency else None,
            "turn_p99_s": percentile(latency, 99) if latency else None,
            "ttft_extra_p50_ms": percentile(extra_ms, 50) if extra_ms else None,
            "ttft_extra_p99_ms": percentile(extra_ms, 99) if extra_ms else None,
            "errors": dict(errors),
            "db_conns_peak": self.db_peak,
            "rss_mb": sorted(self.rss_mb.values()),
            "model_peak_in_flight": self.model_peak,
            "model_served": self.model_served,
            "model_cancelled": self.model_cancelled,
            "model_busy_at_start": self.model_busy_at_start,
            "settle_s": self.settle_s,
            "traces_stored": self.traces,
            "trace_drain_s": self.drain_s,
            "cpu_pct": self.cpu_pct,
            "tail_s": max(0.0, last_end - window[1]),
            "client_loop_lag_max_s": self.client_lag_s,
            "client_loop_lag_at_s": self.client_lag_at_s,
        }


def run_row(row: Row, target: Target, tokens: list[str], args, model_url: str, watch) -> None:
    """Runs the users in client processes while `watch` samples the machine; fills `row`."""
    tmp = Path(tempfile.mkdtemp(prefix="chat-bench-clients-"))
    # 500 users in one process left its loop up to 0.5 s late at 1,000 streamed users, and
    # that lateness showed as slow 503s; 250 each kept it under 0.25 s.
    clients = args.clients or math.ceil(row.users / 250)
    clients = min(clients, row.users)
    prefix = f"{secrets.token_hex(3)}{row.users}{row.mode[0]}"
    start_at = time.time() + 2.0  # the clients' imports and set-up fall before it
    base = get_json(f"{model_url}/stats?reset=1")
    row.model_busy_at_start = base["in_flight"]
    popens = []
    try:
        for k in range(clients):
            spec = {
                "target": target.__dict__,
                "users": [(i, tokens[i] if tokens else "") for i in range(k, row.users, clients)],
                "users_total": row.users,
                "start_at": start_at,
                "ramp": row.ramp,
                "duration": row.duration,
                "timeout": args.client_timeout,
                "error_pause": args.error_pause,
                "prefix": prefix,
                "label": f"client {k + 1}/{clients}" if clients > 1 else "client",
                "out": str(tmp / f"out-{k}.json"),
            }
            path = tmp / f"spec-{k}.json"
            path.write_text(json.dumps(spec))
            popens.append(
                subprocess.Popen(
                    [*outside(args), sys.executable, __file__, "--client", str(path)], cwd=ROOT
                )
            )
        time.sleep(max(0.0, start_at - time.time()))
        watch.start()
        deadline = start_at + row.ramp + row.duration + args.client_timeout + args.error_pause + 30
        next_progress = start_at + PROGRESS_S
        while any(p.poll() is None for p in popens):
            if time.time() > deadline:
                raise BenchError(f"{row.label}: client processes still running; killed")
            watch.sample()
            if time.time() >= next_progress:
                next_progress += PROGRESS_S
                stats = get_json(f"{model_url}/stats")
                log(
                    f"  {row.label}: model {stats['in_flight']} in flight "
                    f"(peak {stats['peak_in_flight']}), {watch.describe()}"
                )
            time.sleep(POLL_S)
        wall = time.time() - start_at
        cpu = 0.0
        for k, popen in enumerate(popens):
            if popen.returncode != 0:
                raise BenchError(f"{row.label}: client process {k + 1} exited {popen.returncode}")
            result = json.loads((tmp / f"out-{k}.json").read_text())
            row.turns += result["turns"]
            cpu += result["cpu_s"]
            if result["loop_lag_max_s"] > row.client_lag_s:
                row.client_lag_s = result["loop_lag_max_s"]
                row.client_lag_at_s = result["loop_lag_at_s"]
        watch.finish(row)
        row.cpu_pct["load"] = 100 * cpu / max(wall, 1e-9)
        # What else ran meanwhile (the machine may be shared): all busy CPU minus the parts.
        machine = row.cpu_pct.pop(MACHINE)
        row.cpu_pct["other"] = max(0.0, machine - sum(row.cpu_pct.values()))
        stats = get_json(f"{model_url}/stats")
        row.model_peak = stats["peak_in_flight"]
        row.model_served = stats["served"] - base["served"]
        row.model_cancelled = stats["cancelled"] - base["cancelled"]
    finally:
        for popen in popens:
            if popen.poll() is None:
                popen.kill()
                popen.wait()
        shutil.rmtree(tmp, ignore_errors=True)


class Watch:
    """Samples, during a row: database connections, workers' RSS and the CPU of each part."""

    def __init__(self, workers, parts: dict, connections: ConnectionCount | None):
        self.workers = workers  # callable: pids whose RSS is reported
        self.parts = parts  # name -> callable: pids, for CPU
        self.connections = connections
        self.db_peak: tuple[int, int] | None = None
        self.rss: dict[int, float] = {}
        self.cpu0: dict[str, float] = {}
        self.t0 = 0.0

    def start(self) -> None:
        self.db_peak = None
        self.rss = {}
        self.cpu0 = {name: cpu_seconds(pids()) for name, pids in self.parts.items()}
        self.cpu0[MACHINE] = machine_busy_seconds()
        self.cpu0[BENCH] = time.process_time()
        self.t0 = time.monotonic()

    def sample(self) -> None:
        if self.connections is not None:
            web, every = self.connections()
            if self.db_peak is not None:
                web, every = max(web, self.db_peak[0]), max(every, self.db_peak[1])
            self.db_peak = (web, every)
        for pid in self.workers():
            if (mb := rss_mb(pid)) is not None:
                self.rss[pid] = max(self.rss.get(pid, 0.0), mb)

    def describe(self) -> str:
        rss = ", ".join(f"{mb:.0f}" for mb in sorted(self.rss.values()))
        conns = (
            ""
            if self.db_peak is None
            else "DB connections peak {} web, {} all, ".format(*self.db_peak)
        )
        return f"{conns}workers' RSS {rss} MB"

    def finish(self, row: Row) -> None:
        wall = max(time.monotonic() - self.t0, 1e-9)
        for name, pids in self.parts.items():
            row.cpu_pct[name] = 100 * (cpu_seconds(pids()) - self.cpu0[name]) / wall
        row.cpu_pct[BENCH] = 100 * (time.process_time() - self.cpu0[BENCH]) / wall
        row.cpu_pct[MACHINE] = 100 * (machine_busy_seconds() - self.cpu0[MACHINE]) / wall
        row.db_peak = self.db_peak
        row.rss_mb = dict(self.rss)


def drain_traces(stack: Stack, row: Row, timeout: float) -> None:
    """Waits until every answered turn's trace is in the tracking server's database."""
    waiting = {t[4] for t in row.answered()}
    answered = len(waiting)
    started = time.monotonic()
    path = stack.tmp / "mlflow-server.db"
    next_progress = started + PROGRESS_S
    while waiting:
        with contextlib.closing(
            sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        ) as db:
            ids = sorted(waiting)
            for at in range(0, len(ids), 500):
                batch = ids[at : at + 500]
                marks = ",".join("?" * len(batch))
                query = "SELECT client_request_id FROM trace_info WHERE client_request_id IN "
                found = db.execute(f"{query}({marks})", batch).fetchall()
                waiting -= {rid for (rid,) in found}
        if not waiting or time.monotonic() - started > timeout:
            break
        if time.monotonic() >= next_progress:
            next_progress += PROGRESS_S
            log(f"  {row.label}: {len(waiting)} of {answered} traces not in MLflow yet")
        time.sleep(0.5)
    row.traces = answered - len(waiting)
    row.drain_s = None if waiting else time.monotonic() - started


def settle(row: Row, model_url: str, timeout: float, quiet_s: float = 1.0) -> None:
    """Waits until the app has left the model alone for `quiet_s`: turns whose users gave up
    may still be running (or queued), and would weigh on the next row."""
    started = time.monotonic()
    quiet_since = None
    next_progress = started + PROGRESS_S
    while time.monotonic() - started < timeout:
        busy = get_json(f"{model_url}/stats")["in_flight"]
        now = time.monotonic()
        if busy:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = now
        elif now - quiet_since >= quiet_s:
            row.settle_s = quiet_since - started
            return
        if busy and now >= next_progress:
            next_progress += PROGRESS_S
            log(f"  {row.label}: the app still has {busy} requests at the model; waiting")
        time.sleep(0.1)
    row.settle_s = None


async def warm_up(target: Target, tokens: list[str], turns: int = 4) -> None:
    """First turns load code and open connections; each must be answered."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        outcomes = await asyncio.gather(
            *(
                one_turn(
                    session, target, tokens[i] if tokens else "", i, f"warm-{secrets.token_hex(4)}"
                )
                for i in range(turns)
            )
        )
    failed = [outcome for _, outcome in outcomes if outcome != "ok"]
    if failed:
        raise BenchError(f"warm-up of {target.url} ({target.mode}) failed: {failed}")


# --- Report --------------------------------------------------------------------------------------


def fmt(value, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def errors_cell(errors: dict) -> str:
    if not errors:
        return "0"
    return ", ".join(f"{kind} ×{e['n']}" for kind, e in sorted(errors.items()))


def print_table(rows: list[dict]) -> None:
    columns = (
        ("app", lambda r: r["app"]),
        ("db", lambda r: r["database"]),
        ("users", lambda r: str(r["users"])),
        ("mode", lambda r: r["mode"]),
        ("turns/s", lambda r: f"{r['turns_per_s']:.1f}"),
        ("% ideal", lambda r: f"{100 * r['ideal_share']:.0f}"),
        ("turn p50 s", lambda r: fmt(r["turn_p50_s"])),
        ("turn p99 s", lambda r: fmt(r["turn_p99_s"])),
        ("TTFT+ p50 ms", lambda r: fmt(r["ttft_extra_p50_ms"], ".0f")),
        ("TTFT+ p99 ms", lambda r: fmt(r["ttft_extra_p99_ms"], ".0f")),
        ("errors", lambda r: errors_cell(r["errors"])),
        (
            "DB conns web / all",
            lambda r: "-" if r["db_conns_peak"] is None else "{} / {}".format(*r["db_conns_peak"]),
        ),
        ("RSS MB", lambda r: " / ".join(f"{mb:.0f}" for mb in r["rss_mb"]) or "-"),
        (
            "traces",
            lambda r: (
                "-" if r["traces_stored"] is None else f"{r['traces_stored']}/{r['answered']}"
            ),
        ),
        ("model peak", lambda r: str(r["model_peak_in_flight"])),
    )
    print("| " + " | ".join(title for title, _ in columns) + " |")
    print("|" + "|".join("---" for _ in columns) + "|")
    for row in rows:
        print("| " + " | ".join(cell(row) for _, cell in columns) + " |")
    print()
    for row in rows:
        notes = [
            "CPU % of a core: "
            + ", ".join(f"{name} {pct:.0f}" for name, pct in row["cpu_pct"].items())
        ]
        notes.append(f"last open turn ended {row['tail_s']:.1f}s after the window")
        if (lag := row.get("client_loop_lag_max_s")) is not None:
            at = row.get("client_loop_lag_at_s")
            when = f" (at {at:.1f}s)" if at is not None else ""
            notes.append(f"load generator's own loop late by at most {lag:.2f}s{when}")
        if row["traces_stored"] is not None:
            drain = row["trace_drain_s"]
            notes.append(
                "traces: " + ("not all in time" if drain is None else f"all in {drain:.1f}s")
            )
        for kind, e in sorted(row["errors"].items()):
            notes.append(
                f"{kind}: slowest {e['slowest_s']:.2f}s (sent at {e.get('slowest_at_s', 0):.1f}s), "
                f"p99 {e.get('p99_s', 0):.2f}s, over 1 s: {e.get('over_1s', 0)}"
            )
        notes.append(
            f"model: {row['model_served']} replies, {row['model_cancelled']} cancelled by the app"
        )
        if row["model_busy_at_start"]:
            notes.append(f"{row['model_busy_at_start']} model requests left from the row before")
        if row["settle_s"] is None:
            notes.append("the app was still calling the model at the settle timeout")
        elif row["settle_s"] > 1.5:
            notes.append(f"the app went on calling the model for {row['settle_s']:.0f}s after")
        print(f"- {row['app']} {row['database']} {row['users']} {row['mode']}: " + "; ".join(notes))


# --- Main ----------------------------------------------------------------------------------------


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int_list, default=[8, 32, 128, 512, 1000])
    parser.add_argument("--modes", default="json,stream", help="json, stream or both (default)")
    parser.add_argument("--duration", type=float, default=20.0, help="window per row, s (20)")
    parser.add_argument(
        "--ramp", type=float, help="users start spread over this many s (default: one reply)"
    )
    parser.add_argument(
        "--databases", default="sqlite", help="sqlite, postgres or both: sqlite,postgres"
    )
    parser.add_argument("--database", dest="databases", help="the same as --databases")
    parser.add_argument(
        "--seed-users",
        type=int_list,
        help="users for the seed app's rows (JSON; default: --users; 0: none)",
    )
    parser.add_argument("--seed-workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--ttft-ms", type=float, default=400.0, help="model: to first token (400)")
    parser.add_argument("--tokens", type=int, default=120, help="model: tokens a reply (120)")
    parser.add_argument("--token-ms", type=float, default=25.0, help="model: between tokens (25)")
    parser.add_argument("--client-timeout", type=float, default=60.0, help="per turn, s (60)")
    parser.add_argument(
        "--outside-priority",
        type=int,
        default=10,
        metavar="N",
        help="run the fake model and the load generator at nice -N (needs root; 0: as the app): "
        "they stand for other machines, whose lateness is not the app's (default 10)",
    )
    parser.add_argument(
        "--error-pause", type=float, default=1.0, help="a user's pause after a failed turn (1 s)"
    )
    parser.add_argument(
        "--clients", type=int, help="load generator processes (default: one per 250 users)"
    )
    parser.add_argument(
        "--drain-timeout", type=float, default=120.0, help="longest wait for traces, s (120)"
    )
    parser.add_argument(
        "--settle-timeout",
        type=float,
        default=120.0,
        help="after a row, longest wait for the app to stop calling the model, s (120)",
    )
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="more app settings"
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, stores)")
    parser.add_argument("--client", type=Path, help=argparse.SUPPRESS)  # a load generator process
    args = parser.parse_args()
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    args.databases = [d.strip() for d in args.databases.split(",") if d.strip()]
    if bad := set(args.modes) - {"json", "stream"}:
        parser.error(f"unknown mode(s): {', '.join(sorted(bad))}")
    if bad := set(args.databases) - {"sqlite", "postgres"}:
        parser.error(f"unknown database(s): {', '.join(sorted(bad))}")
    if args.seed_users is None:
        args.seed_users = args.users
    args.seed_users = [u for u in args.seed_users if u > 0]
    try:
        args.env = dict(item.split("=", 1) for item in args.env)
    except ValueError:
        parser.error("--env takes NAME=VALUE")
    return args


def main() -> int:
    args = parse_args()
    if args.client:
        return client_main(args.client)
    signal_setup()
    root = Path(tempfile.mkdtemp(prefix="chat-bench-concurrency-"))
    (root / "logs").mkdir()
    log(f"temp dir {root}")
    rows: list[Row] = []
    problems: list[str] = []
    keep, code = True, 0
    model_procs = Processes(root / "logs")
    try:
        model = start_model(model_procs, args)
        for database in args.databases:
            problems += bench_app(database, root, model, args, rows)
        if args.seed_users:
            bench_seed(root, model, args, rows)
        problems += [p.describe_exit() for p in model_procs.procs if p.exited() is not None]
        keep = args.keep or bool(problems)
    except BenchError as exc:
        log(f"FAILED: {exc}")
        code = 1
    except KeyboardInterrupt:
        log("interrupted")
        code = 130
    finally:
        model_procs.stop_all()
        if keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    if rows:  # the rows done so far, also when a later one failed
        report(rows, problems, args)
    return code


def signal_setup() -> None:
    signal.signal(signal.SIGTERM, _raise_interrupt)
    # A thousand users hold a thousand sockets here and in the app.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < 8192:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(8192, hard), hard))


@dataclass
class Model:
    url: str  # without /v1
    pid: int


def outside(args) -> list[str]:
    """The prefix that starts a process standing for another machine (--outside-priority)."""
    return ["nice", "-n", str(-args.outside_priority)] if args.outside_priority else []


def start_model(procs: Processes, args) -> Model:
    port = free_port()
    argv = outside(args) + fake_model.command_line(
        port=port, ttft_ms=args.ttft_ms, tokens=args.tokens, token_ms=args.token_ms
    )
    proc = procs.start("fake-model", argv, dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/stats", proc, timeout=30)
    log(f"fake model on {url}/v1 ({args.ttft_ms:g} ms + {args.tokens} x {args.token_ms:g} ms)")
    return Model(url, proc.popen.pid)


def reply_seconds(args) -> float:
    return (args.ttft_ms + args.tokens * args.token_ms) / 1000


def new_row(app: str, database: str, users: int, mode: str, args) -> Row:
    row = Row(app, database, users, mode, args.duration, reply_seconds(args), args.ttft_ms / 1000)
    row.ramp = args.ramp if args.ramp is not None else row.reply_s
    log(f"row: {row.label} (ramp {row.ramp:g}s, window {args.duration:g}s)")
    return row


def bench_app(database: str, root: Path, model: Model, args, rows: list[Row]) -> list[str]:
    stack = start_stack(database, root, model.url + "/v1", args)
    try:
        for mode in args.modes:
            asyncio.run(warm_up(Target(stack.url, mode, seed=False), stack.tokens))
        parts = {
            "app": lambda: [stack.gunicorn.popen.pid, *stack.workers()],
            "model": lambda: [model.pid],
            "background": stack.background,
        }
        if stack.postgres:
            parts["postgres"] = stack.postgres.pids
        db_holders = refreshed_every(1.0, stack.db_holders)
        connections = ConnectionCount(
            stack.env["DATABASE_URL"],
            stack.db_file,
            db_holders,
            refreshed_every(1.0, stack.workers),
        )
        watch = Watch(refreshed_every(1.0, stack.workers), parts, connections)
        try:
            for users in args.users:
                for mode in args.modes:
                    row = new_row("app", database, users, mode, args)
                    target = Target(stack.url, mode, seed=False)
                    run_row(row, target, stack.tokens, args, model.url, watch)
                    drain_traces(stack, row, args.drain_timeout)
                    settle(row, model.url, args.settle_timeout)
                    rows.append(row)
                    summary(row)
        finally:
            connections.close()
        return stack.dead() + stack.log_problems()
    finally:
        stop_stack(stack)


def bench_seed(root: Path, model: Model, args, rows: list[Row]) -> None:
    procs = Processes(root / "logs")
    try:
        seed = start_seed(procs, model.url + "/v1", args.seed_workers)
        target = Target(seed.url, "json", seed=True)
        asyncio.run(warm_up(target, [], turns=2 * args.seed_workers))
        parts = {
            "app": lambda: [seed.proc.popen.pid, *seed.workers()],
            "model": lambda: [model.pid],
        }
        watch = Watch(refreshed_every(1.0, seed.workers), parts, None)
        for users in args.seed_users:
            row = new_row("seed", "-", users, "json", args)
            run_row(row, target, [], args, model.url, watch)
            settle(row, model.url, args.settle_timeout)
            rows.append(row)
            summary(row)
    finally:
        procs.stop_all()


def summary(row: Row) -> None:
    f = row.figures()
    log(
        f"  {row.label}: {f['turns_per_s']:.1f} turns/s ({100 * f['ideal_share']:.0f} % of "
        f"ideal), p50 {fmt(f['turn_p50_s'])}s p99 {fmt(f['turn_p99_s'])}s, errors "
        f"{errors_cell(f['errors'])}, traces {fmt(f['traces_stored'], 'd')}/{f['answered']}"
    )


def report(rows: list[Row], problems: list[str], args) -> None:
    figures = [row.figures() for row in rows]
    print()
    print(
        f"host: {os.cpu_count()} cores, load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}"
        f"; model: {args.ttft_ms:g} ms to first token, {args.tokens} tokens x {args.token_ms:g} ms "
        f"({reply_seconds(args):.2f} s a reply); window {args.duration:g}s per row after a ramp of "
        f"{args.ramp if args.ramp is not None else reply_seconds(args):g}s"
    )
    gunicorn_conf = (ROOT / "gunicorn.conf.py").read_text()
    served = (
        "gunicorn.conf.py's wsgi_app"
        if WSGI_APP_SETTING.search(gunicorn_conf)
        else "chatproject.wsgi"
    )
    passed = sorted(k for k in os.environ if k.startswith(PASS_PREFIXES)) + sorted(args.env)
    print(
        f"app: gunicorn -c gunicorn.conf.py ({served}); passed to it: "
        f"{', '.join(passed) or 'nothing'}"
        f"; seed: uvicorn bench/seed_app.py, {args.seed_workers} workers"
    )
    print()
    print_table(figures)
    for problem in problems:
        print(f"PROBLEM: {problem}")
    if args.json:
        args.json.write_text(
            json.dumps({"args": vars_for_json(args), "rows": figures}, indent=2) + "\n"
        )
        log(f"figures written to {args.json}")


def vars_for_json(args) -> dict:
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}


if __name__ == "__main__":
    sys.exit(main())
