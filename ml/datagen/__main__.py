"""CLI: python -m ml.datagen OUT_DIR --size tiny|demo|full --seed N [--capture-mix clean=2,all=1 --caption-mix ...]"""
from __future__ import annotations

import argparse
import time

from . import SIZES, generate_dataset


def mix(text: str) -> dict[str, float]:
    """Parse "clean=2,all=1" into {"clean": 2.0, "all": 1.0}."""
    try:
        return {name.strip(): float(weight) for name, weight in (part.split("=") for part in text.split(","))}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=WEIGHT,..., got {text!r}") from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ml.datagen", description=__doc__)
    parser.add_argument("out_dir")
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, help="processes (default: the size's preset)")
    parser.add_argument("--caption-difficulty", type=float, help="0 easy .. 1 hard (default 0.5)")
    parser.add_argument("--visual-difficulty", type=float, help="0 easy .. 1 hard (default 0.5)")
    parser.add_argument("--frames-as-npy", action="store_true", default=None,
                        help="write train/val videos as .npy frame arrays (test videos stay encoded)")
    parser.add_argument("--capture-mix", type=mix, help="train/val capture presets, e.g. clean=2,all=1 "
                        "(ml.datagen.capture.CONDITIONS)")
    parser.add_argument("--caption-mix", type=mix, help="train/val caption kinds, e.g. product_words=3,empty=1")
    args = parser.parse_args(argv)

    config = SIZES[args.size].with_overrides(
        caption_difficulty=args.caption_difficulty, visual_difficulty=args.visual_difficulty,
        frames_as_npy=args.frames_as_npy, workers=args.workers, capture_mix=args.capture_mix,
        caption_mix=args.caption_mix,
    )
    start = time.perf_counter()
    manifest = generate_dataset(args.out_dir, config, seed=args.seed)
    print(f"wrote {len(manifest.products)} products, {len(manifest.videos)} videos to {args.out_dir} "
          f"in {time.perf_counter() - start:.1f}s")
    for split, info in manifest.splits.items():
        print(f"  {split}: {info['products']} products, {info['videos']} videos, chance R@1 {info['chance_r1']:.4f}")


if __name__ == "__main__":
    main()
