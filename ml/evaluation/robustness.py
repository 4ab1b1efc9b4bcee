"""Robustness benchmark: video -> product retrieval under capture conditions and caption kinds.

    python -m ml.evaluation.robustness --bundle var/models/demo --baseline DIR --out var/robustness \
        --doc docs/benchmark/robustness.md --products 60 --seed 1234

Test products come from their own seed (the demo catalogue is seed 0, the demo model trains on
seed 1), so no product, photo or video here was seen in training. Every product gets one real MP4
per capture preset (`ml.datagen.capture.CONDITIONS`: clean, each condition alone, all), all from the
same per-product seed, so rows differ only by their condition; their captions have product words.
Caption rows reuse the clean videos with the other caption kinds; the visual-only rows give the
videos empty captions (serving then leaves the caption branch out), on clean and on "all" videos.

Each video goes through the serving path as a worker runs it: ffprobe + ffmpeg frame sampling from
the file, the bundle's encoders and towers, then the index's top N re-ranked by the bundle's second
stage (`TwoStage.rank_products`, with each product's category levels), as `matching.services.rank_for`
does; products are embedded from their JPEG photos and title + description. Ranks are over the whole
test gallery (ml.evaluation.metrics). The sampled frames are kept in OUT/data: a rerun with the same
settings (e.g. for another bundle) skips rendering.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import multiprocessing
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ml.datagen import SIZES, CONDITIONS, generate_dataset
from ml.datagen.captions import make_caption
from ml.datagen.capture import render_capture, write_capture
from ml.datagen.catalog import ontology
from ml.datagen.draw import stable_seed
from ml.datagen.manifest import Product
from ml.evaluation.benchmark import machine_description
from ml.evaluation.metrics import score_ranks, summarise_ranks
from ml.serving.bundle import Embedded, ModelBundle
from ml.serving.features import frame_features as serving_frame_features, load_photo
from ml.serving.padding import pad_groups
from ml.serving.texts import product_text
from ml.serving.towers import embed_videos
from ml.serving.two_stage import TwoStageConfig
from ml.serving.video import probe_video, sample_frames

# What a worker samples (settings MVMATCH_FRAMES_PER_VIDEO, MVMATCH_KEYFRAME_SIZE) and re-ranks (MVMATCH_RERANK_TOP_N).
FRAMES_PER_VIDEO = 8
KEYFRAME_SIZE = 160
RERANK_TOP_N = TwoStageConfig.top_n
FPS = 8
CAPTION_ROWS = ("hashtags", "none")  # on the clean videos; "product_words" is the clean row itself
VISUAL_ONLY = "visual only (empty caption)"
ALL_VISUAL_ONLY = "all, visual only"
MODEL_LABELS = ("model", "baseline")  # --bundle, --baseline


@dataclass(frozen=True)
class Row:
    name: str
    videos: str  # capture preset whose files the row reads
    caption: str  # caption kind (ml.datagen.captions.CAPTION_KINDS)


def benchmark_rows() -> list[Row]:
    rows = [Row(name, name, "product_words") for name in CONDITIONS]
    rows += [Row(f"caption: {kind}", "clean", kind) for kind in CAPTION_ROWS]
    rows += [Row(VISUAL_ONLY, "clean", "empty"), Row(ALL_VISUAL_ONLY, "all", "empty")]
    return rows


# ---- data ----------------------------------------------------------------------------------------------

def test_products(root: Path, n: int, seed: int) -> list[Product]:
    """``n`` catalogue products (3 per lower category, siblings together) with their photos, from ``seed``."""
    lowers = math.ceil(n / 3)
    config = replace(SIZES["demo"], name="robustness", n_lower=lowers, products_per_lower={"test": 3},
                     videos={"test": 0}, filmed_per_condition=0)
    manifest = generate_dataset(root, config, seed=seed, progress=False)
    return manifest.products[:n]


def video_seed(seed: int, sku: str) -> list[int]:
    return [seed, 2, stable_seed(sku)]  # one per product: every preset of a product starts from it


def render_job(job: tuple) -> tuple[str, str, np.ndarray]:
    """Write one product's video under one preset, then sample it as a worker does: (sku, preset, frames)."""
    product, preset, others, seed, n_seconds, size, root, n_sampled = job
    rng = np.random.default_rng(video_seed(seed, product.sku))
    make_caption(product, rng)  # the caption stream, so every preset's video is drawn after it
    n_frames = int(round(n_seconds * FPS))
    captured = render_capture(product, rng, n_frames, size, conditions=CONDITIONS[preset], others=others)
    path = root / "videos" / preset / f"{product.sku}.mp4"
    write_capture(captured, path, FPS)
    return product.sku, preset, sampled_frames(path, n_sampled)


