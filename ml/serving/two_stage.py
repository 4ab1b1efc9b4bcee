"""Retrieval around the vector index, as the product runs it (the "product default" row of docs/ablation.md).

- Indexing: salient frames (`ml.serving.salient`) choose the frames a video's stored embedding pools;
  the category head (`ml.serving.category`) predicts the video's category from frames + caption.
- Querying: the index returns the top N by pooled embeddings; the multi-grained head
  (`ml.serving.rerank`) rescores them from frames, words and photos, the caption branch (`ml.serving.caption_branch`)
  adds the match of the video's caption with the product's text (or the text query), and the
  predicted category boosts products of likely categories:

      score = index cosine + w_fine * fine + w_caption * cos(caption, text) + w_category * log p(category | video)

  The frame with the highest AOSM weight is the frame that drove the match (the most salient
  frame when there is no re-ranking head).

`ml.training.second_stage.fit_two_stage` trains the heads on the training split and tunes the weights on validation
(0 is on the grid, so a part that does not help there is off). A model bundle stores it as
``two_stage.pt``. Per video / product, serving stores the encoder-level features the heads read:
`VideoDetail` / `ProductDetail`, packed to bytes.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from ml.serving.caption_branch import caption_scores
from ml.serving.category import LEVELS, CategoryConfig, CategoryHead
from ml.serving.padding import pad_groups
from ml.serving.rerank import MultiGrainedHead, ProductFine, RerankConfig, VideoFine
from ml.serving.salient import SalientConfig, SalientFrameSelector


@dataclass(frozen=True)
class TwoStageConfig:
    salient: SalientConfig | None = SalientConfig()  # None: every sampled frame is pooled
    rerank: RerankConfig | None = RerankConfig()  # None: index order (plus the category boost)
    top_n: int = 20  # candidates the index returns for re-ranking (docs/serving.md: why 20)
    category: CategoryConfig | None = CategoryConfig()  # None: no prediction, no boost
    caption_grid: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)  # (0.0,): no caption branch
    boost_levels: tuple[str, ...] = ("middle", "lower")
    boost_grid: tuple[float, ...] = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2)


# ---- what serving stores per video / product -------------------------------------------------------

def pack(arrays: dict[str, Tensor | None]) -> bytes:
    """Tensors to compact bytes for a database column: a JSON header (name -> dtype, shape), then the
    raw arrays. Unpacking 50 candidates this way is ~10x faster than npz (no zip, no per-array header parse)."""
    arrays = {k: np.ascontiguousarray(v.numpy()) for k, v in arrays.items() if v is not None}
    header = json.dumps({k: [a.dtype.str, list(a.shape)] for k, a in arrays.items()}).encode()
    return len(header).to_bytes(4, "little") + header + b"".join(a.tobytes() for a in arrays.values())


def unpack(blob: bytes) -> dict[str, Tensor]:
    blob = bytes(blob)
    size = int.from_bytes(blob[:4], "little")
    offset, out = 4 + size, {}
    for name, (dtype, shape) in json.loads(blob[4:offset]).items():
        array = np.frombuffer(blob, dtype=np.dtype(dtype), count=int(np.prod(shape)), offset=offset).reshape(shape)
        offset += array.nbytes
        out[name] = torch.from_numpy(array.copy())
    return out


class _Stored:
    """A dataclass of tensors kept in a database column (`pack` / `unpack`)."""

    def to_bytes(self) -> bytes:
        return pack(asdict(self))

    @classmethod
    def from_bytes(cls, blob: bytes):
        return cls(**unpack(blob))


@dataclass
class VideoDetail(_Stored):
    """One video: frame features [T, D] (float16), valid frames [T], frames its embedding pooled [T],
    their saliency [T] (None without a selector), lower-category log-probabilities (None without a head),
    caption feature [D] (None when the caption is empty)."""

    frames: Tensor
    frame_mask: Tensor
    kept: Tensor
    saliency: Tensor | None = None
    category: Tensor | None = None
    caption: Tensor | None = None


@dataclass
class ProductDetail(_Stored):
    """One product (or text query): word features [L, D] + mask, sentence [D], photos [P, D] + mask (None for a query)."""

    words: Tensor
    word_mask: Tensor
    sentence: Tensor
    photos: Tensor | None = None
    photo_mask: Tensor | None = None


def videos_fine(items, dtype: torch.dtype | None = None) -> VideoFine:
    """`VideoDetail`s (or one-video `VideoFine`s) padded into one batch."""
    return VideoFine(*pad_groups([d.frames for d in items], masks=[d.frame_mask for d in items], dtype=dtype))


def products_fine(items, dtype: torch.dtype | None = None) -> ProductFine:
    """`ProductDetail`s (or one-product `ProductFine`s) padded into one batch; photos only if every item has them."""
    words, word_mask = pad_groups([d.words for d in items], masks=[d.word_mask for d in items], dtype=dtype)
    sentence = torch.stack([d.sentence for d in items])
    if any(d.photos is None for d in items):
        return ProductFine(words, word_mask, sentence)
    return ProductFine(words, word_mask, sentence,
                       *pad_groups([d.photos for d in items], masks=[d.photo_mask for d in items], dtype=dtype))


class Prepared(NamedTuple):
    """A video or product as the second stage reads it: its stored features and, with a re-ranking head, those
    features through the head's learned maps (one item, unbatched). Serving keeps candidates in this form
    (`matching.feature_cache`) so that the maps run once per indexed item, not once per lookup."""

    detail: VideoDetail | ProductDetail
    fine: VideoFine | ProductFine | None


# ---- the parts and their weights --------------------------------------------------------------------

class Ranked(NamedTuple):
    order: Tensor  # [N] candidate positions, best first
    score: Tensor  # [N] final score of each candidate (input order)
    frame: Tensor | None  # [N] the frame that drove each match (video positions), None if unknown


class TwoStage(nn.Module):
    """Salient-frame selector, category head and re-ranking head of a bundle, with tuned weights."""

    def __init__(self, dim: int, text_dim: int, cfg: TwoStageConfig = TwoStageConfig()):
        super().__init__()
        self.cfg, self.dims = cfg, (dim, text_dim)
        self.selector = SalientFrameSelector(dim, cfg.salient) if cfg.salient else None
        self.rerank_head = MultiGrainedHead(dim, cfg.rerank) if cfg.rerank else None
        self.category_head = CategoryHead(dim, text_dim, cfg.category) if cfg.category else None
        self.weights = {"rerank": 0.0, "rerank_text": 0.0, "caption": 0.0, "caption_text": 0.0,
                        "boost_level": "middle", "boost": 0.0}

    # -- indexing --
    @torch.no_grad()
    def describe_videos(self, frames: Tensor, mask: Tensor, caption: Tensor, has_caption: list[bool]
                        ) -> list[VideoDetail]:
        """Per video what serving stores; ``kept`` is the mask the stored embedding pools."""
        kept, saliency, category = mask, None, None
        if self.selector is not None:
            saliency = self.selector.scores(frames, mask, caption)
            kept = self.selector.select(frames, mask, caption)
        if self.category_head is not None:
            category = torch.log_softmax(self.category_head(frames, mask, caption), dim=-1)
        return [VideoDetail(frames[i].half(), mask[i], kept[i], None if saliency is None else saliency[i],
                            None if category is None else category[i].half(),
                            caption[i].half() if has_caption[i] else None) for i in range(len(frames))]

    def predicted_category(self, detail: VideoDetail) -> tuple[int, float] | None:
        """(lower-category index, probability) of the video's most likely category."""
        if detail.category is None:
            return None
        p = detail.category.float().exp()
        return int(p.argmax()), float(p.max())

    # -- querying --
    @torch.no_grad()
    def prepare(self, detail: VideoDetail | ProductDetail) -> Prepared:
        """One item's stored features and their mapped form (the head's part that does not depend on the query)."""
        head = self.rerank_head
        if head is None:
            return Prepared(detail, None)
        if isinstance(detail, VideoDetail):
            return Prepared(detail, head.prepare_videos(videos_fine([detail]))[0])
        return Prepared(detail, head.prepare_products(products_fine([detail]))[0])

    def rank_products(self, video: VideoDetail, products: list[ProductDetail | Prepared], product_levels,
                      first_stage) -> Ranked:
        """Reorder a video's product candidates (stored details, or `prepare`'s form of them). ``product_levels``
        [N, 3]: each product's (upper, middle, lower) index, -1 where its category is coarser or unknown;
        ``first_stage`` [N] their index scores."""
        score, frame = self._pair_scores([video], products, torch.as_tensor(first_stage)[None], product_levels)
        return Ranked(score[0].argsort(descending=True), score[0], None if frame is None else frame[0])

    def rank_videos(self, query: ProductDetail, videos: list[VideoDetail | Prepared], first_stage,
                    product_levels=None) -> Ranked:
        """Reorder a product's (or, without ``product_levels``, a text query's) video candidates."""
        score, frame = self._pair_scores(videos, [query], torch.as_tensor(first_stage)[:, None], product_levels)
        return Ranked(score[:, 0].argsort(descending=True), score[:, 0], None if frame is None else frame[:, 0])

    @torch.no_grad()
    def _pair_scores(self, videos: list, products: list, first_stage: Tensor,
                     product_levels) -> tuple[Tensor, Tensor | None]:
        """Final scores [Nv, Np] of every (video, product or text query) pair from their first-stage scores,
        and the frame that drove each (None when nothing says). Text queries have no photos: their own weights."""
        prepared_videos, prepared_products = videos, products
        videos = [v.detail if isinstance(v, Prepared) else v for v in videos]
        products = [p.detail if isinstance(p, Prepared) else p for p in products]
        text = products[0].photos is None if products else False
        score, frame = first_stage.float(), None
        w = self.weights["rerank_text" if text else "rerank"]
        if self.rerank_head is not None and w and videos and products:
            fine, weight = self.rerank_head(videos_fine(self._fine(prepared_videos), torch.float32),
                                            products_fine(self._fine(prepared_products), torch.float32), pairwise=True)
            score, frame = score + w * fine, weight.argmax(-1)
        w = self.weights["caption_text" if text else "caption"]
        if w and videos and products:
            sentence = products[0].sentence
            captions = torch.stack([v.caption if v.caption is not None else sentence.new_zeros(sentence.shape)
                                    for v in videos])  # no caption: 0
            score = score + w * caption_scores(captions, torch.stack([p.sentence for p in products]))
        if (product_levels is not None and self.weights["boost"] and self.category_head is not None
                and videos and all(v.category is not None for v in videos)):
            score = score + self._boost(torch.stack([v.category for v in videos]), torch.as_tensor(product_levels))
        if frame is None and videos and all(v.saliency is not None for v in videos):
            frame = torch.tensor([_most_salient(v) for v in videos])[:, None].expand(score.shape)
        if frame is None and videos and products and not text:
            frame = _closest_frames(videos, products)
        return score, frame

    def _fine(self, items: list) -> list:
        return [(item if isinstance(item, Prepared) else self.prepare(item)).fine for item in items]

    def _boost(self, video_log_probs: Tensor, product_levels: Tensor) -> Tensor:
        """[Nv, Np] w * log p(product's category at the tuned level | video); products whose category is
        coarser than that level use their deepest known level; unknown: 0."""
        levels = self.category_head.levels(video_log_probs.float())
        depth = LEVELS.index(self.weights["boost_level"]) + 1
        classes = product_levels[:, :depth].long()
        deepest = torch.where(classes >= 0, torch.arange(depth), -1).amax(1)  # [Np], -1: nothing known
        out = torch.zeros(len(video_log_probs), len(product_levels))
        for level in range(depth):
            at = (deepest == level).nonzero()[:, 0]
            if len(at):
                out[:, at] = levels[LEVELS[level]][:, classes[at, level]]
        return self.weights["boost"] * out

    # -- persistence --
    def save(self, path: str | Path) -> None:
        torch.save({"cfg": asdict(self.cfg), "dims": self.dims, "weights": self.weights,
                    "state": self.state_dict()}, path)

    @classmethod
    def load(cls, path: str | Path) -> "TwoStage":
        saved = torch.load(path, map_location="cpu", weights_only=True)
        c = saved["cfg"]
        parts = {"salient": SalientConfig, "rerank": RerankConfig, "category": CategoryConfig}
        cfg = TwoStageConfig(**{k: (parts[k](**v) if v is not None else None) if k in parts else v for k, v in c.items()})
        module = cls(*saved["dims"], cfg)
        module.load_state_dict(saved["state"])
        module.weights = saved["weights"]
        return module.eval()


def _closest_frames(videos: list[VideoDetail], products: list[ProductDetail]) -> Tensor:
    """[Nv, Np] for each pair, the frame most like one of the product's photos (cosine of the image tower's
    features): the moment that carries the match when neither a re-ranking head nor saliency says."""
    frames, frame_mask = pad_groups([v.frames for v in videos], masks=[v.frame_mask for v in videos],
                                    dtype=torch.float32)
    photos, photo_mask = pad_groups([p.photos for p in products], masks=[p.photo_mask for p in products],
                                    dtype=torch.float32)
    similarity = torch.einsum("itd,jqd->ijtq", nn.functional.normalize(frames, dim=-1),
                              nn.functional.normalize(photos, dim=-1))
    similarity = similarity.masked_fill(~photo_mask[None, :, None, :], float("-inf")).amax(-1)
    return similarity.masked_fill(~frame_mask[:, None, :], float("-inf")).argmax(-1)


def _most_salient(video: VideoDetail) -> int | None:
    """The frame that drives a match when there is no re-ranking head."""
    if video.saliency is None:
        return None
    return int(video.saliency.float().masked_fill(~video.frame_mask, float("-inf")).argmax())
