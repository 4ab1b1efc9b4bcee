"""The training data of the instance towers: pre-extracted features of a split and batches of pairs."""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch import Tensor


@dataclass
class FeatureSet:
    """Pre-extracted features of one split: Nv videos, Np products, video i paired with product video_product[i]."""

    video_frames: Tensor  # [Nv, T, Dv] float, padded
    video_frame_mask: Tensor  # [Nv, T] bool, True = real frame
    video_caption: Tensor  # [Nv, Dt]
    product_images: Tensor  # [Np, P, Dv] float, padded
    product_image_mask: Tensor  # [Np, P] bool
    product_text: Tensor  # [Np, Dt]
    product_middle: Tensor  # [Np] long, middle category index (0..29)
    product_upper: Tensor  # [Np] long, upper category index (0..5)
    video_product: Tensor  # [Nv] long, index into the products
    video_ids: list[str]
    product_ids: list[str]

    def __post_init__(self):
        nv, np_ = len(self.video_ids), len(self.product_ids)
        for name, n in (("video_frames", nv), ("video_frame_mask", nv), ("video_caption", nv), ("video_product", nv),
                        ("product_images", np_), ("product_image_mask", np_), ("product_text", np_),
                        ("product_middle", np_), ("product_upper", np_)):
            if getattr(self, name).shape[0] != n:
                raise ValueError(f"{name} has {getattr(self, name).shape[0]} rows, expected {n}")
        if self.video_frame_mask.shape != self.video_frames.shape[:2] or self.product_image_mask.shape != self.product_images.shape[:2]:
            raise ValueError("masks must have the shape of the first two dimensions of their features")
        if nv and (int(self.video_product.min()) < 0 or int(self.video_product.max()) >= np_):
            raise ValueError("video_product points outside the products")

    @property
    def num_videos(self) -> int:
        return len(self.video_ids)

    @property
    def num_products(self) -> int:
        return len(self.product_ids)

    def pair_batch(self, video_index: Tensor) -> PairBatch:
        product = self.video_product[video_index]
        return PairBatch(
            video_frames=self.video_frames[video_index],
            video_frame_mask=self.video_frame_mask[video_index],
            video_caption=self.video_caption[video_index],
            product_images=self.product_images[product],
            product_image_mask=self.product_image_mask[product],
            product_text=self.product_text[product],
            middle=self.product_middle[product],
            product_index=product,
        )

    def check_categories(self, middle_to_upper: tuple[int, ...]) -> None:
        expected = torch.tensor(middle_to_upper)[self.product_middle]
        if not torch.equal(expected, self.product_upper):
            raise ValueError("product_upper disagrees with the ontology's upper category of product_middle")

    def save(self, path: str | Path) -> None:
        torch.save({f.name: getattr(self, f.name) for f in fields(self)}, path)

    @classmethod
    def load(cls, path: str | Path) -> "FeatureSet":
        return cls(**torch.load(path, weights_only=True))



@dataclass
class PairBatch:
    """A batch of (micro-video, product) pairs; row i of every field belongs to pair i."""

    video_frames: Tensor  # [B, T, Dv]
    video_frame_mask: Tensor  # [B, T] bool
    video_caption: Tensor  # [B, Dt]
    product_images: Tensor  # [B, P, Dv]
    product_image_mask: Tensor  # [B, P] bool
    product_text: Tensor  # [B, Dt]
    middle: Tensor  # [B] long: middle category of the product (its queue)
    product_index: Tensor  # [B] long: which product; pairs sharing it are not negatives of each other

    def to(self, device: torch.device | str) -> "PairBatch":
        return PairBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def __len__(self) -> int:
        return self.middle.shape[0]
