"""Loss terms shared by the MQMC model and the in-batch InfoNCE baseline, and that baseline.

Total loss (MQMC paper):
    alpha * (InfoNCE video->product + InfoNCE product->video)
  + beta  * (consistency(video visual, product visual) + consistency(video text, product text))
  + gamma * (consistency(video visual, video text) + consistency(product visual, product text))

Only the contrastive term differs between methods (queues of momentum keys for MoCo/MQMC,
the other pairs of the batch here), so the comparison isolates it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ml.serving.towers import InstanceConfig, TowerOutput, create_towers
from ml.training.data import PairBatch


@dataclass(frozen=True)
class LossConfig:
    alpha: float = 0.8  # bidirectional InfoNCE
    beta: float = 0.1  # cross-modal consistency; 0 switches the term off
    gamma: float = 0.1  # intra-instance consistency; 0 switches the term off
    temperature: float = 0.07  # InfoNCE
    consistency_temperature: float = 100.0  # the paper's "margin"
    diversity: float = 0.1  # prototype diversity term (only with InstanceConfig.video_prototypes > 1)


class ContrastiveOutput(NamedTuple):
    loss: Tensor
    terms: dict[str, Tensor]  # detached parts, for logging: v2p, p2v, cross, intra


def consistency_loss(a: Tensor, b: Tensor, temperature: float) -> Tensor:
    """Softmax contrast over the batch cosine-similarity matrix, both directions summed.

    Row i of ``a`` should match row i of ``b``. The reference code divides a (row-normalised)
    similarity matrix by margin = 100, which makes this a weak regulariser next to InfoNCE;
    we keep that temperature as the default but use plain cosine similarities.
    """
    logits = F.normalize(a, dim=1) @ F.normalize(b, dim=1).T / temperature
    target = torch.arange(logits.shape[0], device=logits.device)
    return F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)


def info_nce_with_queue(
    query: Tensor, positive_key: Tensor, queue: Tensor, negative_bias: Tensor, temperature: float
) -> Tensor:
    """MoCo InfoNCE: each query against its positive key and every queued key.

    query, positive_key [B, D] and queue [N, D] are L2-normalised. ``negative_bias`` [B, N] is
    added to the scaled negative logits: log of a negative's weight (0 keeps it as is, -inf
    drops it), so a weight w multiplies that negative's exp(sim / T) in the softmax denominator.
    """
    query = query / temperature  # scale the [B, D] side, not the [B, N] logits
    positive = (query * positive_key).sum(dim=1)
    return info_nce_from_logits(positive, torch.addmm(negative_bias, query, queue.T))


def info_nce_from_logits(positive: Tensor, negatives: Tensor) -> Tensor:
    """Cross-entropy of each query's positive logit [B] against its negative logits [B, N] (already scaled)."""
    logits = torch.cat((positive.unsqueeze(1), negatives), dim=1)
    return F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device))


def combine_losses(
    v2p: Tensor, p2v: Tensor, video: TowerOutput, product: TowerOutput, cfg: LossConfig
) -> ContrastiveOutput:
    """alpha * (v2p + p2v) + beta * cross-modal + gamma * intra-instance consistency."""
    loss = cfg.alpha * (v2p + p2v)
    terms = {"v2p": v2p.detach(), "p2v": p2v.detach()}
    tau = cfg.consistency_temperature
    if cfg.beta:
        cross = consistency_loss(video.visual, product.visual, tau) + consistency_loss(video.text, product.text, tau)
        loss = loss + cfg.beta * cross
        terms["cross"] = cross.detach()
    if cfg.gamma:
        intra = consistency_loss(video.visual, video.text, tau) + consistency_loss(product.visual, product.text, tau)
        loss = loss + cfg.gamma * intra
        terms["intra"] = intra.detach()
    return ContrastiveOutput(loss, terms)


def same_product_mask(product_index: Tensor) -> Tensor:
    """[B, B] True where two different pairs of the batch share a product (false negatives)."""
    same = product_index[:, None] == product_index[None, :]
    return same & ~torch.eye(len(product_index), dtype=torch.bool, device=product_index.device)


class InBatchContrast(nn.Module):
    """CLIP-style baseline: the same towers, negatives are the other pairs of the batch.

    Pairs that share a product with the query pair are masked out of its negatives.
    """

    def __init__(self, instance: InstanceConfig, loss: LossConfig):
        super().__init__()
        self.loss_cfg = loss
        self.video_tower, self.product_tower = create_towers(instance)

    def forward(self, batch: PairBatch) -> ContrastiveOutput:
        video = self.video_tower(batch.video_frames, batch.video_frame_mask, batch.video_caption)
        product = self.product_tower(batch.product_images, batch.product_image_mask, batch.product_text)
        logits = F.normalize(video.embedding, dim=1) @ F.normalize(product.embedding, dim=1).T
        logits = (logits / self.loss_cfg.temperature).masked_fill(same_product_mask(batch.product_index), float("-inf"))
        target = torch.arange(len(batch), device=logits.device)
        return combine_losses(
            F.cross_entropy(logits, target), F.cross_entropy(logits.T, target), video, product, self.loss_cfg
        )
