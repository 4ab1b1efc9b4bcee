"""Shared fixtures: media in a temporary folder, the ontology loaded once, real ffmpeg-made inputs."""
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from django.core.management import call_command


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    with django_db_blocker.unblock():
        call_command("load_ontology", verbosity=0)


@pytest.fixture(autouse=True)
def _isolated_storage(request, tmp_path):
    """Uploaded files and the index of a test live in its own temporary folder."""
    if "settings" not in request.fixturenames and not request.node.get_closest_marker("django_db"):
        return
    settings = request.getfixturevalue("settings")
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.MILVUS_URI = str(tmp_path / "milvus.db")


def make_video(path: Path, *, seconds: float = 1.5, size: int = 64, codec: str = "libx264", audio: bool = False,
               pattern: str = "testsrc2") -> Path:
    """A real encoded video made by ffmpeg from a test pattern."""
    cmd = ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"{pattern}=size={size}x{size}:rate=10:duration={seconds}"]
    if audio:
        cmd += ["-f", "lavfi", "-i", f"sine=duration={seconds}", "-shortest"]
    cmd += ["-c:v", codec, "-pix_fmt", "yuv420p", str(path)]
    subprocess.run(cmd, check=True)
    return path


@pytest.fixture
def video_file(tmp_path) -> Path:
    return make_video(tmp_path / "clip.mp4")


@pytest.fixture(scope="session")
def bundle(tmp_path_factory) -> Path:
    """A small model trained end to end by our own code (image tower, MQMC towers, second stage) on generated
    data, in the product's default configuration but for the image tower's augmentation: 40 tower steps do not
    absorb the default's overlaid images (the end-to-end rankings fell to chance with them), so this tiny tower
    trains on the light recipe. Built once per session."""
    from ml.training.build import BuildConfig, build

    out = tmp_path_factory.mktemp("model") / "bundle"
    build(out, BuildConfig(name="e2e", data_size="tiny-train", tower_steps=40, epochs=8, batch_size=16,
                           queue_size=16, workers=1, augmentation="light", progress=False))
    return out


@pytest.fixture
def eager_tasks():
    """Celery tasks run in-process when sent (the worker's code path without a broker)."""
    from workers import app

    app.loader.import_default_modules()  # tasks sent by name run eagerly only once they are registered
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = False


@pytest.fixture
def sent_tasks(monkeypatch):
    """Ingest tasks sent to the broker, as ("video" | "product", id), recorded instead of sent."""
    sent = []
    monkeypatch.setattr("workers.celery.app.send_task",
                        lambda name, args, *_, **__: sent.append((name.rsplit("_", 1)[1], args[0])))
    return sent


# A generated catalogue of 12 products, one in each of 12 lower categories (6 middles x 2 siblings, so near
# misses exist), each with one micro-video: what the end-to-end tests upload.
CATALOGUE = dict(name="e2e", n_lower=12, products_per_lower={"train": 0, "val": 0, "test": 1},
                 videos={"train": None, "val": None, "test": None})


@pytest.fixture(scope="session")
def catalogue(tmp_path_factory):
    from ml.datagen import SIZES, generate_dataset

    return generate_dataset(tmp_path_factory.mktemp("e2e-data"), replace(SIZES["tiny"], **CATALOGUE), seed=0,
                            progress=False)
