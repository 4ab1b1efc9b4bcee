"""A model bundle: what serving needs to turn uploads into index vectors, in one directory.

    bundle/
      bundle.json    name, embed_dim, frames_per_video, frame_size, metrics, how it was trained
      encoder.pt     open_clip image + text towers (ml.encoders checkpoint)
      instance.pt    instance towers trained with MQMC or a baseline (ml.train_instance checkpoint)
      text_query.pt  optional: text query head into the same space (ml.text_search), for text search

The database's ModelVersion points at a bundle directory; every vector in the index names it.
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ml.encoders import Encoder, load_encoder
from ml.features import FRAMES_PER_VIDEO, product_features, video_features
from ml.text_search import TextQueryHead
from ml.train_instance import embed_products, embed_videos, load_checkpoint

META_FILE = "bundle.json"


def read_meta(path: str | Path) -> dict:
    meta_path = Path(path) / META_FILE
    if not meta_path.exists():
        raise FileNotFoundError(f"{path} is not a model bundle (no {META_FILE})")
    meta = json.loads(meta_path.read_text())
    for key in ("name", "embed_dim"):
        if key not in meta:
            raise ValueError(f"{meta_path} lacks {key!r}")
    return meta


class ModelBundle:
    def __init__(self, encoder: Encoder, instance: torch.nn.Module, meta: dict, text_query: TextQueryHead | None = None):
        self.encoder = encoder
        self.instance = instance.eval()
        self.meta = meta
        self.text_query = text_query

    @property
    def embed_dim(self) -> int:
        return int(self.meta["embed_dim"])

    @property
    def frames_per_video(self) -> int:
        return int(self.meta.get("frames_per_video", FRAMES_PER_VIDEO))

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> "ModelBundle":
        path = Path(path)
        meta = read_meta(path)
        encoder = load_encoder(path / "encoder.pt", device=device)
        instance, _ = load_checkpoint(path / "instance.pt", device=device)
        text_query = TextQueryHead.load(path / "text_query.pt") if (path / "text_query.pt").exists() else None
        return cls(encoder, instance, meta, text_query)

    @staticmethod
    def write(path: str | Path, encoder: Encoder, instance_checkpoint: str | Path, meta: dict,
              text_query: TextQueryHead | None = None) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        encoder.save(path / "encoder.pt")
        shutil.copyfile(instance_checkpoint, path / "instance.pt")
        if text_query is not None:
            text_query.save(path / "text_query.pt")
        (path / META_FILE).write_text(json.dumps(meta, indent=2))
        return path

    @torch.no_grad()
    def embed_videos(self, frames: Sequence[np.ndarray], captions: Sequence[str]) -> np.ndarray:
        """Unit vectors [N, D] for videos given as uint8 frames [T, H, W, 3] and their captions."""
        feats, mask, text = video_features(self.encoder, frames, captions)
        return embed_videos(self.instance, feats, text, mask)

    @torch.no_grad()
    def embed_products(self, photos: Sequence[Sequence[np.ndarray]], texts: Sequence[str]) -> np.ndarray:
        """Unit vectors [N, D] for products given as lists of uint8 photos [H, W, 3] and their texts."""
        feats, mask, text = product_features(self.encoder, photos, texts)
        return embed_products(self.instance, feats, text, mask)

    @torch.no_grad()
    def embed_text_queries(self, queries: Sequence[str]) -> np.ndarray:
        """Unit vectors [N, D] for free-text queries, searchable in both collections."""
        if self.text_query is None:
            raise ValueError(f"model {self.meta['name']} has no text query head: it cannot serve text search")
        return self.text_query(self.encoder.encode_texts(list(queries)).cpu()).numpy()
