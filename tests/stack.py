"""A running mvmatch for end-to-end tests: migrated database, Celery worker, web server.

Every part is the process a deployment runs (prefork worker, the web server of `web_command`); the
test talks to it over HTTP, and reads the database through `manage.py shell` only to check.
"""
from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
CELERY_APP = "workers"  # the module `celery -A` loads
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15")  # the test Redis (deploy/test.sh)
POSTGRES = os.environ.get("MVMATCH_TEST_POSTGRES", "postgres://postgres:mvmatch-test@127.0.0.1:5432/postgres")
TASKS_MODULE = "matching.tasks"  # where ingest_video / ingest_product live


def unused_port() -> int:
    """A port nothing listens on now. Another process may take it before ours binds it: callers retry."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    """One deployment: its environment, its processes (by name) and an HTTP session to its API."""

    web_start_attempts = 5
    web_start_timeout = 60  # seconds for the web server to answer (it loads the model before its workers fork)
    # A first lookup loads the model into the web process: slow on a loaded 2-core machine.
    request_timeout = 120

    def __init__(self, workdir: Path, *, broker: str | None = None, database_url: str | None = None,
                 milvus_uri: str | None = None, redis_key_prefix: str | None = None,
                 environment: dict[str, str] | None = None):
        """``environment``: more variables for every process of the stack (e.g. MVMATCH_ML_QUEUE)."""
        self.workdir = workdir
        self.name = f"e2e-{uuid.uuid4().hex[:10]}"  # the worker's node name, unique per stack
        self.env = {**os.environ, "DJANGO_SETTINGS_MODULE": "mvmatch.settings", "MVMATCH_VAR_DIR": str(workdir),
                    "MVMATCH_LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1", "MILVUS_URI": milvus_uri or ""}
        if broker:
            self.env["CELERY_BROKER_URL"] = broker
            self.env["CELERY_RESULT_BACKEND"] = broker
        if redis_key_prefix:
            self.env["MVMATCH_REDIS_KEY_PREFIX"] = redis_key_prefix
        if database_url:
            self.env["DATABASE_URL"] = database_url
        self.env.update(environment or {})
        self.procs: dict[str, subprocess.Popen] = {}
        self.port: int | None = None
        self.session = requests.Session()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- processes -------------------------------------------------------------------------
    def manage(self, *args: str, timeout: float = 300) -> str:
        out = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, capture_output=True,
                             text=True, timeout=timeout)
        if out.returncode:
            raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
        return out.stdout

    def shell(self, code: str, timeout: float = 300) -> str:
        return self.manage("shell", "-v", "0", "-c", code, timeout=timeout).strip()

    def spawn(self, name: str, *cmd: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start ``cmd`` as process ``name`` (its output in ``name``.log); ``env`` adds to the stack's environment."""
        with open(self.workdir / f"{name}.log", "w") as log:
            proc = subprocess.Popen([sys.executable, *cmd], cwd=ROOT, env={**self.env, **(env or {})}, stdout=log,
                                    stderr=subprocess.STDOUT)
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text(errors="replace")

    def start(self, bundle: Path) -> "Stack":
        self.install(bundle)
        self.start_worker()
        self.start_web()
        return self

    def install(self, bundle: Path) -> None:
        """What a deployment does once before its processes start: migrations, the ontology, the model."""
        self.manage("migrate", "--noinput", "-v0")
        self.manage("load_ontology")
        self.manage("register_model", str(bundle), "--name", "e2e", "--activate")

    def worker_command(self, name: str = "", queues: str | None = None) -> list[str]:
        """The worker as a deployment runs it: the prefork pool (one child here: the machine has 2 cores).
        ``name`` tells a further worker's node name apart; ``queues`` (comma-separated) defaults to every queue."""
        from django.conf import settings  # the stack's environment is this process's: the same queue name

        queues = queues or f"{settings.MVMATCH_ML_QUEUE},celery"
        return ["-m", "celery", "-A", CELERY_APP, "worker", "-Q", queues, "--pool", "prefork",
                "--concurrency", "1", "-n", f"{self.name}{name}@%h", "--loglevel", "INFO", "--without-gossip",
                "--without-mingle", "--without-heartbeat"]

    def start_worker(self, name: str = "worker", queues: str | None = None,
                     env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start a worker as process ``name`` (node name ``<stack>-<name>@host`` unless it is the first,
        "worker"), consuming ``queues``, with ``env`` added to its environment (e.g. MVMATCH_DEVICE)."""
        return self.spawn(name, *self.worker_command(self.node_name(name).removeprefix(self.name), queues), env=env)

    def node_name(self, name: str = "worker") -> str:
        """The Celery node name of worker process ``name``, without its host."""
        return self.name if name == "worker" else f"{self.name}-{name}"

    def web_command(self, port: int) -> list[str]:
        """The web server as the demo and a deployment run it (gunicorn, deploy/gunicorn.conf.py), on ``port``."""
        return ["-m", "gunicorn", "-c", "deploy/gunicorn.conf.py", "--bind", f"127.0.0.1:{port}"]

    def start_web(self) -> subprocess.Popen:
        """Start the web server on a free port; if another process took the port first, try another."""
        for _ in range(self.web_start_attempts):
            self.port = unused_port()
            proc = self.spawn("web", *self.web_command(self.port))
            deadline = time.monotonic() + self.web_start_timeout
            while time.monotonic() < deadline and proc.poll() is None and not self._answers():
                time.sleep(0.3)
            if proc.poll() is None and self._answers():
                return proc
            if proc.poll() is None:
                raise TimeoutError(f"web server did not answer on {self.base} within {self.web_start_timeout} s:\n"
                                   f"{self.log('web')[-3000:]}")
            if "in use" not in self.log("web"):  # runserver: "port is already in use"; gunicorn: "Connection in use"
                raise RuntimeError(f"web server exited ({proc.returncode}):\n{self.log('web')[-3000:]}")
        raise RuntimeError(f"web server found no free port in {self.web_start_attempts} attempts")

    def _answers(self) -> bool:
        try:
            return requests.get(self.base + "/api/", timeout=2).status_code in (200, 401, 403)
        except requests.RequestException:  # not listening yet, or listening while its workers still boot
            return False

    def stop(self) -> None:
        """Stop every process gracefully; whatever does not stop in time is killed with its children."""
        for proc in self.procs.values():
            proc.terminate()
        for name, proc in self.procs.items():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                self.signal_tree(name, signal.SIGKILL)
                proc.wait()

    def signal_tree(self, name: str, sig: int) -> None:
        """Send ``sig`` to a process and all its descendants (a prefork worker and its pool), children first.
        Linux lists a child under the thread that forked it, so every thread's list is read."""
        pids, frontier = [], [self.procs[name].pid]
        while frontier:
            pid = frontier.pop()
            pids.append(pid)
            for children in Path(f"/proc/{pid}/task").glob("*/children"):
                try:
                    frontier += [int(c) for c in children.read_text().split()]
                except OSError:  # the thread ended meanwhile
                    pass
        for pid in reversed(pids):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def pause(self, name: str, attempts: int = 50) -> None:
        """SIGSTOP a process tree at a moment it holds no write lock on the embedded SQLite database (a process
        stopped inside a transaction would keep every other writer waiting until it is resumed)."""
        database = self.workdir / "mvmatch.sqlite3"
        for _ in range(attempts):
            self.signal_tree(name, signal.SIGSTOP)
            if self.env.get("DATABASE_URL") or not database.exists():
                return
            probe = sqlite3.connect(database, timeout=0.2, isolation_level=None)
            try:
                probe.execute("BEGIN IMMEDIATE")
                probe.execute("ROLLBACK")
                return
            except sqlite3.OperationalError:  # locked by the stopped process: let it finish, try again
                self.signal_tree(name, signal.SIGCONT)
                time.sleep(0.02)
            finally:
                probe.close()
        raise TimeoutError(f"{name} held the database's write lock at every attempt to pause it")

    def kill(self, name: str) -> None:
        """kill -9 of the whole process tree, as a crash or the OOM killer would."""
        self.signal_tree(name, signal.SIGKILL)
        self.procs[name].wait(10)

    def alive(self, name: str) -> bool:
        return self.procs[name].poll() is None

    def wait_for(self, predicate, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited ({proc.returncode}) while waiting for {what}:\n"
                                       f"{self.log(name)[-3000:]}")
            time.sleep(0.3)
        raise TimeoutError(f"timed out waiting for {what}; worker logs:{self.log_tails('worker')}")

    def log_tails(self, *prefixes: str, chars: int = 3000) -> str:
        """The last ``chars`` of each process's log whose name starts with one of ``prefixes`` (all: none given)."""
        return "".join(f"\n--- {name}:\n{self.log(name)[-chars:]}"
                       for name in self.procs if not prefixes or name.startswith(prefixes))

    def run_task(self, task: str, pk: int, timeout: float = 120) -> str:
        """Send ``task`` (ingest_video / ingest_product) for ``pk`` through the broker and wait for its result."""
        return self.shell(f"from {TASKS_MODULE} import {task}; print({task}.delay({pk}).get(timeout={timeout}))",
                          timeout=timeout + 60)

    # -- API -------------------------------------------------------------------------------
    def login(self, username: str, staff: bool = False, roles: tuple[str, ...] | list[str] = ()) -> None:
        """Act as ``username`` (created if new) from now on; ``roles`` are the groups it joins."""
        token = self.shell(
            "from django.contrib.auth import get_user_model; from django.contrib.auth.models import Group; "
            "from rest_framework.authtoken.models import Token; "
            f"u, _ = get_user_model().objects.get_or_create(username='{username}', defaults={{'is_staff': {staff}}}); "
            f"[u.groups.add(Group.objects.get_or_create(name=r)[0]) for r in {list(roles)!r}]; "
            "print(Token.objects.get_or_create(user=u)[0].key)")
        self.session.headers["Authorization"] = f"Token {token}"

    def create_product(self, catalogue, product) -> dict:
        """POST a generated catalogue's product (`ml.datagen`) with its photos, as the current user."""
        files = [("photos", (Path(rel).name, (catalogue.root / rel).read_bytes(), "image/jpeg"))
                 for rel in product.images]
        r = self.post("/api/products/", data={"title": product.title, "description": product.description,
                                              "price": f"{product.price:.2f}", "category": product.category_path,
                                              "sku": product.sku}, files=files)
        assert r.status_code == 201, r.text
        return r.json()

    def upload_video(self, path: Path, caption: str) -> requests.Response:
        return self.post("/api/videos/", data={"caption": caption},
                         files={"file": (path.name, path.read_bytes(), "video/mp4")})

    def get(self, path: str, **kw) -> requests.Response:
        return self.session.get(self.base + path, timeout=self.request_timeout, **kw)

    def post(self, path: str, **kw) -> requests.Response:
        return self.session.post(self.base + path, timeout=self.request_timeout, **kw)

    def wait_status(self, path: str, timeout: float = 120) -> dict:
        """Poll a video or product until it leaves queued/processing."""
        def done():
            body = self.get(path).json()
            return body if body["status"] in ("indexed", "failed") else None
        return self.wait_for(done, timeout, path)


@contextmanager
def redis_namespace():
    """A key prefix of its own on the test Redis (other runs may share it); its keys are deleted afterwards."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis does not answer on {REDIS_URL} ({exc}); `bash deploy/test.sh` starts one")
    prefix = f"mvmatch-test-{uuid.uuid4().hex[:12]}:"
    try:
        yield prefix
        ours = list(client.scan_iter(match=prefix + "*"))
        assert ours, f"nothing in Redis under {prefix}: the stack did not use its namespace"
    finally:
        for key in client.scan_iter(match=prefix + "*"):
            client.delete(key)
        client.close()


def rank_of(hits: list[dict], key: str, wanted: int) -> int:
    """1-based position of the wanted id in a full ranking."""
    return [h[key]["id"] for h in hits].index(wanted) + 1


@contextmanager
def postgres_database():
    """A fresh database on the test PostgreSQL, dropped afterwards."""
    import psycopg

    name = f"mvmatch_e2e_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(POSTGRES, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        pytest.fail(f"PostgreSQL does not answer as {POSTGRES} ({exc}); `bash deploy/test.sh` starts one, "
                    "or set MVMATCH_TEST_POSTGRES")
    try:
        yield POSTGRES.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(POSTGRES, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def scale_out() -> dict:
    """Stack arguments of the scale-out deployment: its own PostgreSQL database and Redis namespace."""
    with postgres_database() as database_url, redis_namespace() as prefix:
        yield {"broker": REDIS_URL, "database_url": database_url, "redis_key_prefix": prefix}
