"""Peak memory of a worker process reading one product's ten photos, bounded decoding against the old way.

    .venv/bin/python deploy/photo_memory.py [--side 7071] [--count 10] [--bundle DIR]

Makes ``count`` PNGs of side x side pixels (default: the largest the pixel limit allows) and, for each way
of reading them, starts a fresh process that imports what a worker imports (and loads the model bundle,
if given, and embeds the photos with it as ingest does), notes its resident memory when idle, reads the
photos as one product ingest does, and reports its peak and its memory after. The ways:

- ``bounded``: catalog.photos.decode_photo (pixel count checked from the header, reduced at once);
- ``full``: the former reading, every photo decoded at full size and kept until the product is embedded.

Also the 144 Mpx case of the issue (12000 x 12000), which the bounded reader refuses before decoding.
Results are printed as a table (MiB); put the figures in docs/, not in code.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakSampler(threading.Thread):
    """Samples this process's resident memory every few milliseconds (VmHWM cannot be reset everywhere)."""

    def __init__(self, interval: float = 0.002):
        super().__init__(daemon=True)
        self.interval, self.peak, self.running = interval, rss_mib(), True

    def run(self):
        while self.running:
            self.peak = max(self.peak, rss_mib())
            time.sleep(self.interval)

    def stop(self) -> float:
        self.running = False
        self.join()
        return max(self.peak, rss_mib())


def child(mode: str, files: list[str], bundle: str | None) -> dict:
    """One worker-like process: idle memory, then one product's photos read (and embedded), peak and after."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mvmatch.settings")
    os.environ.setdefault("MVMATCH_DEBUG", "1")  # a measurement process, not a server
    sys.path.insert(0, str(ROOT))
    django.setup()
    import numpy as np
    from PIL import Image

    from catalog.photos import PhotoError, decode_photo

    model = None
    if bundle:
        from ml.serving.bundle import ModelBundle

        model = ModelBundle.load(bundle, device="cpu")
    import gc

    gc.collect()
    idle = rss_mib()
    sampler = PeakSampler()
    sampler.start()
    start = time.perf_counter()
    error = ""
    try:
        if mode == "bounded":
            photos = []
            for name in files:
                with open(name, "rb") as fh:
                    photos.append(decode_photo(fh, name=Path(name).name))
        else:
            photos = []
            for name in files:
                with open(name, "rb") as fh, Image.open(fh) as img:
                    photos.append(np.asarray(img.convert("RGB")))
        if model is not None:
            model.embed_products([photos], ["a product"])
    except PhotoError as exc:
        error = str(exc)
    seconds = time.perf_counter() - start
    photos = None
    gc.collect()
    peak = sampler.stop()
    time.sleep(0.5)
    return {"mode": mode, "idle": idle, "peak": peak, "after": rss_mib(), "seconds": seconds, "refused": error}


def make_pngs(folder: Path, side: int, count: int) -> list[str]:
    from PIL import Image

    first = folder / f"photo_{side}_0.png"
    Image.radial_gradient("L").resize((side, side)).convert("RGB").save(first)
    names = [first]
    for i in range(1, count):
        names.append(folder / f"photo_{side}_{i}.png")
        names[-1].write_bytes(first.read_bytes())
    return [str(n) for n in names]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=0, help="photo side in pixels (default: the largest allowed)")
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--bundle", help="a model bundle directory: embed the photos as ingest does")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, files = json.loads(args.child)
        print(json.dumps(child(mode, files, args.bundle)))
        return
    env = {**os.environ, "MVMATCH_DEBUG": "1"}
    limit = int(subprocess.run([sys.executable, "-c", "import os; os.environ.setdefault('MVMATCH_DEBUG','1'); "
                                "import django; os.environ.setdefault('DJANGO_SETTINGS_MODULE','mvmatch.settings'); "
                                "django.setup(); from django.conf import settings; print(settings.MVMATCH_MAX_PHOTO_PIXELS)"],
                               cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout)
    side = args.side or math.isqrt(limit)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        allowed = make_pngs(Path(tmp), side, args.count)
        huge = make_pngs(Path(tmp), 12000, args.count)
        size = Path(allowed[0]).stat().st_size / 2**20
        print(f"{args.count} PNGs of {side}x{side} = {side * side / 1e6:.0f} Mpx ({size:.1f} MiB each); "
              f"pixel limit {limit / 1e6:.0f} Mpx; model: {args.bundle or 'none (decoding only)'}", flush=True)
        for label, mode, files in (("bounded", "bounded", allowed), ("full (former)", "full", allowed),
                                   ("bounded, 144 Mpx", "bounded", huge)):
            cmd = [sys.executable, __file__, "--child", json.dumps([mode, files])]
            if args.bundle:
                cmd += ["--bundle", args.bundle]
            out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(out.stderr[-3000:])
            result = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append((label, result))
            print(f"  {label:<18} idle {result['idle']:7.0f}  peak {result['peak']:7.0f}  "
                  f"(+{result['peak'] - result['idle']:6.0f})  after {result['after']:7.0f}  "
                  f"{result['seconds']:6.2f} s  {result['refused'][:70]}", flush=True)
    bounded, full = rows[0][1], rows[1][1]
    rise = lambda r: r["peak"] - r["idle"]
    print(f"peak rise over idle: bounded {rise(bounded):.0f} MiB, full {rise(full):.0f} MiB "
          f"({rise(full) / max(rise(bounded), 1):.1f}x)")


if __name__ == "__main__":
    main()
