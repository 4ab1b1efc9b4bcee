"""The demo's own figures, offline: how often each bundle ranks a demo video's true product first / in the top 10.

    python -m ml.evaluation.demo_gallery --bundle var/models/demo [--bundle OTHER ...] [--videos 60]

The demo catalogue (`SIZES["demo"]`, seed 0, as `manage.py load_demo` generates it) goes through the serving
path of `ml.evaluation.robustness`: worker frame sampling from each MP4, the bundle's encoders and towers, the
index's top N re-ranked by the second stage, ranks over the whole catalogue. With the demo's defaults the
headline equals what `deploy/demo.sh` reports, plus a line per capture condition; it takes a minute per bundle
instead of a demo set-up, so recipes can be compared over several builds. ``--videos 60`` gives every demo
product one video of its own (a video there weighs 1.7 points, against 4.2 among the demo's 24).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ml.datagen import SIZES, CONDITIONS, generate_dataset, load_manifest
from ml.evaluation.robustness import RERANK_TOP_N, category_levels, embed_videos_from, frame_features, \
    sampled_frames, served_ranks
from ml.serving.bundle import ModelBundle, read_meta
from ml.serving.features import load_photo
from ml.serving.texts import product_text

OWN = "own"  # the generator's own demo videos (no capture condition)


def demo_data(root: Path, videos: int | None, seed: int = 0):
    """The demo catalogue's manifest, generated into ``root`` once (``videos``: own test videos, default the demo's)."""
    if (root / "manifest.json").exists():
        return load_manifest(root)
    config = SIZES["demo"] if videos is None else replace(SIZES["demo"], videos={"test": videos})
    return generate_dataset(root, config, seed=seed, progress=sys.stderr.isatty())


@torch.no_grad()
def evaluate(bundle_dir: Path, manifest, photos: list[list[np.ndarray]], frames: list[np.ndarray],
             rerank_top_n: int = RERANK_TOP_N) -> dict:
    """Top-1 / top-10 shares of the true product, over the own videos and per capture condition (``photos``:
    each test product's, ``frames``: each test video's sampled frames, read once for every bundle)."""
    bundle = ModelBundle.load(bundle_dir)
    products = manifest.products_in("test")
    videos = manifest.videos_in("test")
    column = {p.sku: i for i, p in enumerate(products)}
    gallery = bundle.embed_products(photos, [product_text(p.title, p.description) for p in products])
    feats, mask = frame_features(bundle, frames)
    captions = [v.caption for v in videos]
    embedded = embed_videos_from(bundle, feats, mask, bundle.encoder.encode_texts(captions),
                                 [bool(c.strip()) for c in captions])
    ranks = served_ranks(bundle, embedded, gallery, [category_levels(p) for p in products],
                         rerank_top_n if bundle.two_stage is not None else 0,
                         truth=[column[v.product_sku] for v in videos])
    lines = {}
    for name in (OWN, *CONDITIONS):
        picked = [int(r) for r, v in zip(ranks, videos) if (v.capture or OWN) == name]
        if picked:
            lines[name] = {"videos": len(picked), "top1": float(np.mean(np.array(picked) <= 1)),
                           "top10": float(np.mean(np.array(picked) <= 10)), "ranks": picked}
    return {"name": bundle.meta["name"], "path": str(bundle_dir), "products": len(products), "lines": lines}


def render(results: list[dict]) -> str:
    """One markdown row per bundle: top-1 / top-10 in % for the own videos, then each capture condition."""
    names = [n for n in (OWN, *CONDITIONS) if any(n in r["lines"] for r in results)]
    head = [f"{n} ({max(r['lines'][n]['videos'] for r in results if n in r['lines'])})" for n in names]
    rows = ["| bundle | " + " | ".join(head) + " |", "|---|" + "---|" * len(names)]
    for r in results:
        cells = [f"{r['lines'][n]['top1']:.0%} / {r['lines'][n]['top10']:.0%}" if n in r["lines"] else ""
                 for n in names]
        rows.append(f"| {r['name']} (`{r['path']}`) | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ml.evaluation.demo_gallery", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", action="append", required=True, help="a model bundle (repeat to compare)")
    parser.add_argument("--videos", type=int, default=None,
                        help="own demo videos (default: the demo's; 60 gives every product one)")
    parser.add_argument("--data", default=None, help="where the demo catalogue is generated (default: var/demo-gallery/N)")
    parser.add_argument("--rerank-top-n", type=int, default=RERANK_TOP_N)
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.videos is not None and args.videos < 1:
        parser.error("--videos must be at least 1")
    for path in args.bundle:  # before a catalogue is generated for nothing
        try:
            read_meta(path)
        except (OSError, ValueError) as e:
            parser.error(str(e))
    root = Path(args.data or f"var/demo-gallery/{args.videos or SIZES['demo'].videos['test']}")
    manifest = demo_data(root, args.videos)
    photos = [[load_photo(root / rel) for rel in p.images] for p in manifest.products_in("test")]
    frames = [sampled_frames(root / v.file) for v in manifest.videos_in("test")]
    results = [evaluate(Path(b), manifest, photos, frames, args.rerank_top_n) for b in args.bundle]
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    print(render(results), end="")


if __name__ == "__main__":
    main()
