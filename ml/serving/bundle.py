"""A model bundle: what serving needs to turn uploads into index vectors, in one directory.

    bundle/
      bundle.json    name, embed_dim, frames_per_video, instance (towers' config), metrics, how it was trained
      encoder.pt     open_clip image + text towers (ml.serving.encoders checkpoint)
      towers.pt      weights of the two instance towers (`ml.serving.towers.InstanceTowers`), no key heads,
                     queues or optimiser; their config is ``instance`` in bundle.json
      text_query.pt  optional: text query head into the same space (ml.serving.text_query), for text search
      two_stage.pt   optional: salient frames, category head, re-ranking head and their weights (ml.serving.two_stage)
      regions.pt     optional: the region scorer; with it each sampled frame is pooled with its most product-like
                     crop before the towers (ml.serving.regions)

The database's ModelVersion points at a bundle directory; every vector in the index names it.
Loading imports serving code only. Bundles written before ``towers.pt`` existed ship ``instance.pt``, a
training checkpoint: their towers are read out of it (the rest of the checkpoint is skipped).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from ml.serving.encoders import Encoder, load_encoder
from ml.serving.features import FRAMES_PER_VIDEO, photo_features, product_features, video_features
from ml.serving.regions import RegionScorer
from ml.serving.text_query import TextQueryHead
from ml.serving.towers import InstanceTowers, embed_products, embed_videos
from ml.serving.two_stage import ProductDetail, TwoStage

META_FILE = "bundle.json"
TOWERS_FILE = "towers.pt"
REGIONS_FILE = "regions.pt"
LEGACY_INSTANCE_FILE = "instance.pt"  # a training checkpoint: bundles written before towers.pt


def read_meta(path: str | Path) -> dict:
    meta_path = Path(path) / META_FILE
    if not meta_path.exists():
        raise FileNotFoundError(f"{path} is not a model bundle (no {META_FILE})")
    meta = json.loads(meta_path.read_text())
    for key in ("name", "embed_dim"):
        if key not in meta:
            raise ValueError(f"{meta_path} lacks {key!r}")
    return meta


def load_towers(path: Path, meta: dict, device: str = "cpu") -> InstanceTowers:
    """The instance towers of a bundle: ``towers.pt`` + the config in bundle.json, or a legacy ``instance.pt``."""
    if (path / TOWERS_FILE).exists():
        if "instance" not in meta:
            raise ValueError(f"{path / META_FILE} lacks 'instance', the config of {TOWERS_FILE}")
        state = torch.load(path / TOWERS_FILE, map_location=device, weights_only=True)
        return InstanceTowers.from_state(meta["instance"], state, device)
    if (path / LEGACY_INSTANCE_FILE).exists():
        ckpt = torch.load(path / LEGACY_INSTANCE_FILE, map_location=device, weights_only=True)
        try:
            config, state = ckpt["config"]["instance"], ckpt["model"]
        except (KeyError, TypeError):
            raise ValueError(f"{path / LEGACY_INSTANCE_FILE} is not an instance-tower checkpoint") from None
        return InstanceTowers.from_state(config, state, device)
    raise FileNotFoundError(f"{path} is not a complete model bundle (neither {TOWERS_FILE} nor {LEGACY_INSTANCE_FILE})")


class Embedded(NamedTuple):
    vectors: np.ndarray  # [N, D] unit vectors for the index
    details: list | None  # per item a VideoDetail / ProductDetail for the second stage; None without one


class ModelBundle:
    def __init__(self, encoder: Encoder, instance: InstanceTowers, meta: dict, text_query: TextQueryHead | None = None,
                 two_stage: TwoStage | None = None, regions: RegionScorer | None = None):
        self.encoder = encoder
        self.instance = instance.eval()
        self.meta = meta
        self.text_query = text_query
        self.two_stage = two_stage
        self.regions = regions

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
        instance = load_towers(path, meta, device)
        text_query = TextQueryHead.load(path / "text_query.pt") if (path / "text_query.pt").exists() else None
        two_stage = TwoStage.load(path / "two_stage.pt") if (path / "two_stage.pt").exists() else None
        regions = RegionScorer.load(path / REGIONS_FILE) if (path / REGIONS_FILE).exists() else None
        return cls(encoder, instance, meta, text_query, two_stage, regions)

    @staticmethod
    def write(path: str | Path, encoder: Encoder, towers: InstanceTowers, meta: dict,
              text_query: TextQueryHead | None = None, two_stage: TwoStage | None = None,
              regions: RegionScorer | None = None) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        encoder.save(path / "encoder.pt")
        torch.save(towers.state_dict(), path / TOWERS_FILE)
        if text_query is not None:
            text_query.save(path / "text_query.pt")
        if two_stage is not None:
            two_stage.save(path / "two_stage.pt")
        if regions is not None:
            regions.save(path / REGIONS_FILE)
        (path / META_FILE).write_text(json.dumps(meta | {"instance": towers.config_dict()}, indent=2))
        return path

    @torch.no_grad()
    def embed_videos(self, frames: Sequence[np.ndarray], captions: Sequence[str]) -> Embedded:
        """Videos given as uint8 frames [T, H, W, 3] and their captions; the vectors pool the frames the second
        stage keeps (the salient ones when the bundle selects them, else all)."""
        feats, mask, text = video_features(self.encoder, frames, captions, self.regions)
        if self.two_stage is None:
            return Embedded(embed_videos(self.instance, feats, text, mask), None)
        details = self.two_stage.describe_videos(feats, mask, text, [bool(c.strip()) for c in captions])
        kept = torch.stack([d.kept for d in details])
        return Embedded(embed_videos(self.instance, feats, text, kept), details)

    @torch.no_grad()
    def embed_products(self, photos: Sequence[Sequence[np.ndarray]], texts: Sequence[str]) -> Embedded:
        """Products given as lists of uint8 photos [H, W, 3] and their texts (`ml.serving.texts.product_text`)."""
        if self.two_stage is None:
            feats, mask, text = product_features(self.encoder, photos, texts)
            return Embedded(embed_products(self.instance, feats, text, mask), None)
        feats, mask = photo_features(self.encoder, photos)
        text, *words = self.encoder.encode_text_and_tokens(list(texts))  # one text pass: sentences and words
        return Embedded(embed_products(self.instance, feats, text, mask),
                        self._product_details(list(texts), text, feats, mask, words=words))

    @torch.no_grad()
    def embed_text_query(self, query: str, detail: bool = True) -> Embedded:
        """A free-text query: its unit vector [1, D], searchable in both collections, and with ``detail`` (and a
        second stage) what the re-ranking head reads of it: its words and sentence, no photos."""
        if self.text_query is None:
            raise ValueError(f"model {self.meta['name']} has no text query head: it cannot serve text search")
        if self.two_stage is None or not detail:
            return Embedded(self.text_query(self.encoder.encode_texts([query]).cpu()).numpy(), None)
        sentence, *words = self.encoder.encode_text_and_tokens([query])
        return Embedded(self.text_query(sentence).numpy(), self._product_details([query], sentence, words=words))

    def _product_details(self, texts: list[str], sentences, photos=None, photo_mask=None, words=None
                         ) -> list[ProductDetail]:
        """Per text its valid word features, its sentence feature and, for a product, its valid photos; ``words``:
        (tokens, mask) of the texts when already encoded."""
        words, word_mask = words or self.encoder.encode_text_tokens(texts)
        return [ProductDetail(words[i][word_mask[i]], word_mask[i][word_mask[i]], sentences[i].half(),
                              *(() if photos is None else (photos[i][photo_mask[i]].half(), photo_mask[i][photo_mask[i]])))
                for i in range(len(texts))]
