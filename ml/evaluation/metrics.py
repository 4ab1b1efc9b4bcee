"""Bidirectional retrieval metrics over the whole gallery: R@K, median rank, mean rank.

Embeddings are L2-normalised here (cosine similarity; the reference evaluated raw dot products).
Ground truth: ``video_product[i]`` is the product of video i; several videos may share a product.

- video -> product: rank of the video's product among all products.
- product -> video: rank of the *best-ranked* of the product's videos among all videos (the other
  videos of the same product are not counted as competitors). Products without any video in the
  split are not queries.

Rank = 1 + number of non-matching items scoring >= the match, so ties count against the model
(a collapsed embedding scores worst, not best). Recalls are percentages; MdR is ``np.median``.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

RECALL_AT = (1, 5, 10)


def _as_tensor(x) -> Tensor:
    return x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))


def similarity(videos: Tensor, products: Tensor) -> Tensor:
    """[Nv, Np] dot products of (normalised) embeddings; a video given as K vectors ``[Nv, K, D]``
    (visual prototypes, ml.training.prototypes) scores the best of them against each product."""
    if videos.ndim == 3:
        return torch.einsum("vkd,pd->vkp", videos, products).amax(1)
    return videos @ products.T


@torch.no_grad()
def retrieval_ranks(video_emb, product_emb, video_product, chunk_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """(video->product ranks [Nv], product->video ranks [products with a video]), 1-based.

    Embeddings are L2-normalised along their last axis; ``video_emb`` may be ``[Nv, K, D]`` (see
    `similarity`). One similarity matmul per chunk of ``chunk_size`` queries bounds memory on large galleries.
    """
    videos = F.normalize(_as_tensor(video_emb).float(), dim=-1)
    products = F.normalize(_as_tensor(product_emb).float(), dim=-1)
    return _ranks(lambda rows: similarity(videos[rows], products), lambda ids: similarity(videos, products[ids]).T,
                  len(videos), products.shape[0], video_product, chunk_size)


@torch.no_grad()
def score_ranks(scores, video_product, chunk_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """`retrieval_ranks` from a ready score matrix ``[Nv, Np]`` (fused, boosted or re-ranked scores)."""
    scores = _as_tensor(scores).float()
    return _ranks(lambda rows: scores[rows], lambda ids: scores[:, ids].T, scores.shape[0], scores.shape[1],
                  video_product, chunk_size)


def _ranks(v2p_scores, p2v_scores, num_videos: int, num_products: int, video_product,
           chunk_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Ranks from score callbacks: ``v2p_scores(slice) -> [n, Np]``, ``p2v_scores(product ids) -> [n, Nv]``."""
    target = _as_tensor(video_product).long()
    v2p = []
    for start in range(0, num_videos, chunk_size):
        rows = slice(start, start + chunk_size)
        sims = v2p_scores(rows)  # [n, Np]
        target = target.to(sims.device)
        positive = sims.gather(1, target[rows, None])
        v2p.append((sims >= positive).sum(1))  # counts the match itself: 1 + competitors

    has_video = torch.zeros(num_products, dtype=torch.bool, device=target.device)
    has_video[target] = True
    queries = has_video.nonzero().squeeze(1)
    p2v = []
    for start in range(0, len(queries), chunk_size):
        ids = queries[start : start + chunk_size]
        sims = p2v_scores(ids)  # [n, Nv]
        positive = target[None, :] == ids[:, None]
        best = sims.masked_fill(~positive, float("-inf")).amax(1, keepdim=True)
        p2v.append(((sims >= best) & ~positive).sum(1) + 1)

    def cat(ranks: list[Tensor]) -> np.ndarray:
        return torch.cat(ranks).cpu().numpy() if ranks else np.zeros(0, dtype=np.int64)

    return cat(v2p), cat(p2v)


def summarise_ranks(ranks: np.ndarray, ks: tuple[int, ...] = RECALL_AT) -> dict[str, float]:
    out = {f"R@{k}": float(100.0 * np.mean(ranks <= k)) for k in ks}
    out["MdR"] = float(np.median(ranks))
    out["MnR"] = float(np.mean(ranks))
    return out


def retrieval_metrics(video_emb, product_emb, video_product, ks: tuple[int, ...] = RECALL_AT) -> dict[str, float]:
    """Flat dict: ``v2p_R@1 ... v2p_MnR, p2v_R@1 ... p2v_MnR`` and ``score`` (see `selection_score`)."""
    return _metrics(*retrieval_ranks(video_emb, product_emb, video_product), ks)


def _metrics(v2p: np.ndarray, p2v: np.ndarray, ks: tuple[int, ...]) -> dict[str, float]:
    out = {f"v2p_{name}": value for name, value in summarise_ranks(v2p, ks).items()}
    out |= {f"p2v_{name}": value for name, value in summarise_ranks(p2v, ks).items()}
    out["score"] = selection_score(out, ks)
    return out


def score_metrics(scores, video_product, ks: tuple[int, ...] = RECALL_AT) -> dict[str, float]:
    """`retrieval_metrics` for a ready score matrix ``[Nv, Np]`` (higher = more similar)."""
    return _metrics(*score_ranks(scores, video_product), ks)


def selection_score(metrics: dict[str, float], ks: tuple[int, ...] = RECALL_AT) -> float:
    """Model selection: mean of R@K over both directions (the reference selected on one direction)."""
    return float(np.mean([metrics[f"{d}_R@{k}"] for d in ("v2p", "p2v") for k in ks]))


def chance_metrics(num_products: int, num_videos: int, ks: tuple[int, ...] = RECALL_AT) -> dict[str, float]:
    """Expected metrics of a random ranking, one video per product (the benchmark's case), same keys as above."""
    out = {}
    for direction, gallery in (("v2p", num_products), ("p2v", num_videos)):
        out |= {f"{direction}_R@{k}": 100.0 * min(1.0, k / gallery) for k in ks}
        out[f"{direction}_MdR"] = out[f"{direction}_MnR"] = (gallery + 1) / 2
    out["score"] = selection_score(out, ks)
    return out


def retrieval_metrics_by_group(video_emb, product_emb, video_product, product_group,
                               ks: tuple[int, ...] = RECALL_AT) -> dict[int, dict[str, float]]:
    """`retrieval_metrics` per group of products (e.g. upper category), ranked against the *whole* gallery.

    A video query belongs to the group of its product; a product query to its own group.
    """
    v2p, p2v = retrieval_ranks(video_emb, product_emb, video_product)
    groups = np.asarray(_as_tensor(product_group).cpu())
    target = np.asarray(_as_tensor(video_product).cpu())
    v2p_group, p2v_group = groups[target], groups[np.unique(target)]  # p2v queries: products with a video, sorted
    out = {}
    for g in np.unique(v2p_group):  # groups with at least one query (in both directions then)
        out[int(g)] = {f"v2p_{k}": v for k, v in summarise_ranks(v2p[v2p_group == g], ks).items()}
        out[int(g)] |= {f"p2v_{k}": v for k, v in summarise_ranks(p2v[p2v_group == g], ks).items()}
    return out
