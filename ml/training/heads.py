"""Fitting of the small heads a bundle ships next to the towers (category head, re-ranking head,
salient-frame scorer, text query head): one fit loop, each head giving only its loss of a batch."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ml.evaluation.metrics import similarity
from ml.serving.category import CategoryConfig, CategoryHead
from ml.serving.ontology import load_ontology
from ml.serving.rerank import MultiGrainedHead, ProductFine, RerankConfig, VideoFine
from ml.serving.salient import SalientConfig, SalientFrameSelector
from ml.serving.text_query import TextQueryHead
from ml.serving.towers import embed_products, embed_videos


def fit_head(head: nn.Module, loss_of: Callable[[Tensor], Tensor], optimizer: torch.optim.Optimizer, *,
             num: int, batch_size: int, generator: torch.Generator, epochs: int = 0, steps: int = 0,
             min_batch: int = 1) -> tuple[nn.Module, float]:
    """Train ``head`` on ``loss_of(indices)``: ``epochs`` shuffled passes over ``num`` items, or ``steps``
    batches drawn with replacement. Batches under ``min_batch`` items are skipped. Returns (head in
    eval mode, seconds)."""
    def batches():
        for _ in range(steps):
            yield torch.randint(num, (min(batch_size, num),), generator=generator)
        for _ in range(epochs):
            yield from torch.randperm(num, generator=generator).split(batch_size)

    started = time.perf_counter()
    head.train()
    for idx in batches():
        if len(idx) < min_batch:
            continue
        loss = loss_of(idx)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return head.eval(), time.perf_counter() - started


def fit_category_head(frames: Tensor, mask: Tensor, caption: Tensor, lower: Tensor,
                      cfg: CategoryConfig = CategoryConfig()) -> tuple[CategoryHead, float]:
    """Cross-entropy on the lower category of each training video's product; returns (head, seconds)."""
    torch.manual_seed(cfg.seed)
    head = CategoryHead(frames.shape[-1], caption.shape[-1], cfg)
    optimizer = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return fit_head(head, lambda idx: F.cross_entropy(head(frames[idx], mask[idx], caption[idx]), lower[idx]),
                    optimizer, num=len(frames), batch_size=cfg.batch_size, epochs=cfg.epochs,
                    generator=torch.Generator().manual_seed(cfg.seed))


def fit_rerank_head(videos: VideoFine, products: ProductFine, video_product: Tensor,
                    cfg: RerankConfig = RerankConfig()) -> tuple[MultiGrainedHead, float]:
    """In-batch InfoNCE both ways on the training split (pairs sharing a product are masked);
    returns (head in eval mode, seconds)."""
    torch.manual_seed(cfg.seed)
    head = MultiGrainedHead(videos.frames.shape[-1], cfg)

    def loss_of(idx: Tensor) -> Tensor:
        pid = video_product[idx]
        pair = head.prepare_videos(videos[idx]), head.prepare_products(products[pid])
        logits = head(*pair, pairwise=True).score * head.logit_scale.exp()
        logits = logits.masked_fill((pid[:, None] == pid[None]) & ~torch.eye(len(idx), dtype=torch.bool),
                                    float("-inf"))
        target = torch.arange(len(idx))
        return F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)

    return fit_head(head, loss_of, torch.optim.Adam(head.parameters(), lr=cfg.lr), num=len(videos),
                    batch_size=cfg.batch_size, epochs=cfg.epochs, min_batch=2,
                    generator=torch.Generator().manual_seed(cfg.seed))


