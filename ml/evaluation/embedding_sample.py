"""Product embeddings of a trained bundle on a generated catalogue, saved as ``.npy``: the real distribution
that ``python -m matching.bench_index --like FILE`` matches its synthetic rows to.

    python -m ml.evaluation.embedding_sample --bundle var/models/demo-v1 --out var/product-embeddings.npy

The catalogue is the generator's full size (every lower category) with a seed of its own; each product is
embedded from its catalogue photos and text, as ingest does.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ml.datagen.catalog import sample_products
from ml.datagen.config import SIZES
from ml.datagen.draw import render_product_photo
from ml.serving.bundle import ModelBundle
from ml.serving.texts import product_text

BATCH = 64


def product_embeddings(bundle: ModelBundle, size: str = "full", seed: int = 7, progress: bool = False) -> np.ndarray:
    config = SIZES[size]
    products = sample_products(config, seed)
    chunks = []
    for start in range(0, len(products), BATCH):
        batch = products[start:start + BATCH]
        photos = [[render_product_photo(p, variant, config.photo_size) for variant in range(len(p.images) or 1)]
                  for p in batch]
        texts = [product_text(p.title, p.description) for p in batch]
        chunks.append(bundle.embed_products(photos, texts).vectors)
        if progress:
            print(f"[embedding_sample] {start + len(batch)}/{len(products)} products", file=sys.stderr, flush=True)
    return np.concatenate(chunks).astype(np.float32)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--size", default="full", choices=sorted(SIZES))
    parser.add_argument("--seed", type=int, default=7, help="catalogue seed (the demo trains on 1, shows 0)")
    args = parser.parse_args(argv)
    vectors = product_embeddings(ModelBundle.load(args.bundle), args.size, args.seed, progress=sys.stderr.isatty())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    np.save(args.out, vectors)
    print(f"{len(vectors)} product embeddings ({vectors.shape[1]}-d) -> {args.out}")


if __name__ == "__main__":
    main()
