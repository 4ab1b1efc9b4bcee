"""From a generated dataset to per-split `FeatureSet`s: decode, train the image tower, extract features.

The steps that `ml.training.build` (serving bundle) and `ml.evaluation.benchmark` (method comparison) share, in one
place. The image tower learns from the train split only (product photos and the product frames of
train videos), so validation and test products stay unseen until features are extracted.

With a ``cache_dir`` the result (tower checkpoint + one ``<split>.pt`` per split) is written under
a key of the dataset's generator settings, the recipe and the splits; a rerun with the same
inputs loads it instead of decoding and training again. The decoded frames are cached too (under
a key without the tower settings), so a new tower recipe does not decode the videos again.
"""
from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import open_clip
from PIL import Image

from ml.serving.encoders import Encoder, load_encoder
from ml.serving.features import load_photo
from ml.training.dataset import decode_videos, manifest_features, sampled_frame_kinds
from ml.serving.texts import product_text
from ml.training.data import FeatureSet
from ml.training.train_tower import AUGMENTATIONS, train_tower


@dataclass(frozen=True)
class FeatureRecipe:
    """How features are made from a dataset: which encoder, how its image tower trains, how videos are sampled."""

    encoder: str = "mv-tiny-vit-minilm"
    tower_steps: int = 400
    tower_batch: int = 64
    frames_per_video: int = 8
    seed: int = 0
    augmentation: str = "light"  # of the image tower's training images: a name in train_tower.AUGMENTATIONS


@dataclass
class PreparedFeatures:
    encoder: Encoder
    features: dict[str, FeatureSet]  # split -> features
    tower_loss: list[float]  # per tower step
    tower_pairs: int  # image/text pairs the tower trained on
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage (of the run that made them)
    cached: bool = False  # loaded from the cache


def encoder_image_size(name: str) -> int:
    """Side of the square image input of a registered open_clip config (ml.serving.encoders registers ours)."""
    size = open_clip.get_model_config(name)["vision_cfg"]["image_size"]
    return int(size if isinstance(size, int) else size[0])


def tower_pairs(manifest, frames: dict[str, np.ndarray], frames_per_video: int, image_size: int, seed: int):
    """Image/text pairs for the image tower from the train split: product photos and the product frames of its videos.

    Returns (``batch(size)`` sampler, number of pairs).
    """
    images, texts = [], []
    for p in manifest.products_in("train"):
        text = product_text(p.title, p.description)
        for rel in p.images:
            photo = Image.fromarray(load_photo(manifest.root / rel)).resize((image_size, image_size), Image.BICUBIC)
            images.append(np.asarray(photo))
            texts.append(text)
    for v in manifest.videos_in("train"):
        p = manifest.product(v.product_sku)
        for frame, kind in zip(frames[v.key], sampled_frame_kinds(v, frames_per_video)):
            if kind == "product":
                images.append(frame)
                texts.append(product_text(p.title, p.description))
    images = np.stack(images)
    rng = random.Random(seed)

    def batch(size: int):
        idx = rng.sample(range(len(images)), min(size, len(images)))
        return images[idx], [texts[i] for i in idx]

    return batch, len(images)


def cache_key(**parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def features_key(manifest, recipe: FeatureRecipe, splits: list[str]) -> str:
    """The cache key of `prepare_features`' output; derived caches (ml.evaluation.ablation) extend it."""
    return cache_key(generator=manifest.generator, recipe=asdict(recipe), splits=list(splits))


def decode_cached(manifest, videos, frames_per_video: int, frame_size: int, cache_dir: Path | None,
                  progress: bool) -> dict[str, np.ndarray]:
    """`decode_videos`, kept as one uint8 array [N, T, S, S, 3] in ``cache_dir`` when given."""
    keys = [v.key for v in videos]
    path = None
    if cache_dir is not None:
        key = cache_key(generator=manifest.generator, videos=keys, frames=frames_per_video, size=frame_size)
        path = cache_dir / f"frames-{key}.npy"
        if path.exists():
            return dict(zip(keys, np.load(path, mmap_mode="r")))
    frames = decode_videos(manifest, videos, frames_per_video=frames_per_video, frame_size=frame_size,
                           progress=progress)
    if path is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        np.save(path.with_suffix(".tmp.npy"), np.stack([frames[k] for k in keys]))
        path.with_suffix(".tmp.npy").rename(path)  # complete files only
    return frames


def prepare_features(manifest, splits: list[str], recipe: FeatureRecipe, *, cache_dir: str | Path | None = None,
                     device: str = "cpu", progress: bool = True) -> PreparedFeatures:
    """Train the image tower on the train split, then extract the features of ``splits`` with it."""
    if "train" not in splits:
        raise ValueError("the image tower trains on the train split: include it in splits")
    cache_dir = Path(cache_dir) if cache_dir is not None else None
    cache = cache_dir / features_key(manifest, recipe, splits) if cache_dir else None
    if cache is not None and (cache / "prepared.json").exists():
        info = json.loads((cache / "prepared.json").read_text())
        return PreparedFeatures(encoder=load_encoder(cache / "encoder.pt"),
                                features={s: FeatureSet.load(cache / f"{s}.pt") for s in splits},
                                tower_loss=info["tower_loss"], tower_pairs=info["tower_pairs"],
                                timings=info["timings"], cached=True)

    timings = {}
    t = time.monotonic()
    image_size = encoder_image_size(recipe.encoder)
    frames = decode_cached(manifest, [v for s in splits for v in manifest.videos_in(s)], recipe.frames_per_video,
                           image_size, cache_dir, progress)
    timings["decode_s"] = time.monotonic() - t

    t = time.monotonic()
    source, n_pairs = tower_pairs(manifest, frames, recipe.frames_per_video, image_size, recipe.seed)
    tower = train_tower(recipe.encoder, source, steps=recipe.tower_steps, batch_size=recipe.tower_batch,
                        seed=recipe.seed, progress=progress, device=device,
                        augmentation=AUGMENTATIONS[recipe.augmentation])
    timings["tower_s"] = time.monotonic() - t

    t = time.monotonic()
    features = {s: manifest_features(tower.encoder, manifest, s, frames, progress=progress) for s in splits}
    timings["features_s"] = time.monotonic() - t
    prepared = PreparedFeatures(tower.encoder, features, tower.loss_history, n_pairs, timings)

    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        tower.encoder.save(cache / "encoder.pt")
        for split, data in features.items():
            data.save(cache / f"{split}.pt")
        (cache / "prepared.json").write_text(json.dumps({  # written last: marks the entry complete
            "recipe": asdict(recipe), "generator": manifest.generator, "splits": splits, "tower_pairs": n_pairs,
            "tower_loss": tower.loss_history, "timings": timings}))
    return prepared