def sampled_frames(path: Path, n: int = FRAMES_PER_VIDEO) -> np.ndarray:
    """Frames as a worker samples them: probe the file, decode uniformly spaced frames, centre-cropped square."""
    return sample_frames(path, n, KEYFRAME_SIZE, info=probe_video(path)).frames


def captions(products: list[Product], seed: int) -> dict[str, list[str]]:
    """Per caption kind, each product's caption (product words: the one drawn first from the video's seed)."""
    out = {"product_words": [make_caption(p, np.random.default_rng(video_seed(seed, p.sku))) for p in products]}
    for kind in (*CAPTION_ROWS, "empty"):
        out[kind] = [make_caption(p, np.random.default_rng([seed, 5, stable_seed(p.sku)]), kind=kind) for p in products]
    return out


def render_videos(products: list[Product], root: Path, seed: int, size: int, seconds: tuple[float, float],
                  n_sampled: int, workers: int, report: Callable[[str], None]) -> dict[str, list[np.ndarray]]:
    """Per preset, each product's sampled frames (gallery order), from the MP4 written under root/videos/PRESET."""
    for preset in CONDITIONS:
        (root / "videos" / preset).mkdir(parents=True, exist_ok=True)
    lengths = np.random.default_rng([seed, 6]).uniform(*seconds, len(products))
    jobs = []
    for i, p in enumerate(products):
        picks = np.random.default_rng([seed, 4, i]).choice(len(products), min(8, len(products)), replace=False)
        others = [products[j] for j in picks if j != i]
        jobs += [(p, preset, others, seed, float(lengths[i]), size, root, n_sampled) for preset in CONDITIONS]
    frames: dict[str, dict[str, np.ndarray]] = {preset: {} for preset in CONDITIONS}
    pool = multiprocessing.get_context("fork").Pool(workers) if workers > 1 else nullcontext()
    with pool:
        results = pool.imap(render_job, jobs, chunksize=2) if workers > 1 else map(render_job, jobs)
        for done, (sku, preset, sampled) in enumerate(results, 1):
            frames[preset][sku] = sampled
            if done % 50 == 0 or done == len(jobs):
                report(f"rendered, encoded and sampled {done}/{len(jobs)} videos")
    return {preset: [frames[preset][p.sku] for p in products] for preset in CONDITIONS}


def cached_frames(root: Path, made_with: dict) -> dict[str, list[np.ndarray]] | None:
    """The sampled frames of an earlier run that rendered the same videos, so that other bundles are quick to add."""
    settings, arrays = root / "sampled.json", root / "sampled.npz"
    if not (settings.exists() and arrays.exists()) or json.loads(settings.read_text()) != json.loads(json.dumps(made_with)):
        return None
    with np.load(arrays) as saved:
        return {preset: list(saved[preset]) for preset in CONDITIONS}


def save_frames(root: Path, made_with: dict, frames: dict[str, list[np.ndarray]]) -> None:
    np.savez(root / "sampled.npz", **{preset: np.stack(f) for preset, f in frames.items()})
    (root / "sampled.json").write_text(json.dumps(made_with))


# ---- ranking as serving does ----------------------------------------------------------------------------

def category_levels(product: Product) -> tuple[int, int, int]:
    """(upper, middle, lower) level indices of a product's category: the model's class indices."""
    out = [-1, -1, -1]
    for node in ontology().get(product.category_path).lineage:
        out[node.level] = node.level_index
    return tuple(out)


def embed_videos_from(bundle: ModelBundle, feats: torch.Tensor, mask: torch.Tensor, text: torch.Tensor,
                      has_caption: list[bool]) -> Embedded:
    """`ModelBundle.embed_videos` from encoder features (frames encoded once per preset, captions once per kind)."""
    if bundle.two_stage is None:
        return Embedded(embed_videos(bundle.instance, feats, text, mask), None)
    details = bundle.two_stage.describe_videos(feats, mask, text, has_caption)
    return Embedded(embed_videos(bundle.instance, feats, text, torch.stack([d.kept for d in details])), details)


def served_ranks(bundle: ModelBundle, videos: Embedded, products: Embedded, levels: list, top_n: int,
                 truth: Sequence[int] | None = None) -> np.ndarray:
    """Rank of each video's product (``truth[i]``, by default product i): index order, the top ``top_n`` reordered
    by the second stage as `matching.services.rank_for` does."""
    first = videos.vectors @ products.vectors.T  # the index's inner product on unit vectors
    n_videos, n_products = first.shape
    position = np.empty_like(first)
    for v in range(n_videos):
        order = np.argsort(-first[v], kind="stable")
        if bundle.two_stage is not None and videos.details is not None and top_n:
            top = order[:top_n]
            ranked = bundle.two_stage.rank_products(videos.details[v], [products.details[i] for i in top],
                                                    [levels[i] for i in top], first[v, top].tolist())
            order = np.concatenate([top[ranked.order.numpy()], order[top_n:]])
        position[v, order] = np.arange(n_products)
    return score_ranks(-position, np.arange(n_videos) if truth is None else np.asarray(truth))[0]


