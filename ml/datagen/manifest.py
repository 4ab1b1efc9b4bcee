"""The records of a generated dataset and its `manifest.json` (paths are relative to the dataset dir)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .config import SPLITS

MANIFEST_NAME = "manifest.json"
# What each encoded frame of a video shows; everything but "product" is noise for salient-frame filtering.
FRAME_KINDS = ("product", "black", "transition", "logo", "scene")


@dataclass
class Product:
    sku: str
    title: str
    description: str
    price: float
    category_path: str  # `Category.path` of a lower category, e.g. "clothes/bags/backpack"
    attributes: dict[str, str]  # colour, accent_colour, pattern, texture, shape, brand, model
    split: str
    images: list[str] = field(default_factory=list)


@dataclass
class Video:
    key: str
    product_sku: str
    caption: str
    file: str  # .mp4, or .npy (uint8 [T,H,W,3]) for train/val when generated with frames_as_npy
    split: str
    fps: int
    frame_kinds: list[str] = field(default_factory=list)  # one entry per encoded frame
    capture: str | None = None  # capture preset (ml.datagen.capture.CONDITIONS) when generated with a capture mix
    caption_kind: str | None = None  # ml.datagen.captions.CAPTION_KINDS entry when generated with a caption mix

    def record(self) -> dict:
        """The manifest entry: the mix fields only when set, so manifests made without mixes stay as they were."""
        return {k: v for k, v in asdict(self).items() if v is not None or k not in OPTIONAL_VIDEO_FIELDS}


OPTIONAL_VIDEO_FIELDS = ("capture", "caption_kind")


@dataclass
class Manifest:
    root: Path
    generator: dict
    splits: dict[str, dict]  # split -> {"products", "videos", "chance_r1"}
    products: list[Product]
    videos: list[Video]

    def __post_init__(self):
        self._by_sku = {p.sku: p for p in self.products}

    def product(self, sku: str) -> Product:
        return self._by_sku[sku]

    def products_in(self, split: str) -> list[Product]:
        return [p for p in self.products if p.split == split]

    def videos_in(self, split: str) -> list[Video]:
        return [v for v in self.videos if v.split == split]

    def chance_r1(self, split: str) -> float:
        """R@1 of a random ranking when a split's videos are matched against that split's products."""
        return self.splits[split]["chance_r1"]

    def path(self, relative: str) -> Path:
        return self.root / relative


def split_summary(products: list[Product], videos: list[Video]) -> dict[str, dict]:
    out = {}
    present = {p.split for p in products}
    for split in [s for s in SPLITS if s in present]:
        n = sum(p.split == split for p in products)
        out[split] = {"products": n, "videos": sum(v.split == split for v in videos), "chance_r1": 1.0 / n}
    return out


def write_manifest(root: Path, generator: dict, products: list[Product], videos: list[Video]) -> Path:
    payload = {
        "generator": generator,
        "frame_kinds": list(FRAME_KINDS),
        "splits": split_summary(products, videos),
        "products": [asdict(p) for p in products],
        "videos": [v.record() for v in videos],
    }
    path = Path(root) / MANIFEST_NAME
    path.write_text(json.dumps(payload, indent=1, ensure_ascii=False), encoding="utf-8")
    return path


def load_manifest(root: str | Path) -> Manifest:
    root = Path(root)
    data = json.loads((root / MANIFEST_NAME).read_text(encoding="utf-8"))
    return Manifest(
        root=root,
        generator=data["generator"],
        splits=data["splits"],
        products=[Product(**p) for p in data["products"]],
        videos=[Video(**v) for v in data["videos"]],
    )
