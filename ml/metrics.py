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


@torch.no_grad()
def retrieval_ranks(video_emb, product_emb, video_product, chunk_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """(video->product ranks [Nv], product->video ranks [products with a video]), 1-based.

    One similarity matmul per chunk of ``chunk_size`` queries bounds memory on large galleries.
    """
    videos = F.normalize(_as_tensor(video_emb).float(), dim=1)
    products = F.normalize(_as_tensor(product_emb).float(), dim=1)
    target = _as_tensor(video_product).long().to(videos.device)
    num_products = products.shape[0]

    v2p = []
    for start in range(0, len(videos), chunk_size):
        sims = videos[start : start + chunk_size] @ products.T  # [n, Np]
        gt = target[start : start + chunk_size]
        positive = sims.gather(1, gt[:, None])
        v2p.append((sims >= positive).sum(1))  # counts the match itself: 1 + competitors

    has_video = torch.zeros(num_products, dtype=torch.bool, device=videos.device)
    has_video[target] = True
    queries = has_video.nonzero().squeeze(1)
    p2v = []
    for start in range(0, len(queries), chunk_size):
        ids = queries[start : start + chunk_size]
        sims = products[ids] @ videos.T  # [n, Nv]
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
    v2p, p2v = retrieval_ranks(video_emb, product_emb, video_product)
    out = {f"v2p_{name}": value for name, value in summarise_ranks(v2p, ks).items()}
    out |= {f"p2v_{name}": value for name, value in summarise_ranks(p2v, ks).items()}
    out["score"] = selection_score(out, ks)
    return out


def selection_score(metrics: dict[str, float], ks: tuple[int, ...] = RECALL_AT) -> float:
    """Model selection: mean of R@K over both directions (the reference selected on one direction)."""
    return float(np.mean([metrics[f"{d}_R@{k}"] for d in ("v2p", "p2v") for k in ks]))
