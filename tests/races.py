"""Faults and races on a running mvmatch: each scenario does to a live stack what a crash, a hurried user or
a second worker would, then checks what the system kept. The suite runs them (tests/test_faults.py);
`python -m tests.races [--bundle DIR]` runs them on a fresh stack of its own (the demo's model by default)
and prints a table: scenario | expected | got.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from tests.stack import Stack

FRAMES = 8  # settings.MVMATCH_FRAMES_PER_VIDEO in the stack's environment

# A worker that dies is noticed within seconds in these runs (production: see settings).
FAST_RECOVERY = {"MVMATCH_HEARTBEAT_SECONDS": "1", "MVMATCH_RECONCILE_SECONDS": "2",
                 "MVMATCH_WORKER_DEAD_AFTER_SECONDS": "5"}


@dataclass
class Result:
    scenario: str
    expected: str
    got: str
    ok: bool


class Faults:
    """Scenarios on one stack. ``make_video(path, seconds)`` writes a distinct real video file."""

    def __init__(self, stack: Stack, make_video, workdir: Path):
        self.stack, self.make_video, self.workdir = stack, make_video, workdir
        self._videos = 0

    # -- helpers ---------------------------------------------------------------------------
    def py(self, code: str) -> str:
        return self.stack.shell(code)

    def state(self, kind: str, pk: int) -> dict:
        """A row's indexing state, its keyframes, vectors, matches and files, read from the database and index."""
        model = "MicroVideo" if kind == "video" else "Product"
        return json.loads(self.py(
            "import json; from pathlib import Path; from django.conf import settings; "
            "from matching import services; from matching.models import MicroVideo, Keyframe, Match, ModelVersion; "
            "from catalog.models import Product; "
            f"row = {model}.objects.filter(pk={pk}).values('status', 'error', 'revision', 'indexed_revision', "
            "'claim_token').first(); "
            f"index = services.index_of({model}); "
            f"vectors = sum({pk} in index(v).ids() for v in ModelVersion.objects.all()); "
            f"files = sorted(str(p) for p in Path(settings.MEDIA_ROOT).rglob('v{pk}_*')) if {model} is MicroVideo "
            "else []; "
            f"print(json.dumps({{'row': row, 'vectors': vectors, 'files': len(files), "
            f"'keyframes': Keyframe.objects.filter(video_id={pk}).count(), "
            f"'matches': Match.objects.filter({'video_id' if kind == 'video' else 'product_id'}={pk}).count()}}))"))

    def upload(self, caption: str = "", **fields) -> dict:
        self._videos += 1
        path = self.make_video(self.workdir / f"fault-{self._videos}.mp4", seconds=1.0 + 0.1 * self._videos)
        with path.open("rb") as fh:
            response = self.stack.post("/api/videos/", files={"file": (path.name, fh, "video/mp4")},
                                       data={"caption": caption, **fields})
        assert response.status_code == 202, response.text
        return response.json()

    def wait_processing(self, path: str, timeout: float = 60) -> bool:
        """Poll until the item is being processed; False if it was done before we saw it processing."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.stack.get(path).json().get("status")
            if status == "processing":
                return True
            if status in ("indexed", "failed"):
                return False
            time.sleep(0.05)
        raise TimeoutError(f"{path} never started processing")

    def index_lines(self, log: str, kind: str, pk: int) -> list[str]:
        return [line for line in log.splitlines() if f"ingest {kind} {pk}:" in line]

    # -- scenarios -------------------------------------------------------------------------
    def delete_during_processing(self) -> Result:
        """DELETE while a worker processes the video: nothing may come back."""
        for _ in range(3):
            video = self.upload("delete me")
            path = f"/api/videos/{video['id']}/"
            self.stack.pause("worker") if self.wait_processing(path) else None
            caught = self.stack.get(path).json()["status"] == "processing"
            try:
                deleted = self.stack.session.delete(self.stack.base + path, timeout=30).status_code
            except requests.Timeout:
                raise AssertionError(f"DELETE {path} had no answer in 30 s while the worker was paused; "
                                     f"logs:{self.stack.log_tails()}") from None
            finally:
                self.stack.signal_tree("worker", signal.SIGCONT)
            if caught:
                break
        self.stack.wait_for(lambda: self.index_lines(self.stack.log("worker"), "microvideo", video["id"]), 60,
                            "the interrupted task's outcome")
        time.sleep(1)
        got = self.state("video", video["id"])
        leftover = {k: got[k] for k in ("row", "vectors", "files", "keyframes", "matches") if got[k]}
        return Result("delete while processing", "204; no row, vector, file, keyframe or match left",
                      f"{deleted}; caught processing: {caught}; left: {leftover or 'nothing'}",
                      deleted == 204 and caught and not leftover)

    def edit_during_processing(self, product_id: int) -> Result:
        """PATCH a product while it is processed: the new revision ends indexed."""
        path = f"/api/products/{product_id}/"
        self.stack.session.patch(self.stack.base + path, json={"title": "first edit"}, timeout=30).raise_for_status()
        caught = self.wait_processing(path)
        self.stack.pause("worker")
        try:
            edited = self.stack.session.patch(self.stack.base + path, json={"title": "second edit"}, timeout=30)
        finally:
            self.stack.signal_tree("worker", signal.SIGCONT)
        final = self.stack.wait_status(path)
        got = self.state("product", product_id)
        row = got["row"]
        ok = (edited.status_code == 200 and final["status"] == "indexed" and final["title"] == "second edit"
              and row["indexed_revision"] == row["revision"] and got["vectors"] == 1)
        return Result("edit while processing", "the second edit's revision indexed, one vector",
                      f"{final['status']}, title {final['title']!r}, revision {row['revision']} indexed "
                      f"{row['indexed_revision']}, vectors {got['vectors']} (caught processing: {caught})", ok)

    def duplicate_upload_race(self) -> Result:
        """The same file posted twice at once: one video, one 409."""
        self._videos += 1
        path = self.make_video(self.workdir / f"dup-{self._videos}.mp4", seconds=2.5)
        codes = []

        def post():
            with path.open("rb") as fh:
                codes.append(self.stack.post("/api/videos/", files={"file": (path.name, fh, "video/mp4")},
                                             data={"caption": "twice"}).status_code)

        threads = [threading.Thread(target=post) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rows = int(self.py("from matching.models import MicroVideo; "
                           "print(MicroVideo.objects.filter(caption='twice').count())"))
        return Result("two uploads of one file at once", "[202, 409], one row", f"{sorted(codes)}, {rows} row(s)",
                      sorted(codes) == [202, 409] and rows == 1)

    def two_workers_one_item(self, video_id: int) -> Result:
        """Two workers get the same item at once: it is indexed once."""
        from tests.stack import TASKS_MODULE

        before = self.state("video", video_id)
        self.stack.procs["worker2"] = self.stack.spawn("worker2", *self.stack.worker_command(name="second"))
        try:
            self.stack.wait_for(lambda: "ready" in self.stack.log("worker2"), 90, "the second worker")
            self.py("from matching import services; from matching.models import MicroVideo; "
                    f"from {TASKS_MODULE} import ingest_video; "
                    f"services.requeue(MicroVideo.objects.filter(pk={video_id})); ingest_video.delay({video_id})")
            self.stack.wait_status(f"/api/videos/{video_id}/")
            self.stack.wait_for(lambda: len(self.index_lines(self.stack.log("worker") + self.stack.log("worker2"),
                                                             "microvideo", video_id)) >= 3, 60, "both tasks")
        finally:
            second = self.stack.procs.pop("worker2")
            second.terminate()
            second.wait(60)  # gone before the next scenario: a worker shutting down still takes tasks
        lines = self.index_lines(self.stack.log("worker") + self.stack.log("worker2"), "microvideo", video_id)
        indexed = sum(": indexed in" in line for line in lines)
        got = self.state("video", video_id)
        ok = (indexed == 2 and got["keyframes"] == FRAMES and got["files"] == FRAMES and got["vectors"] == 1
              and got["matches"] == before["matches"])
        return Result("two workers, one item", f"indexed once more (2 'indexed' lines in all), {FRAMES} keyframes, "
                      "1 vector, same matches",
                      f"{indexed} 'indexed' lines, {got['keyframes']} keyframes, {got['files']} files, "
                      f"{got['vectors']} vector(s), matches {before['matches']} -> {got['matches']}", ok)

    def killed_worker(self, recovery: str) -> Result:
        """kill -9 of the whole worker mid-ingest, then a restart: the video ends indexed exactly once."""
        video = self.upload("kill the worker")
        path = f"/api/videos/{video['id']}/"
        caught = self.wait_processing(path)
        self.stack.kill("worker")
        killed_log = self.stack.log("worker")
        started = time.monotonic()
        self.stack.start_worker()
        final = self.stack.wait_status(path, timeout=120)
        seconds = time.monotonic() - started
        got = self.state("video", video["id"])
        ok = (caught and final["status"] == "indexed" and got["keyframes"] == FRAMES and got["files"] == FRAMES
              and got["vectors"] == 1 and not got["row"]["claim_token"]
              and not any(": indexed in" in line for line in self.index_lines(killed_log, "microvideo", video["id"])))
        return Result(f"kill -9 of the worker mid-ingest ({recovery})", f"indexed once after a restart, {FRAMES} "
                      "keyframes, 1 vector, no command typed",
                      f"{final['status']} {seconds:.0f} s after the restart, {got['keyframes']} keyframes, "
                      f"{got['files']} files, {got['vectors']} vector(s) (caught processing: {caught})", ok)


def run(bundle: Path) -> list[Result]:
    """The scenarios on a fresh embedded stack, as the suite runs them."""
    from matching.vector_index import MilvusLiteServer
    from tests.conftest import make_video

    results = []
    with tempfile.TemporaryDirectory() as tmp, MilvusLiteServer(Path(tmp) / "milvus") as milvus_uri:
        stack = Stack(Path(tmp), milvus_uri=milvus_uri)
        stack.env.update(FAST_RECOVERY)
        try:
            stack.start(bundle)
            stack.login("publisher", roles=["publisher", "merchant"])
            faults = Faults(stack, make_video, Path(tmp))
            first = faults.upload("first")
            stack.wait_status(f"/api/videos/{first['id']}/")
            results.append(faults.delete_during_processing())
            results.append(faults.duplicate_upload_race())
            results.append(faults.two_workers_one_item(first["id"]))
            results.append(faults.killed_worker("embedded broker: the workers' reconciler"))
        finally:
            stack.stop()
    return results


def table(results: list[Result]) -> str:
    rows = ["| scenario | expected | got | ok |", "|---|---|---|---|"]
    rows += [f"| {r.scenario} | {r.expected} | {r.got} | {'yes' if r.ok else 'NO'} |" for r in results]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundle", type=Path, help="model bundle (default: the active one of the demo)")
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mvmatch.settings")
    os.environ.setdefault("DJANGO_SECRET_KEY", secrets.token_hex(32))  # production settings; the stacks inherit it
    bundle = args.bundle
    if bundle is None:
        import django

        django.setup()
        from matching.services import active_model_version

        bundle = Path(active_model_version().bundle_path)
    print(table(run(bundle)))


if __name__ == "__main__":
    main()
