"""Retrieval around the vector index, as the product runs it (the "product default" row of docs/ablation.md).

- Indexing: salient frames (`ml.salient`) choose the frames a video's stored embedding pools;
  the category head (`ml.category`) predicts the video's category from frames + caption.
- Querying: the index returns the top N by pooled embeddings; the multi-grained head
  (`ml.rerank`) rescores them from frames, words and photos, the caption branch (`ml.caption_branch`)
  adds the match of the video's caption with the product's text (or the text query), and the
  predicted category boosts products of likely categories:

      score = index cosine + w_fine * fine + w_caption * cos(caption, text) + w_category * log p(category | video)

  The frame with the highest AOSM weight is the frame that drove the match (the most salient
  frame when there is no re-ranking head).

`fit_two_stage` trains the heads on the training split and tunes the weights on validation
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

from ml.caption_branch import caption_scores
from ml.category import LEVELS, CategoryConfig, CategoryHead, category_boost, fit_category_head
from ml.metrics import RECALL_AT, score_metrics
from ml.rerank import MultiGrainedHead, ProductFine, RerankConfig, VideoFine, fit_rerank_head, products_fine_of, \
    rerank_scores, score_top_candidates, videos_fine_of
from ml.salient import SalientConfig, SalientFrameSelector, filter_feature_set, fit_salient_selector


@dataclass(frozen=True)
class TwoStageConfig:
    salient: SalientConfig | None = SalientConfig()  # None: every sampled frame is pooled
    rerank: RerankConfig | None = RerankConfig()  # None: index order (plus the category boost)
    top_n: int = 50  # candidates the index returns for re-ranking
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


def _pad(rows: list[Tensor], masks: list[Tensor]) -> tuple[Tensor, Tensor]:
    length = max(len(r) for r in rows)
    out = rows[0].new_zeros(len(rows), length, rows[0].shape[-1])
    mask = torch.zeros(len(rows), length, dtype=torch.bool)
    for i, (r, m) in enumerate(zip(rows, masks)):
        out[i, : len(r)], mask[i, : len(m)] = r, m
    return out, mask


def videos_fine(details: list[VideoDetail]) -> VideoFine:
    return VideoFine(*_pad([d.frames for d in details], [d.frame_mask for d in details]))


def products_fine(details: list[ProductDetail]) -> ProductFine:
    words, word_mask = _pad([d.words for d in details], [d.word_mask for d in details])
    sentence = torch.stack([d.sentence for d in details])
    if any(d.photos is None for d in details):
        return ProductFine(words, word_mask, sentence)
    return ProductFine(words, word_mask, sentence, *_pad([d.photos for d in details], [d.photo_mask for d in details]))


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
    def rank_products(self, video: VideoDetail, products: list[ProductDetail], product_levels,
                      first_stage) -> Ranked:
        """Reorder a video's product candidates. ``product_levels`` [N, 3]: each product's (upper, middle,
        lower) index, -1 where its category is coarser or unknown; ``first_stage`` [N] their index scores."""
        score, frame = self._pair_scores([video], products, torch.as_tensor(first_stage)[None], product_levels)
        return Ranked(score[0].argsort(descending=True), score[0], None if frame is None else frame[0])

    def rank_videos(self, query: ProductDetail, videos: list[VideoDetail], first_stage,
                    product_levels=None) -> Ranked:
        """Reorder a product's (or, without ``product_levels``, a text query's) video candidates."""
        score, frame = self._pair_scores(videos, [query], torch.as_tensor(first_stage)[:, None], product_levels)
        return Ranked(score[:, 0].argsort(descending=True), score[:, 0], None if frame is None else frame[:, 0])

    @torch.no_grad()
    def _pair_scores(self, videos: list[VideoDetail], products: list[ProductDetail], first_stage: Tensor,
                     product_levels) -> tuple[Tensor, Tensor | None]:
        """Final scores [Nv, Np] of every (video, product or text query) pair from their first-stage scores,
        and the frame that drove each (None when nothing says). Text queries have no photos: their own weights."""
        text = products[0].photos is None if products else False
        score, frame = first_stage.float(), None
        w = self.weights["rerank_text" if text else "rerank"]
        if self.rerank_head is not None and w and videos and products:
            head = self.rerank_head
            fine, weight = head(head.prepare_videos(videos_fine(videos)), head.prepare_products(products_fine(products)),
                                pairwise=True)
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
        return score, frame

    def _boost(self, video_log_probs: Tensor, product_levels: Tensor) -> Tensor:
        """[Nv, Np] w * log p(product's category at the tuned level | video); products whose category is
        coarser than that level use their deepest known level; unknown: 0."""
        levels = self.category_head.levels(video_log_probs.float())
        out = torch.zeros(len(video_log_probs), len(product_levels))
        for p in range(len(product_levels)):
            known = [lv for lv in range(LEVELS.index(self.weights["boost_level"]) + 1) if product_levels[p, lv] >= 0]
            if known:
                out[:, p] = levels[LEVELS[known[-1]]][:, product_levels[p, known[-1]]]
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

    # -- training --
    def fit_selector(self, train) -> None:
        """Train the salient-frame scorer; before the instance towers, which pool only its frames."""
        if self.selector is not None:
            self.selector, _ = fit_salient_selector(train.video_frames, train.video_frame_mask,
                                                    train.product_text[train.video_product], self.cfg.salient)

    def salient_only(self, data):
        """A copy of a FeatureSet whose frame mask keeps the frames the stored embedding pools."""
        return data if self.selector is None else filter_feature_set(self.selector, data)


def _most_salient(video: VideoDetail) -> int | None:
    """The frame that drives a match when there is no re-ranking head."""
    if video.saliency is None:
        return None
    return int(video.saliency.float().masked_fill(~video.frame_mask, float("-inf")).argmax())


@dataclass
class SplitInputs:
    """One split for `fit_two_stage`: features with every frame, word tokens and category labels of
    its products, the instance embeddings (videos pooled over their kept frames), text-query vectors."""

    data: object  # ml.train_instance.FeatureSet
    words: Tensor  # [Np, L, D]
    word_mask: Tensor
    labels: Tensor  # [Np, 3] (upper, middle, lower) indices
    video_emb: Tensor
    product_emb: Tensor
    has_caption: Tensor  # [Nv] bool
    query_emb: Tensor | None = None  # [Np, D] each product's text through the text-query head

    def videos_fine(self) -> VideoFine:
        return videos_fine_of(self.data)

    def products_fine(self, photos: bool = True) -> ProductFine:
        return products_fine_of(self.data, self.words, self.word_mask, photos)


def fit_two_stage(two_stage: TwoStage, train: SplitInputs, val: SplitInputs) -> dict:
    """Train the re-ranking and category heads on ``train``; tune the weights on ``val``, each part given the
    parts before it: re-ranking, caption branch, category boost (as `ml.ablation`'s product-default row).
    Returns validation metrics before and after, and the weights."""
    cfg, report = two_stage.cfg, {}
    first = val.video_emb.float() @ val.product_emb.float().T
    v2p = p2v = first
    target = val.data.video_product
    report["first_stage"] = score_metrics(first, target)
    text = None  # text queries (each product's text) -> videos, when the split has query vectors
    if val.query_emb is not None:
        text = val.video_emb.float() @ val.query_emb.float().T
        report["text_first_stage"] = _t2v(text, target)
    if cfg.rerank is not None:
        head, _ = fit_rerank_head(train.videos_fine(), train.products_fine(cfg.rerank.photos), train.data.video_product,
                                  cfg.rerank)
        two_stage.rerank_head = head
        vf, pf = val.videos_fine(), val.products_fine(cfg.rerank.photos)
        tops = (score_top_candidates(first, head, vf, pf, cfg.top_n, "video"),
                score_top_candidates(first, head, vf, pf, cfg.top_n, "product"))
        w = _best(cfg.rerank.weight_grid, lambda w: _mean_recall(*(rerank_scores(first, t, w) for t in tops), target))
        two_stage.weights["rerank"] = w
        v2p, p2v = (rerank_scores(first, t, w) for t in tops)
        if text is not None:
            top = score_top_candidates(text, head, vf, val.products_fine(photos=False), cfg.top_n, "product")
            two_stage.weights["rerank_text"] = _best(cfg.rerank.weight_grid,
                                                     lambda w: _t2v(rerank_scores(text, top, w), target)["mean"])
            text = rerank_scores(text, top, two_stage.weights["rerank_text"])
    if len(cfg.caption_grid) > 1:
        d = val.data
        caption = caption_scores(d.video_caption, d.product_text, val.has_caption)  # [Nv, Np]
        w = _best(cfg.caption_grid, lambda w: _mean_recall(v2p + w * caption, p2v + w * caption, target))
        two_stage.weights["caption"] = w
        v2p, p2v = v2p + w * caption, p2v + w * caption
        if text is not None:  # the text queries are the products' texts: the same caption scores
            w = _best(cfg.caption_grid, lambda w: _t2v(text + w * caption, target)["mean"])
            two_stage.weights["caption_text"] = w
            text = text + w * caption
    if text is not None:
        report["text_two_stage"] = _t2v(text, target)
    if cfg.category is not None:
        t = train.data
        head, _ = fit_category_head(t.video_frames, t.video_frame_mask, t.video_caption,
                                    train.labels[t.video_product, 2], cfg.category)
        two_stage.category_head = head
        d = val.data
        with torch.no_grad():
            log_probs = head.level_log_probs(d.video_frames, d.video_frame_mask, d.video_caption)
        labels = val.labels[target]
        report["category_accuracy"] = {lv: 100.0 * float((log_probs[lv].argmax(1) == labels[:, i]).float().mean())
                                       for i, lv in enumerate(LEVELS)}

        def boosted(param):
            level, w = param
            return tuple(category_boost(s, log_probs[level], val.labels[:, LEVELS.index(level)], w) for s in (v2p, p2v))

        level, w = _best([(lv, w) for lv in cfg.boost_levels for w in cfg.boost_grid],
                         lambda param: _mean_recall(*boosted(param), target))
        two_stage.weights |= {"boost_level": level, "boost": w}
        v2p, p2v = boosted((level, w))
    report["two_stage"] = {k: v for k, v in score_metrics(v2p, target).items() if k.startswith("v2p")} | \
                          {k: v for k, v in score_metrics(p2v, target).items() if k.startswith("p2v")}
    report["weights"] = dict(two_stage.weights)
    two_stage.eval()
    return report


def _best(grid, evaluate):
    return max(grid, key=evaluate)  # first of equals: the grids start with "off"


def _mean_recall(v2p: Tensor, p2v: Tensor, video_product: Tensor) -> float:
    a, b = score_metrics(v2p, video_product), score_metrics(p2v, video_product)
    return float(np.mean([a[f"v2p_R@{k}"] for k in RECALL_AT] + [b[f"p2v_R@{k}"] for k in RECALL_AT]))


def _t2v(scores: Tensor, video_product: Tensor) -> dict[str, float]:
    """Text queries (one per product, columns) -> videos."""
    m = {k[4:]: v for k, v in score_metrics(scores, video_product).items() if k.startswith("p2v")}
    return m | {"mean": float(np.mean([m[f"R@{k}"] for k in RECALL_AT]))}
