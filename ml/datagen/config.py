"""Dataset sizes as data: one generator, parameterised by a `DatasetConfig`."""
from __future__ import annotations

from dataclasses import dataclass, replace

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DatasetConfig:
    name: str
    # Lower categories used: None = every lower category of the ontology; otherwise `n_lower` of them,
    # taken `lowers_per_middle` at a time from the same middle so that siblings act as hard negatives.
    n_lower: int | None
    lowers_per_middle: int
    # Products generated per lower category and split (splits are by product).
    products_per_lower: dict[str, int]
    # Videos per split: None = one video for every product of the split, an int = one video each for
    # that many products of the split (spread over the lower categories).
    videos: dict[str, int | None]
    caption_difficulty: float = 0.5  # 0 = caption nearly repeats the title, 1 = mostly noise / empty
    visual_difficulty: float = 0.5  # 0 = steady, well-lit product shots; 1 = small, cropped, tinted, occluded
    photo_size: int = 128
    video_size: int = 128  # square footage (9:16 or square frames under the vertical condition); even for yuv420p
    fps: int = 8
    seconds: tuple[float, float] = (2.0, 4.0)
    photos_per_product: tuple[int, int] = (1, 3)
    workers: int = 1
    frames_as_npy: bool = False  # train/val videos as .npy frame arrays (test videos are always encoded)
    # Mixes for train/val videos (the test split keeps today's videos): preset name -> weight. capture_mix names
    # `ml.datagen.capture.CONDITIONS` presets, caption_mix `ml.datagen.captions.CAPTION_KINDS`. None: every video
    # as the generator has always made it (clean capture, captions with product words).
    capture_mix: dict[str, float] | None = None
    caption_mix: dict[str, float] | None = None
    # Test videos filmed under every capture preset, besides the split's own: this many products (spread over the
    # lower categories), each filmed once per preset, so a report can give a line per condition.
    filmed_per_condition: int = 0

    def with_overrides(self, **changes) -> "DatasetConfig":
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


SIZES: dict[str, DatasetConfig] = {
    # Unit tests: 4 lower categories (2 middles x 2 siblings) x 3 products; generates in about a second.
    "tiny": DatasetConfig(
        name="tiny",
        n_lower=4,
        lowers_per_middle=2,
        products_per_lower={"train": 1, "val": 1, "test": 1},
        videos={"train": None, "val": 2, "test": 2},
        seconds=(2.0, 3.0),
        photos_per_product=(1, 2),
    ),
    # Product demo: a 60-product catalogue of unseen products, 24 query videos as the generator makes them and
    # 8 products filmed under each capture preset.
    "demo": DatasetConfig(
        name="demo",
        n_lower=20,
        lowers_per_middle=2,
        products_per_lower={"test": 3},
        videos={"test": 24},
        filmed_per_condition=8,
    ),
    # Benchmark: 312 lower categories; test gallery 1248 products, one video per product in every split.
    "full": DatasetConfig(
        name="full",
        n_lower=None,
        lowers_per_middle=0,
        products_per_lower={"train": 6, "val": 1, "test": 4},
        videos={"train": None, "val": None, "test": None},
        workers=2,
    ),
}
