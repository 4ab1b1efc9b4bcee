"""Fitting of the second stage (`ml.serving.two_stage`) and the one tuner of its weights, shared by the
model build (`fit_two_stage`) and the ablation (`ml.evaluation.ablation`): every weight is chosen on
the validation split over a grid that starts with "off", each part given the parts before it."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ml.evaluation.metrics import RECALL_AT, score_metrics, score_ranks, selection_score, summarise_ranks
from ml.serving.caption_branch import caption_scores
from ml.serving.category import LEVELS, category_boost
from ml.serving.rerank import ProductFine, VideoFine, products_fine_of, rerank_scores, score_top_candidates, \
    videos_fine_of
from ml.serving.salient import filter_feature_set
from ml.serving.two_stage import TwoStage
from ml.training.data import FeatureSet
from ml.training.heads import fit_category_head, fit_rerank_head, fit_salient_selector


def best_on_grid(grid: Sequence, evaluate: Callable[[object], float]) -> tuple[object, float]:
    """The grid value with the highest validation score, and that score; the first of equals wins
    (the grids start with "off", so a part that does not help stays off)."""
    best, score = None, float("-inf")
    for value in grid:
        s = evaluate(value)
        if s > score:
            best, score = value, s
    return best, score


def direction_metrics(v2p_scores: Tensor, p2v_scores: Tensor, video_product) -> dict:
    """v2p_* from the first matrix, p2v_* from the second (they differ after re-ranking)."""
    v2p = score_metrics(v2p_scores, video_product)
    p2v = score_metrics(p2v_scores, video_product)
    return {k: v for k, v in v2p.items() if k.startswith("v2p")} | {k: v for k, v in p2v.items() if k.startswith("p2v")}


def mean_recall(v2p_scores: Tensor, p2v_scores: Tensor, video_product) -> float:
    """What the video-side weights are tuned on: mean R@K over both directions."""
    return selection_score(direction_metrics(v2p_scores, p2v_scores, video_product))


def t2v_metrics(scores: Tensor, video_product) -> dict:
    """Text queries (one per product) -> videos: the p2v ranks of a [videos, queries] score matrix."""
    return summarise_ranks(score_ranks(scores, video_product)[1], RECALL_AT)


def t2v_score(scores: Tensor, video_product) -> float:
    """Mean R@K of text queries: what the text-side weights are tuned on."""
    metrics = t2v_metrics(scores, video_product)
    return float(np.mean([metrics[f"R@{k}"] for k in RECALL_AT]))


def t2v_report(scores: Tensor, video_product) -> dict:
    return t2v_metrics(scores, video_product) | {"mean": t2v_score(scores, video_product)}


def fit_selector(two_stage: TwoStage, train: FeatureSet) -> None:
    """Train the salient-frame scorer; before the instance towers, which pool only its frames."""
    if two_stage.selector is not None:
        two_stage.selector, _ = fit_salient_selector(train.video_frames, train.video_frame_mask,
                                                     train.product_text[train.video_product], two_stage.cfg.salient)


def salient_only(two_stage: TwoStage, data: FeatureSet) -> FeatureSet:
    """A copy of a FeatureSet whose frame mask keeps the frames the stored embedding pools."""
    return data if two_stage.selector is None else filter_feature_set(two_stage.selector, data)


@dataclass
class SplitInputs:
    """One split for `fit_two_stage`: features with every frame, word tokens and category labels of
    its products, the instance embeddings (videos pooled over their kept frames), text-query vectors."""

    data: FeatureSet
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
    parts before it: re-ranking, caption branch, category boost (as `ml.evaluation.ablation`'s product-default row).
    Returns validation metrics before and after, and the weights."""
    cfg, report = two_stage.cfg, {}
    first = val.video_emb.float() @ val.product_emb.float().T
    v2p = p2v = first
    target = val.data.video_product
    report["first_stage"] = score_metrics(first, target)
    text = None  # text queries (each product's text) -> videos, when the split has query vectors
    if val.query_emb is not None:
        text = val.video_emb.float() @ val.query_emb.float().T
        report["text_first_stage"] = t2v_report(text, target)
    if cfg.rerank is not None:
        head, _ = fit_rerank_head(train.videos_fine(), train.products_fine(cfg.rerank.photos), train.data.video_product,
                                  cfg.rerank)
        two_stage.rerank_head = head
        vf, pf = val.videos_fine(), val.products_fine(cfg.rerank.photos)
        tops = (score_top_candidates(first, head, vf, pf, cfg.top_n, "video"),
                score_top_candidates(first, head, vf, pf, cfg.top_n, "product"))
        w, _ = best_on_grid(cfg.rerank.weight_grid,
                            lambda w: mean_recall(*(rerank_scores(first, t, w) for t in tops), target))
        two_stage.weights["rerank"] = w
        v2p, p2v = (rerank_scores(first, t, w) for t in tops)
        if text is not None:
            top = score_top_candidates(text, head, vf, val.products_fine(photos=False), cfg.top_n, "product")
            two_stage.weights["rerank_text"], _ = best_on_grid(cfg.rerank.weight_grid,
                                                        lambda w: t2v_score(rerank_scores(text, top, w), target))
            text = rerank_scores(text, top, two_stage.weights["rerank_text"])
    if len(cfg.caption_grid) > 1:
        d = val.data
        caption = caption_scores(d.video_caption, d.product_text, val.has_caption)  # [Nv, Np]
        w, _ = best_on_grid(cfg.caption_grid, lambda w: mean_recall(v2p + w * caption, p2v + w * caption, target))
        two_stage.weights["caption"] = w
        v2p, p2v = v2p + w * caption, p2v + w * caption
        if text is not None:  # the text queries are the products' texts: the same caption scores
            w, _ = best_on_grid(cfg.caption_grid, lambda w: t2v_score(text + w * caption, target))
            two_stage.weights["caption_text"] = w
            text = text + w * caption
    if text is not None:
        report["text_two_stage"] = t2v_report(text, target)
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

        (level, w), _ = best_on_grid([(lv, w) for lv in cfg.boost_levels for w in cfg.boost_grid],
                                     lambda param: mean_recall(*boosted(param), target))
        two_stage.weights |= {"boost_level": level, "boost": w}
        v2p, p2v = boosted((level, w))
    report["two_stage"] = direction_metrics(v2p, p2v, target)
    report["weights"] = dict(two_stage.weights)
    two_stage.eval()
    return report