def frame_features(bundle: ModelBundle, frames: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """(frame features [N, T, D], mask [N, T]) of sampled videos, as `ml.serving.features.video_features` makes them
    (with the bundle's region scorer when it has one)."""
    flat = serving_frame_features(bundle.encoder, np.concatenate(frames), bundle.regions)
    return pad_groups(list(flat.split([len(f) for f in frames])), bundle.encoder.embed_dim, dtype=torch.float32)


@torch.no_grad()
def evaluate_bundle(path: Path, products: list[Product], photos: list[list[np.ndarray]], frames: dict[str, list],
                    texts: dict[str, list[str]], report: Callable[[str], None], rerank_top_n: int = RERANK_TOP_N
                    ) -> dict[str, dict]:
    bundle = ModelBundle.load(path)
    gallery = bundle.embed_products(photos, [product_text(p.title, p.description) for p in products])
    levels = [category_levels(p) for p in products]
    top_n = rerank_top_n if bundle.two_stage is not None else 0
    features = {}  # preset -> (frame features, mask)
    captions_of = {kind: bundle.encoder.encode_texts(list(t)) for kind, t in texts.items()}
    out = {}
    for row in benchmark_rows():
        if row.videos not in features:
            features[row.videos] = frame_features(bundle, frames[row.videos])
        feats, mask = features[row.videos]
        text, has_caption = captions_of[row.caption], [bool(c.strip()) for c in texts[row.caption]]
        videos = embed_videos_from(bundle, feats, mask, text, has_caption)
        ranks = served_ranks(bundle, videos, gallery, levels, top_n)
        out[row.name] = summarise_ranks(ranks) | {"ranks": ranks.tolist()}
        report(f"{bundle.meta['name']}: {row.name} R@1 {out[row.name]['R@1']:.1f} R@10 {out[row.name]['R@10']:.1f}")
    return {"name": bundle.meta["name"], "path": str(path), "second_stage": bundle.two_stage is not None,
            "rows": out}


# ---- report -----------------------------------------------------------------------------------------------

ROW_NOTES = {
    "clean": "the generator's own look (product shots over studio / scene backdrops, noise frames between)",
    "clutter": "cluttered, textured backdrop",
    "small": "product at 20-60 % of the frame side, often partly out of frame",
    "shake": "hand-held camera: jitter, tilt, rolling",
    "light": "lighting flicker and a colour cast",
    "noise": "strong sensor noise",
    "motion_blur": "motion blur",
    "compression": "encoded at CRF 42",
    "vertical": "9:16 or square frame with blurred / coloured letterboxing (serving crops the centre square)",
    "overlay": "text banners and stickers over the product",
    "cards": "title card before, logo outro after",
    "distractors": "1-3 other gallery products in the frame",
    "all": "every condition together",
    "caption: hashtags": "clean videos, captions of hashtags and a word or two",
    "caption: none": "clean videos, captions without product words",
    VISUAL_ONLY: "clean videos, empty captions: the frames alone (the caption branch is off without a caption)",
    ALL_VISUAL_ONLY: "all conditions, empty captions",
}


def _cells(metrics: dict | None) -> list[str]:
    if metrics is None:
        return ["", "", ""]
    return [f"{metrics['R@1']:.1f}", f"{metrics['R@10']:.1f}", f"{metrics['MdR']:g}"]


def render(results: dict) -> str:
    setup, models = results["setup"], results["models"]
    n = setup["products"]
    chance = {"R@1": 100.0 / n, "R@10": 100.0 * min(1.0, 10 / n), "MdR": (n + 1) / 2}
    head = [f"{label} {k}" for label in MODEL_LABELS[:len(models)] for k in ("R@1", "R@10", "MdR")]
    head += ["chance R@1", "chance R@10", "chance MdR"]
    lines = [
        "# Robustness: video -> product under capture conditions and caption kinds",
        "",
        f"Written by `{setup['command']}` on {setup['date']} in {setup['took_s']:.0f} s.",
        "",
        f"- Test gallery: {n} products (3 per lower category, siblings together) from seed {setup['seed']}: the demo "
        "catalogue is seed 0 and the demo model trains on seed 1, so no product here was seen in training. "
        "One MP4 per product and row; all rows of a product start from the same seed, so rows differ only by "
        "their condition (each preset at 100 %, a mix no training run uses).",
        "- Serving path: ffprobe + ffmpeg sampling of "
        f"{setup['frames']} frames at {KEYFRAME_SIZE} px from the file, the bundle's encoders and towers, the "
        f"index's top {setup.get('rerank_top_n', RERANK_TOP_N)} re-ranked by the bundle's second stage (when it has one); products from "
        "their JPEG photos and title + description. Ranks over the whole gallery.",
        "- Condition rows have captions with product words; caption rows reuse the clean videos.",
        f"- Machine: {setup['machine']}.",
        "",
        "| row | " + " | ".join(head) + " | what the videos are |",
        "|---|" + "---|" * (len(head) + 1),
    ]
    for row in benchmark_rows():
        cells = [c for m in models for c in _cells(m["rows"].get(row.name))] + _cells(chance)
        lines.append(f"| {row.name} | " + " | ".join(cells) + f" | {ROW_NOTES[row.name]} |")
    lines += ["", "R@K in %, MdR = median rank of the true product (1 = first). " + "; ".join(
        f"{label}: {m['name']} (`{m['path']}`{', with second stage' if m['second_stage'] else ''})"
        for label, m in zip(MODEL_LABELS, models)) + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ml.evaluation.robustness", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True, help="the product's default model bundle")
    parser.add_argument("--baseline", help="the model to compare with (e.g. the one before a change)")
    parser.add_argument("--out", default="var/robustness", help="videos, photos and results.json")
    parser.add_argument("--doc", help="write the markdown table here")
    parser.add_argument("--products", type=int, default=60)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--video-size", type=int, default=128, help="side of the square footage (even)")
    parser.add_argument("--seconds", type=float, nargs=2, default=(2.0, 4.0), metavar=("MIN", "MAX"),
                        help="video lengths (the generator's own range by default)")
    parser.add_argument("--frames", type=int, default=FRAMES_PER_VIDEO, help="frames sampled per video (as the worker)")
    parser.add_argument("--workers", type=int, default=2, help="processes rendering videos")
    parser.add_argument("--rerank-top-n", type=int, default=RERANK_TOP_N,
                        help="candidates the second stage re-ranks (as MVMATCH_RERANK_TOP_N; 0: index order)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress lines on stderr (default: when stderr is a terminal)")
    args = parser.parse_args(argv)
    if args.products < 2 or args.video_size % 2:
        parser.error("--products must be at least 2 and --video-size even")
    progress = sys.stderr.isatty() if args.progress is None else args.progress

    def report(line: str) -> None:
        if progress:
            print(f"[robustness {time.perf_counter() - start:6.0f}s] {line}", file=sys.stderr, flush=True)

    start = time.perf_counter()
    out = Path(args.out)
    data = out / "data"
    products = test_products(data, args.products, args.seed)
    report(f"{len(products)} test products")
    made_with = {"seed": args.seed, "skus": [p.sku for p in products], "video_size": args.video_size,
                 "seconds": list(args.seconds), "frames": args.frames,
                 "conditions": {k: asdict(v) for k, v in CONDITIONS.items()}}
    frames = cached_frames(data, made_with)
    if frames is None:
        frames = render_videos(products, data, args.seed, args.video_size, tuple(args.seconds), args.frames,
                               args.workers, report)
        save_frames(data, made_with, frames)
    else:
        report("sampled frames of an earlier run with the same settings (delete DIR/data to render again)")
    photos = [[load_photo(data / rel) for rel in p.images] for p in products]
    texts = captions(products, args.seed)
    models = [evaluate_bundle(Path(args.bundle), products, photos, frames, texts, report, args.rerank_top_n)]
    if args.baseline:
        same = Path(args.baseline).resolve() == Path(args.bundle).resolve()
        models.append(models[0] if same else evaluate_bundle(Path(args.baseline), products, photos, frames, texts,
                                                             report, args.rerank_top_n))
    command = "python -m ml.evaluation.robustness " + " ".join(sys.argv[1:] if argv is None else argv)
    setup = {"command": command, "seed": args.seed, "products": len(products), "video_size": args.video_size,
             "frames": args.frames, "seconds": list(args.seconds), "rerank_top_n": args.rerank_top_n,
             "machine": machine_description("cpu"), "date": datetime.datetime.now(datetime.timezone.utc).strftime(
                 "%Y-%m-%d %H:%M UTC"), "took_s": time.perf_counter() - start,
             "skus": [p.sku for p in products], "conditions": {k: asdict(v) for k, v in CONDITIONS.items()}}
    results = {"setup": setup, "models": models}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    if args.doc:
        Path(args.doc).parent.mkdir(parents=True, exist_ok=True)
        Path(args.doc).write_text(render(results))
    print(f"robustness: {len(products)} products, {len(benchmark_rows())} rows, {len(models)} model(s) in "
          f"{setup['took_s']:.0f} s -> {out / 'results.json'}" + (f", {args.doc}" if args.doc else ""))


if __name__ == "__main__":
    main()
