"""Training the region scorer (ml.serving.regions) on frozen image-tower features.

The build's training products (never the demo's or a benchmark's) are filmed under capture
conditions (ml.datagen.capture: small, cluttered, overlaid, with other products, ...), and each video
is sampled as a worker samples it: 8 frames at segment centres, centre-cropped square, at the
worker's keyframe size. Every frame's candidates are encoded once; the scorer then learns, on the
frames that show the product, which candidate looks most like the product's own photos.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ml.datagen.capture import CONDITIONS, render_capture
from ml.datagen.draw import stable_seed
from ml.datagen.manifest import Manifest, Product, load_manifest
from ml.serving.bundle import META_FILE, REGIONS_FILE, read_meta
from ml.serving.encoders import Encoder, load_encoder
from ml.serving.features import load_photo, photo_features
from ml.serving.regions import RegionConfig, RegionScorer, candidate_features
from ml.training.dataset import segment_centres, square_frames

# Capture presets the scorer's videos are filmed under, each video drawing one.
PRESETS = ("clean", "small", "clutter", "overlay", "distractors", "shake", "light", "vertical", "all")


@dataclass(frozen=True)
class RegionData:
    # One video per product ranks as two did and halves the scorer's part of the build
    # (docs/benchmark/robustness-recipes.md, fifth round).
    videos_per_product: int = 1
    frames_per_video: int = 8
    frame_size: int = 160  # the worker's keyframe side (MVMATCH_KEYFRAME_SIZE)
    footage_size: int = 128
    frames: tuple[int, int] = (16, 32)  # footage length, in frames
    seed: int = 1
    workers: int = 2


def _render(job: tuple) -> tuple[np.ndarray, list[bool]]:
    product, preset, others, cfg = job
    rng = np.random.default_rng([cfg.seed, 77, stable_seed(product.sku), PRESETS.index(preset)])
    video = render_capture(product, rng, int(rng.integers(*cfg.frames, endpoint=True)), cfg.footage_size,
                           conditions=CONDITIONS[preset], others=others)
    picks = segment_centres(len(video.frames), cfg.frames_per_video)
    return square_frames(video.frames[picks], cfg.frame_size), [video.kinds[i] == "product" for i in picks]


def render_region_videos(products: Sequence[Product], cfg: RegionData = RegionData()
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frames uint8 [V, T, S, S, 3], product index [V], shows-the-product mask [V, T]) of capture videos."""
    rng = np.random.default_rng([cfg.seed, 78])
    jobs, owners = [], []
    for i, product in enumerate(products):
        others = [products[j] for j in rng.choice(len(products), min(7, len(products)), replace=False) if j != i]
        for preset in rng.choice(PRESETS, cfg.videos_per_product, replace=False):
            jobs.append((product, str(preset), others, cfg))
            owners.append(i)
    pool = multiprocessing.get_context("fork").Pool(cfg.workers) if cfg.workers > 1 else nullcontext()
    with pool:
        done = list(pool.imap(_render, jobs, chunksize=4) if cfg.workers > 1 else map(_render, jobs))
    return np.stack([d[0] for d in done]), np.array(owners), np.array([d[1] for d in done])


def fit_region_scorer(candidates: torch.Tensor, targets: torch.Tensor, cfg: RegionConfig = RegionConfig()
                      ) -> tuple[RegionScorer, float]:
    """A scorer distilled from the candidates' [F, C, D] cosine with each frame's product feature [F, D]."""
    start = time.monotonic()
    torch.manual_seed(cfg.seed)
    scorer = RegionScorer(candidates.shape[-1], cfg)
    optimiser = torch.optim.AdamW(scorer.parameters(), lr=cfg.lr, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(cfg.seed)
    scorer.train()
    for _ in range(cfg.steps):
        batch = torch.randint(0, len(candidates), (min(cfg.batch_size, len(candidates)),), generator=generator)
        loss = scorer.distillation_loss(candidates[batch], targets[batch])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return scorer.eval(), time.monotonic() - start


def train_region_scorer(encoder: Encoder, manifest: Manifest, split: str = "train", cfg: RegionConfig = RegionConfig(),
                        data: RegionData = RegionData()) -> tuple[RegionScorer, dict]:
    """Render, sample and encode capture videos of ``split``'s products, then fit the scorer; returns it and timings."""
    t = time.monotonic()
    products = manifest.products_in(split)
    frames, owners, shows = render_region_videos(products, data)
    render_s = time.monotonic() - t
    t = time.monotonic()
    flat = frames.reshape(-1, *frames.shape[2:])[shows.reshape(-1)]
    candidates = candidate_features(encoder, flat, cfg.grid)
    photos, mask = photo_features(encoder, [[load_photo(manifest.path(rel)) for rel in p.images] for p in products])
    prototypes = F.normalize((photos * mask[..., None]).sum(1), dim=-1)
    targets = prototypes[torch.from_numpy(owners).repeat_interleave(frames.shape[1])[torch.from_numpy(shows.reshape(-1))]]
    encode_s = time.monotonic() - t
    scorer, fit_s = fit_region_scorer(candidates, targets, cfg)
    return scorer, {"render_s": round(render_s, 1), "encode_s": round(encode_s, 1), "fit_s": round(fit_s, 1),
                    "videos": int(len(frames)), "frames": int(len(flat)), "grid": [list(g) for g in cfg.grid]}


def parse_grid(text: str) -> tuple[tuple[float, int], ...]:
    """"0.5x3,0.75x2" -> ((0.5, 3), (0.75, 2)): crop side share x crops per axis, scale by scale."""
    try:
        grid = tuple((float(share), int(n)) for share, n in (item.split("x") for item in text.split(",")))
    except ValueError:
        raise argparse.ArgumentTypeError(f"grid {text!r}: expected SHARExN[,SHARExN...], e.g. 0.5x3,0.75x2")
    if not grid or any(not 0 < share <= 1 or n < 1 for share, n in grid):
        raise argparse.ArgumentTypeError(f"grid {text!r}: shares in (0, 1], at least one crop per axis")
    return grid


def main(argv: list[str] | None = None) -> None:
    """Add a region scorer to an existing bundle, trained on the products of the build's generated data."""
    parser = argparse.ArgumentParser(prog="python -m ml.training.regions", description=main.__doc__)
    parser.add_argument("bundle", help="bundle directory; regions.pt is written into it")
    parser.add_argument("--data", required=True, help="the build's generated data (OUT/../.NAME-work/data)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--seed", type=int, default=RegionData.seed)
    parser.add_argument("--workers", type=int, default=RegionData.workers)
    parser.add_argument("--videos-per-product", type=int, default=RegionData.videos_per_product,
                        help="capture videos filmed of each training product (default: %(default)s)")
    parser.add_argument("--grid", type=parse_grid, default=RegionConfig.grid,
                        help="candidate crops, SHARExN per scale (default: %(default)s)")
    args = parser.parse_args(argv)
    bundle = Path(args.bundle)
    meta = read_meta(bundle)
    encoder = load_encoder(bundle / "encoder.pt")
    scorer, info = train_region_scorer(encoder, load_manifest(args.data), args.split, RegionConfig(grid=args.grid),
                                       data=RegionData(seed=args.seed, workers=args.workers,
                                                      videos_per_product=args.videos_per_product))
    scorer.save(bundle / REGIONS_FILE)
    (bundle / META_FILE).write_text(json.dumps(meta | {"regions": info}, indent=2))
    print(json.dumps(info))


if __name__ == "__main__":
    main()
