"""CLI: python -m ml.datagen OUT_DIR --size tiny|demo|full --seed N"""
from __future__ import annotations

import argparse
import time

from . import SIZES, generate_dataset


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
    args = parser.parse_args(argv)

    config = SIZES[args.size].with_overrides(
        caption_difficulty=args.caption_difficulty, visual_difficulty=args.visual_difficulty,
        frames_as_npy=args.frames_as_npy, workers=args.workers,
    )
    start = time.perf_counter()
    manifest = generate_dataset(args.out_dir, config, seed=args.seed)
    print(f"wrote {len(manifest.products)} products, {len(manifest.videos)} videos to {args.out_dir} "
          f"in {time.perf_counter() - start:.1f}s")
    for split, info in manifest.splits.items():
        print(f"  {split}: {info['products']} products, {info['videos']} videos, chance R@1 {info['chance_r1']:.4f}")


if __name__ == "__main__":
    main()
