"""Writing a whole dataset: catalogue photos, micro-videos and `manifest.json`.

Every photo and video is rendered from its own seed (the dataset seed plus its sku / key), so the
output does not depend on job order or on the number of worker processes.
"""
from __future__ import annotations

import multiprocessing
from collections import Counter
from contextlib import nullcontext
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from .captions import make_caption
from .catalog import sample_products
from .config import SPLITS, DatasetConfig
from .draw import render_product_photo, stable_seed
from .manifest import Manifest, Product, Video, load_manifest, write_manifest
from .video import encode_video, render_video_frames

JPEG_QUALITY = 90


def spread_sample(products: list[Product], count: int, rng: np.random.Generator) -> list[Product]:
    """`count` products, taking from every lower category before taking a second from any; catalogue order."""
    order = rng.permutation(len(products))
    seen: Counter = Counter()
    ranked = []
    for pos, i in enumerate(order):
        ranked.append((seen[products[i].category_path], pos, i))
        seen[products[i].category_path] += 1
    return [products[i] for i in sorted(i for *_, i in sorted(ranked)[:count])]


def plan_videos(products: list[Product], config: DatasetConfig, seed: int) -> list[Video]:
    """One video record (caption and frame kinds still empty) per chosen product."""
    rng = np.random.default_rng([seed, 1])
    videos = []
    for split in SPLITS:
        pool = [p for p in products if p.split == split]
        count = config.videos.get(split, 0)
        chosen = pool if count is None else spread_sample(pool, count, rng)
        ext = "npy" if config.frames_as_npy and split != "test" else "mp4"
        for p in chosen:
            key = f"{p.sku}-v0"
            videos.append(Video(key=key, product_sku=p.sku, caption="", file=f"videos/{split}/{key}.{ext}",
                                split=split, fps=config.fps))
    return videos


def write_photos(product: Product, config: DatasetConfig, root: Path) -> None:
    for variant, rel in enumerate(product.images):
        image = Image.fromarray(render_product_photo(product, variant, config.photo_size))
        image.save(root / rel, quality=JPEG_QUALITY)


def write_video(video: Video, product: Product, config: DatasetConfig, seed: int, root: Path) -> Video:
    rng = np.random.default_rng([seed, 2, stable_seed(video.key)])
    caption = make_caption(product, rng, config.caption_difficulty)
    n_frames = int(round(rng.uniform(*config.seconds) * config.fps))
    frames, kinds = render_video_frames(product, rng, n_frames, config.video_size, config.visual_difficulty)
    if video.file.endswith(".npy"):
        np.save(root / video.file, frames)
    else:
        encode_video(frames, root / video.file, config.fps)
    return replace(video, caption=caption, frame_kinds=kinds)


def run_job(job: tuple) -> Video | None:
    kind, item, product, config, seed, root = job
    if kind == "photos":
        return write_photos(product, config, root)
    return write_video(item, product, config, seed, root)


def generator_settings(config: DatasetConfig, seed: int) -> dict:
    settings = {k: v for k, v in asdict(config).items() if k != "workers"}  # output does not depend on workers
    return {"size": config.name, "seed": seed, **settings}


def generate_dataset(out_dir: str | Path, config: DatasetConfig, seed: int = 0, workers: int | None = None,
                     progress: bool = True) -> Manifest:
    root = Path(out_dir)
    products = sample_products(config, seed)
    videos = plan_videos(products, config, seed)
    by_sku = {p.sku: p for p in products}
    for sub in ["images", *(f"videos/{s}" for s in SPLITS)]:
        (root / sub).mkdir(parents=True, exist_ok=True)

    jobs = [("photos", None, p, config, seed, root) for p in products]
    jobs += [("video", v, by_sku[v.product_sku], config, seed, root) for v in videos]
    workers = workers or config.workers
    done: list[Video] = []
    pool = multiprocessing.get_context("fork").Pool(workers) if workers > 1 else nullcontext()
    with pool, tqdm(total=len(jobs), desc=f"datagen {config.name}", unit="job", disable=not progress) as bar:
        for result in (pool.imap(run_job, jobs, chunksize=4) if workers > 1 else map(run_job, jobs)):
            if result is not None:
                done.append(result)
            bar.update(1)

    write_manifest(root, generator_settings(config, seed), products, done)
    return load_manifest(root)
