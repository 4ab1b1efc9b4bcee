"""A running mvmatch for end-to-end tests: milvus-lite server, migrated database, Celery worker, web server.

Every part is the real process a deployment runs; the test talks to it over HTTP only.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    def __init__(self, workdir: Path, *, broker: str | None = None, database_url: str | None = None,
                 milvus_uri: str | None = None):
        self.workdir = workdir
        self.env = {**os.environ, "DJANGO_SETTINGS_MODULE": "mvmatch.settings", "MVMATCH_VAR_DIR": str(workdir),
                    "MVMATCH_LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1", "MILVUS_URI": milvus_uri or ""}
        if broker:
            self.env["CELERY_BROKER_URL"] = broker
            self.env["CELERY_RESULT_BACKEND"] = broker
        if database_url:
            self.env["DATABASE_URL"] = database_url
        self.procs: dict[str, subprocess.Popen] = {}
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.session = requests.Session()

    # -- processes -------------------------------------------------------------------------
    def manage(self, *args: str) -> str:
        out = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, capture_output=True,
                             text=True, timeout=300)
        if out.returncode:
            raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
        return out.stdout

    def shell(self, code: str) -> str:
        return self.manage("shell", "-v", "0", "-c", code).strip()

    def spawn(self, name: str, *cmd: str) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "w")
        proc = subprocess.Popen([sys.executable, *cmd], cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text(errors="replace")

    def start(self, bundle: Path) -> "Stack":
        self.manage("migrate", "--noinput", "-v0")
        self.manage("load_ontology")
        self.manage("register_model", str(bundle), "--name", "e2e", "--activate")
        self.spawn("worker", "-m", "celery", "-A", "workers", "worker", "-Q", "ml,celery", "--pool", "solo",
                   "--loglevel", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat")
        self.spawn("web", "manage.py", "runserver", f"127.0.0.1:{self.port}", "--noreload")
        self.wait_for(lambda: self._answers(), 60, "web server")
        return self

    def _answers(self) -> bool:
        try:
            return requests.get(self.base + "/api/", timeout=2).status_code in (200, 401, 403)
        except requests.ConnectionError:
            return False

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()

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
                    raise RuntimeError(f"{name} exited ({proc.returncode}) while waiting for {what}:\n{self.log(name)[-3000:]}")
            time.sleep(0.3)
        raise TimeoutError(f"timed out waiting for {what}; worker log:\n{self.log('worker')[-3000:]}")

    # -- API -------------------------------------------------------------------------------
    def login(self, username: str, staff: bool = False) -> None:
        token = self.shell(
            "from django.contrib.auth import get_user_model; from rest_framework.authtoken.models import Token; "
            f"u, _ = get_user_model().objects.get_or_create(username='{username}', defaults={{'is_staff': {staff}}}); "
            "print(Token.objects.get_or_create(user=u)[0].key)")
        self.session.headers["Authorization"] = f"Token {token}"

    def get(self, path: str, **kw) -> requests.Response:
        return self.session.get(self.base + path, timeout=30, **kw)

    def post(self, path: str, **kw) -> requests.Response:
        return self.session.post(self.base + path, timeout=60, **kw)

    def wait_status(self, path: str, timeout: float = 120) -> dict:
        """Poll a video or product until it leaves queued/processing."""
        def done():
            body = self.get(path).json()
            return body if body["status"] in ("indexed", "failed") else None
        return self.wait_for(done, timeout, path)
