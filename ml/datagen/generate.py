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

from .capture import CONDITIONS, DEFAULT_CRF, render_capture
from .captions import CAPTION_KINDS, make_caption
from .catalog import sample_products
from .config import SPLITS, DatasetConfig
from .draw import render_product_photo, stable_seed
from .manifest import Manifest, Product, Video, load_manifest, write_manifest
from .video import encode_video, render_video_frames

JPEG_QUALITY = 90
DISTRACTOR_POOL = 8  # other products a video's distractors are drawn from


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
    """One video record (caption and frame kinds still empty) per chosen product, then the filmed test videos."""
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
    if config.filmed_per_condition:
        pool = [p for p in products if p.split == "test"]
        for p in spread_sample(pool, config.filmed_per_condition, np.random.default_rng([seed, 7])):
            for preset in CONDITIONS:
                key = f"{p.sku}-{preset}"
                videos.append(Video(key=key, product_sku=p.sku, caption="", file=f"videos/test/{key}.mp4",
                                    split="test", fps=config.fps, capture=preset))
    return videos


def write_photos(product: Product, config: DatasetConfig, root: Path) -> None:
    for variant, rel in enumerate(product.images):
        image = Image.fromarray(render_product_photo(product, variant, config.photo_size))
        image.save(root / rel, quality=JPEG_QUALITY)


def mix_choice(mix: dict[str, float], rng: np.random.Generator) -> str:
    names = sorted(mix)
    weights = np.array([mix[n] for n in names], float)
    return names[int(rng.choice(len(names), p=weights / weights.sum()))]


def distractor_pool(video: Video, products: list[Product], config: DatasetConfig, seed: int) -> list[Product]:
    """A few other products of the video's split, for the distractors condition (only for captured videos)."""
    if config.capture_mix is None and video.capture is None:
        return []
    pool = [p for p in products if p.split == video.split and p.sku != video.product_sku]
    rng = np.random.default_rng([seed, 4, stable_seed(video.key)])
    return [pool[i] for i in rng.choice(len(pool), size=min(len(pool), DISTRACTOR_POOL), replace=False)]


def write_video(video: Video, product: Product, config: DatasetConfig, seed: int, root: Path,
                others: list[Product] = ()) -> Video:
    rng = np.random.default_rng([seed, 2, stable_seed(video.key)])
    mixes = np.random.default_rng([seed, 3, stable_seed(video.key)])  # the mixes' draws leave the video's own alone
    mixed = video.split != "test"
    caption_kind = mix_choice(config.caption_mix, mixes) if mixed and config.caption_mix else None
    capture = video.capture or (mix_choice(config.capture_mix, mixes) if mixed and config.capture_mix else None)
    caption = make_caption(product, rng, config.caption_difficulty, caption_kind or "product_words")
    n_frames = int(round(rng.uniform(*config.seconds) * config.fps))
    crf = DEFAULT_CRF
    if capture is None:
        frames, kinds = render_video_frames(product, rng, n_frames, config.video_size, config.visual_difficulty)
    else:
        captured = render_capture(product, rng, n_frames, config.video_size, config.visual_difficulty,
                                  CONDITIONS[capture], others)
        frames, kinds, crf = captured.frames, captured.kinds, captured.crf
    if video.file.endswith(".npy"):
        np.save(root / video.file, frames)
    else:
        encode_video(frames, root / video.file, config.fps, crf=crf)
    return replace(video, caption=caption, frame_kinds=kinds, capture=capture, caption_kind=caption_kind)


def run_job(job: tuple) -> Video | None:
    kind, item, product, config, seed, root, others = job
    if kind == "photos":
        return write_photos(product, config, root)
    return write_video(item, product, config, seed, root, others)


def generator_settings(config: DatasetConfig, seed: int) -> dict:
    # Output does not depend on workers; mixes and filmed videos are recorded only when set (settings of older
    # manifests stay the same).
    settings = {k: v for k, v in asdict(config).items()
                if k != "workers" and not (k in ("capture_mix", "caption_mix", "filmed_per_condition") and not v)}
    return {"size": config.name, "seed": seed, **settings}


def check_mixes(config: DatasetConfig) -> None:
    for mix, known in ((config.capture_mix, CONDITIONS), (config.caption_mix, CAPTION_KINDS)):
        unknown = sorted(set(mix or ()) - set(known))
        if unknown or (mix is not None and (not mix or min(mix.values()) < 0 or sum(mix.values()) <= 0)):
            raise ValueError(f"bad mix {mix}: names must be among {sorted(known)}, weights >= 0 with a positive sum")


def generate_dataset(out_dir: str | Path, config: DatasetConfig, seed: int = 0, workers: int | None = None,
                     progress: bool = True) -> Manifest:
    check_mixes(config)
    root = Path(out_dir)
    products = sample_products(config, seed)
    videos = plan_videos(products, config, seed)
    by_sku = {p.sku: p for p in products}
    for sub in ["images", *(f"videos/{s}" for s in SPLITS)]:
        (root / sub).mkdir(parents=True, exist_ok=True)

    jobs = [("photos", None, p, config, seed, root, []) for p in products]
    jobs += [("video", v, by_sku[v.product_sku], config, seed, root, distractor_pool(v, products, config, seed))
             for v in videos]
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
