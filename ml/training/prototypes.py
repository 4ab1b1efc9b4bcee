"""Multiple visual prototypes per video (text-adaptive multi-prototype matching), on MQMC.

A micro-video shows a product among unrelated shots, sometimes several views of it: one pooled
vector blurs them. Here K learned queries attend over the frames, each yielding a prototype (a
weighted mean of frames); every prototype goes through the video tower (visual MLP, fusion with
the caption, projection), so a video is K vectors in the contrastive space. A product matches
the video's most similar prototype (``ml.evaluation.metrics.similarity`` takes the max), in training and in
the index (store K rows per video; group hits by video). A diversity term, the mean positive
cosine between a video's prototypes, keeps them from collapsing into one.

`PrototypeMoCo` is MQMC with that video side: the video key queue holds the K keys of a video
flattened into one slot, so queues, weights and checkpoints work unchanged. The prototype tower
itself (`PrototypeVideoTower`) is in ml.serving.towers: serving runs it.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor

from ml.serving.towers import InstanceConfig, PrototypeVideoTower
from ml.training.data import PairBatch
from ml.training.losses import ContrastiveOutput, LossConfig, combine_losses, info_nce_from_logits
from ml.training.mqmc import CategoryKeyQueue, MQMCConfig, MultiQueueMoCo


def diversity_loss(prototypes: Tensor) -> Tensor:
    """Mean positive cosine between different prototypes of the same video ([B, K, D] unit vectors)."""
    k = prototypes.shape[1]
    cos = prototypes @ prototypes.transpose(1, 2)
    off = ~torch.eye(k, dtype=torch.bool, device=cos.device)
    return cos[:, off].clamp(min=0).mean()


class PrototypeMoCo(MultiQueueMoCo):
    """MQMC with a multi-prototype video side (module doc). Losses as MQMC, plus ``diversity`` x the diversity term."""

    def __init__(self, instance: InstanceConfig, loss: LossConfig, mqmc: MQMCConfig):
        super().__init__(instance, loss, mqmc)
        self.num_prototypes = instance.video_prototypes
        self.video_tower = PrototypeVideoTower(instance)
        self.video_key_head = copy.deepcopy(self.video_tower.head).requires_grad_(False)
        self.video_queue = CategoryKeyQueue(mqmc, self.num_prototypes * instance.proj_dim,
                                            self.video_queue.middle_to_upper)

    def forward(self, batch: PairBatch) -> ContrastiveOutput:
        video = self.video_tower(batch.video_frames, batch.video_frame_mask, batch.video_caption)
        product = self.product_tower(batch.product_images, batch.product_image_mask, batch.product_text)
        b, k = video.embedding.shape[:2]
        with torch.no_grad():
            if self.training:
                self._momentum_update()
            video_key = F.normalize(self.video_key_head(video.fused.detach().flatten(0, 1)), dim=-1).view(b, k, -1)
            product_key = F.normalize(self.product_key_head(product.fused.detach()) + product.shortcut, dim=1)
            v2p_bias = self.product_queue.negative_bias(batch.middle, batch.product_index)
            p2v_bias = self.video_queue.negative_bias(batch.middle, batch.product_index)
        t = self.loss_cfg.temperature
        video_q = F.normalize(video.embedding, dim=-1)  # [B, K, P]
        product_q = F.normalize(product.embedding, dim=-1)  # [B, P]
        video_queue = self.video_queue.flat_keys().view(-1, k, video_q.shape[-1])
        v2p = info_nce_from_logits(
            (video_q * product_key[:, None]).sum(-1).amax(1) / t,
            torch.einsum("bkp,np->bkn", video_q, self.product_queue.flat_keys()).amax(1) / t + v2p_bias)
        p2v = info_nce_from_logits(
            torch.einsum("bp,bkp->bk", product_q, video_key).amax(1) / t,
            torch.einsum("bp,nkp->bnk", product_q, video_queue).amax(2) / t + p2v_bias)
        if self.training:
            self.video_queue.enqueue(video_key.flatten(1), batch.middle, batch.product_index)
            self.product_queue.enqueue(product_key, batch.middle, batch.product_index)
        out = combine_losses(v2p, p2v, video, product, self.loss_cfg)
        diversity = diversity_loss(video_q)
        return ContrastiveOutput(out.loss + self.loss_cfg.diversity * diversity,
                                 out.terms | {"diversity": diversity.detach()})
