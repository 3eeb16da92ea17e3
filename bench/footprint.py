"""Memory and start-up of what `make run` starts, against a bare Django + DRF process.

Starts the stack as `make run` does (tests/stack.py: an `mlflow server` with
MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false, gunicorn with gunicorn.conf.py, the trace and feedback
delivery workers) on free loopback ports in a temporary folder, sends `--turns` turns and rates
every fifth, waits until both workers have delivered everything, then reads each process's RSS
(and PSS, which shares forked pages fairly) from /proc. All ratios come from this one run.

Two baselines: a bare Django + DRF process that has answered one request (Django's test client),
and the same bare app served by gunicorn's stock sync worker after as many requests as the app
worker answered turns (a served process keeps some of what serving allocated).

    .venv/bin/python bench/footprint.py --turns 1000
    .venv/bin/python bench/footprint.py --worker-python .venv-sdk/bin/python  # SDK deliverers
    .venv/bin/python bench/footprint.py --worker-python .venv-sdk/bin/python --direct  # make run
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.stack import Stack  # noqa: E402

MB = 1024 * 1024

# A bare Django + DRF app: settings, apps, one API view.
BARE_APP = textwrap.dedent(
    """
    import django
    from django.conf import settings
    settings.configure(
        DEBUG=False, SECRET_KEY="x", ALLOWED_HOSTS=["testserver", "127.0.0.1"],
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "rest_framework"],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        REST_FRAMEWORK={"DEFAULT_AUTHENTICATION_CLASSES": [], "DEFAULT_PERMISSION_CLASSES": []},
    )
    django.setup()
    from django.urls import path
    from rest_framework.response import Response
    from rest_framework.views import APIView

    class Ping(APIView):
        def post(self, request):
            return Response({"echo": request.data})

    urlpatterns = [path("ping", Ping.as_view())]
    """
)

# A process that has done what any Django + DRF app does: settings, apps, one API request.
BARE = BARE_APP + textwrap.dedent(
    """
    from django.test import Client
    assert Client().post("/ping", {"a": 1}, content_type="application/json").status_code == 200
    print(open("/proc/self/status").read())
    """
)

# The same app as a module gunicorn serves (its stock sync worker, WSGI): a process that has
# served as many requests as the app worker, for a baseline that has done the same amount of work.
BARE_SERVED = BARE_APP + textwrap.dedent(
    """
    from django.core.wsgi import get_wsgi_application
    application = get_wsgi_application()
    """
)


def served_bare_rss(root: Path, requests_n: int, concurrency: int) -> tuple[int, int]:
    """RSS of a bare Django + DRF app's gunicorn worker after one request and after `requests_n`."""
    import requests

    from tests.mlflow_server import free_port

    (root / "bare_app.py").write_text(BARE_SERVED)
    port = free_port()
    gunicorn = str(Path(sys.executable).with_name("gunicorn"))
    log = open(root / "bare-app.log", "ab")  # noqa: SIM115 - closed with the process
    master = subprocess.Popen(
        [gunicorn, "--chdir", str(root), "-w", "1", "-b", f"127.0.0.1:{port}", "bare_app"],
        cwd=root,  # not the repo's gunicorn.conf.py
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        http = requests.Session()
        url = f"http://127.0.0.1:{port}/ping"
        deadline = time.monotonic() + 60
        while True:
            try:
                if http.post(url, json={"a": 1}, timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the bare app did not start; see bare-app.log")
            time.sleep(0.2)
        (worker,) = [pid for pid in tree(master.pid) if pid != master.pid]
        after_one = rss(worker)

        def ping(n: int) -> None:
            response = http.post(url, json={"message": f"question {n}"}, timeout=30)
            assert response.status_code == 200, response.text

        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(ping, range(requests_n)))
        return after_one, rss(worker)
    finally:
        master.terminate()
        master.wait(timeout=30)
        log.close()


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def rss(pid: int) -> int:
    return status_kb(pid, "VmRSS") * 1024


def pss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree(pid: int) -> list[int]:
    """The process and all its descendants."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        out = subprocess.run(["pgrep", "-P", str(current)], capture_output=True, text=True)
        todo += [int(p) for p in out.stdout.split()]
    return found


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:90]


def loads_numpy(pid: int) -> bool:
    """Whether the process mapped numpy/pandas/pyarrow (what `import mlflow` drags in)."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return any(name in maps for name in ("/numpy/", "/pandas/", "/pyarrow/"))


def bare_django_rss() -> int:
    out = subprocess.run([sys.executable, "-c", BARE], capture_output=True, text=True, check=True)
    line = next(x for x in out.stdout.splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def wait_delivered(stack: Stack, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        health = stack.health()
        pending = health["traces"]["pending"] + health["feedback"].get("pending", 0)
        if not pending or time.monotonic() > deadline:
            return health
        time.sleep(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=1000)
    parser.add_argument("--rate-every", type=int, default=5, help="rate every Nth turn")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--worker-python", default=sys.executable, help="interpreter of deliverers")
    parser.add_argument(
        "--direct",
        action="store_true",
        help="the trace worker on this interpreter, writing into the server's database (make run)",
    )
    parser.add_argument("--drain-timeout", type=float, default=300)
    parser.add_argument(
        "--importtime",
        action="store_true",
        help="run gunicorn with -X importtime and report whether its workers imported mlflow "
        "(slows start-up: start time is then not representative)",
    )
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="chat-footprint-"))
    env = {"DJANGO_DOT_ENV": "", "LOG_LEVEL": "WARNING"}
    if args.importtime:
        env["PYTHONPROFILEIMPORTTIME"] = "1"
    stack = Stack(root, **env)
    bare = bare_django_rss()
    bare_served_start, bare_served = served_bare_rss(root, args.turns, args.concurrency)
    try:
        started = time.monotonic()
        stack.mlflow.start()
        mlflow_ready = time.monotonic() - started
        for command in (("migrate", "--noinput"), ("collectstatic", "--noinput", "-v0")):
            assert stack.manage(*command).returncode == 0
        script = (
            "from django.contrib.auth.models import User;"
            "from rest_framework.authtoken.models import Token;"
            "u, _ = User.objects.get_or_create(username='load');"
            "print(Token.objects.get_or_create(user=u)[0].key)"
        )
        stack.token = stack.manage("shell", "-c", script).stdout.strip().splitlines()[-1]
        started = time.monotonic()
        stack.start_app()
        app_ready = time.monotonic() - started
        for command in ("deliver_traces", "deliver_feedback"):
            python, env = args.worker_python, None
            if command == "deliver_traces" and args.direct:
                # As make run: into the tracking server's database, on the full package.
                python = sys.executable
                env = {
                    **stack.env,
                    "MLFLOW_TRACKING_URI": f"sqlite:///{stack.mlflow.root}/mlflow.db",
                }
            stack._spawn(command, [python, "manage.py", command, "--loop"], env)
        workers_before = {pid: rss(pid) for pid in stack.app_workers()}

        def turn(n: int) -> None:
            response = stack.chat(f"fp-{n}")
            assert response.status_code == 200, response.text
            if n % args.rate_every == 0:
                rated = stack.rate(response.json()["message_id"], n % 2 == 0)
                assert rated.status_code in (200, 201), rated.text

        started = time.monotonic()
        with ThreadPoolExecutor(args.concurrency) as pool:
            list(pool.map(turn, range(args.turns)))
        sent_s = time.monotonic() - started
        health = wait_delivered(stack, args.drain_timeout)
        drained_s = time.monotonic() - started

        master = stack.processes["app"].pid
        workers = stack.app_workers()
        deliverers = {c: stack.processes[c].pid for c in ("deliver_traces", "deliver_feedback")}
        groups = {
            "mlflow server": tree(stack.mlflow.process.pid),
            "gunicorn (master + workers)": tree(master),
            **{c: tree(pid) for c, pid in deliverers.items()},
        }
        print(
            f"turns {args.turns} (rated {len(range(0, args.turns, args.rate_every))}) "
            f"sent in {sent_s:.1f}s, delivered after {drained_s:.1f}s: "
            f"traces {health['traces']}, feedback {health['feedback']}"
        )
        print(
            f"bare Django + DRF process (settings, apps, one API request): {bare / MB:.1f} MB RSS"
        )
        print()
        print(f"{'process':<44} {'RSS MB':>8} {'PSS MB':>8}  numpy/pandas loaded")
        total_rss = total_pss = 0
        for name, pids in groups.items():
            for pid in pids:
                r, p = rss(pid), pss(pid)
                total_rss, total_pss = total_rss + r, total_pss + p
                label = f"{name}: {cmdline(pid)}"[:44]
                print(f"{label:<44} {r / MB:8.1f} {p / MB:8.1f}  {loads_numpy(pid)}")
        print(f"{'total of what make run starts':<44} {total_rss / MB:8.1f} {total_pss / MB:8.1f}")
        print()
        worst = max(rss(pid) for pid in workers)
        print(
            f"app worker RSS after {args.turns} turns / bare Django+DRF: "
            f"{worst / MB:.1f} / {bare / MB:.1f} = {worst / bare:.2f}x "
            f"(at start: {max(workers_before.values()) / MB:.1f} MB)"
        )
        print(
            f"app worker RSS after {args.turns} turns / a bare Django+DRF app's gunicorn worker "
            f"(sync, WSGI) after {args.turns} requests: {worst / MB:.1f} / "
            f"{bare_served / MB:.1f} = {worst / bare_served:.2f}x "
            f"(that worker after its first request: {bare_served_start / MB:.1f} MB)"
        )
        for name, pid in deliverers.items():
            print(
                f"{name} RSS / bare Django+DRF: {rss(pid) / MB:.1f} / {bare / MB:.1f} = "
                f"{rss(pid) / bare:.2f}x  ({cmdline(pid).split()[0]})"
            )
        print(f"total RSS of make run: {total_rss / MB:.0f} MB (PSS {total_pss / MB:.0f} MB)")
        print(
            f"start: mlflow server healthy {mlflow_ready:.1f}s; gunicorn (2 workers) "
            f"answering /health/ {app_ready:.1f}s after spawn"
        )
        if args.importtime:
            log = (root / "app.log").read_text(errors="replace").splitlines()
            timed = [line.split("|")[-1].strip() for line in log if line.startswith("import time:")]
            mlflow = sorted({name for name in timed if name.split(".")[0] == "mlflow"})
            print(
                f"gunicorn (master and workers) imported {len(timed)} modules, "
                f"{len(mlflow)} of them mlflow*: {mlflow[:5]}"
            )
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
