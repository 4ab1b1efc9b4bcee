"""The scale-out deployment file (deploy/compose.yaml): validated by `docker compose config` where Docker
Compose is installed, and its topology checked here everywhere (the file is plain YAML)."""
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "deploy" / "compose.yaml"
APP_SERVICES = ("migrate", "web", "worker-cpu", "worker-gpu", "flower")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())  # merge keys (<<) resolve as Compose resolves them


def docker_compose() -> list[str] | None:
    if shutil.which("docker") is None:
        return None
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=60)
    return ["docker", "compose"] if probe.returncode == 0 else None


def test_docker_compose_validates_the_file():
    command = docker_compose()
    if command is None:
        pytest.skip("Docker Compose is not installed here (`docker compose version` fails or there is no docker)")
    env = dict(os.environ, DJANGO_SECRET_KEY="compose-config-check")
    ok = subprocess.run([*command, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, env=env,
                        timeout=120)
    assert ok.returncode == 0, ok.stderr
    env.pop("DJANGO_SECRET_KEY")
    missing = subprocess.run([*command, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True,
                             env=env, timeout=120)
    assert missing.returncode != 0 and "DJANGO_SECRET_KEY" in missing.stderr


def test_the_topology_is_the_scale_out_one(compose):
    services = compose["services"]
    assert set(services) >= {"postgres", "redis", "etcd", "minio", "milvus", *APP_SERVICES}
    gpu, cpu = services["worker-gpu"], services["worker-cpu"]
    assert gpu["command"][gpu["command"].index("-Q") + 1] == "ml" == gpu["environment"]["MVMATCH_ML_QUEUE"]
    assert gpu["environment"]["MVMATCH_DEVICE"] == "cuda"
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert cpu["environment"]["MVMATCH_DEVICE"] == "cpu"
    assert services["web"]["command"][:3] == ["gunicorn", "-c", "deploy/gunicorn.conf.py"]
    assert services["milvus"]["environment"]["ETCD_ENDPOINTS"] == "etcd:2379"
    for name in APP_SERVICES:
        env = services[name]["environment"]
        assert env["DATABASE_URL"].startswith("postgres://") and env["CELERY_BROKER_URL"].startswith("redis://")
        assert env["MILVUS_URI"] == "http://milvus:19530"


def test_published_ports_listen_on_loopback_only(compose):
    ports = [p for s in compose["services"].values() for p in s.get("ports", [])]
    assert ports and all(str(p).startswith("127.0.0.1:") for p in ports)


def test_every_setting_the_file_sets_is_one_the_app_reads(compose):
    """A misspelt variable would be silently ignored by the app."""
    read = (REPO / "mvmatch" / "settings.py").read_text() + (REPO / "deploy" / "gunicorn.conf.py").read_text()
    ours = {key for name in APP_SERVICES for key in compose["services"][name]["environment"]
            if re.match(r"(MVMATCH|DJANGO|MILVUS|CELERY|DATABASE)_", key) and key != "DJANGO_SETTINGS_MODULE"}
    assert ours
    unread = sorted(key for key in ours if f'"{key}"' not in read)
    assert not unread, f"set in deploy/compose.yaml but never read: {unread}"