def fit_salient_selector(frames: Tensor, mask: Tensor, text: Tensor, cfg: SalientConfig = SalientConfig()
                         ) -> tuple[SalientFrameSelector, float]:
    """Distil the language-guided frame target into the scorer: frames [N, T, D], mask [N, T], paired
    product text [N, D]. Returns (selector in eval mode, seconds)."""
    torch.manual_seed(cfg.seed)
    selector = SalientFrameSelector(frames.shape[-1], cfg)
    return fit_head(selector, lambda idx: selector.distillation_loss(frames[idx], mask[idx], text[idx]),
                    torch.optim.Adam(selector.parameters(), lr=cfg.lr), num=len(frames),
                    batch_size=cfg.batch_size, steps=cfg.steps, generator=torch.Generator().manual_seed(cfg.seed))


@dataclass(frozen=True)
class TextQueryConfig:
    hidden_dim: int = 512
    temperature: float = 0.05
    epochs: int = 40
    batch_size: int = 256
    lr: float = 1e-3
    seed: int = 0


def fit_text_query_head(query_text: Tensor, query_product: Tensor, video_emb, video_product: Tensor, product_emb,
                        cfg: TextQueryConfig = TextQueryConfig()) -> tuple[TextQueryHead, float]:
    """Queries ``query_text`` [Nq, Dt] about products ``query_product`` [Nq]; targets: the frozen unit
    embeddings of the training videos (``video_product`` their products) and of the products.
    Each step contrasts a batch of queries with one random video of each query's product and with
    the products themselves (videos given as prototypes [N, K, D] match by their best one). Returns
    (head in eval mode, seconds)."""
    videos = F.normalize(torch.as_tensor(np.asarray(video_emb)).float(), dim=-1)
    products = F.normalize(torch.as_tensor(np.asarray(product_emb)).float(), dim=-1)
    torch.manual_seed(cfg.seed)
    head = TextQueryHead(query_text.shape[-1], products.shape[-1], cfg.hidden_dim)
    optimizer = torch.optim.Adam(head.parameters(), lr=cfg.lr)
    generator = torch.Generator().manual_seed(cfg.seed)
    videos_of = [torch.nonzero(video_product == p).squeeze(1) for p in range(len(products))]
    has_video = torch.tensor([len(v) > 0 for v in videos_of])
    keep = has_video[query_product]
    query_text, query_product = query_text[keep], query_product[keep]

    def loss_of(idx: Tensor) -> Tensor:
        pid = query_product[idx]
        vid = torch.stack([videos_of[p][torch.randint(len(videos_of[p]), (1,), generator=generator)][0]
                           for p in pid.tolist()])
        q = head(query_text[idx])
        same = (pid[:, None] == pid[None]) & ~torch.eye(len(idx), dtype=torch.bool)
        target = torch.arange(len(idx))
        loss = 0
        for sims in (similarity(videos[vid], q).T, q @ products[pid].T):  # [queries, targets]
            loss = loss + F.cross_entropy((sims / cfg.temperature).masked_fill(same, float("-inf")), target)
        return loss

    return fit_head(head, loss_of, optimizer, num=len(query_text), batch_size=cfg.batch_size, epochs=cfg.epochs,
                    generator=generator)


def short_query(product) -> str:
    """What a user might type for a generated product (ml.datagen): colour, pattern (unless plain), category name."""
    a = product.attributes
    words = [a["colour"], "" if a["pattern"] == "solid" else a["pattern"], load_ontology().get(product.category_path).name]
    return " ".join(w for w in words if w)


def fit_split_query_head(encoder, model: nn.Module, manifest, data, cfg: TextQueryConfig = TextQueryConfig()):
    """The query head of a model bundle, trained on one split of a generated dataset (``data``, a
    ``FeatureSet`` of ``manifest``): each product's own text and a short query about it."""
    shorts = encoder.encode_texts([short_query(manifest.product(sku)) for sku in data.product_ids])
    videos = embed_videos(model, data.video_frames, data.video_caption, data.video_frame_mask)
    products = embed_products(model, data.product_images, data.product_text, data.product_image_mask)
    return fit_text_query_head(torch.cat([data.product_text, shorts]), torch.arange(data.num_products).repeat(2),
                               videos, data.video_product, products, cfg)
