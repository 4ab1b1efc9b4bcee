"""Multi-Queue Momentum Contrast (MQMC, Du et al., WSDM 2023), vectorised.

Per side a query tower (`ml.serving.towers.InstanceTower`) and a momentum copy of its projection head
(the key head). Video queries are contrasted with their pair's product key and with queued
product keys; product queries with their pair's video key and queued video keys.

Queues (`CategoryKeyQueue`, one per side): one FIFO of K keys per middle category
(``num_middle x K x dim``), or a single FIFO of K keys (``multi_queue=False``: plain MoCo). Every
slot also records the middle category and the product index of the pair its key came from.
Everything (keys, pointers, slot labels, category centroids) is a registered buffer, so a
``state_dict`` saves and resumes the queues exactly.

Ontology-aware negative weights (the idea of the reference ``cacu_weight``). From the queued keys
of one side: centroid c_m of each middle category m, and c_u of each upper category u (both
L2-normalised means; a category with no queued key has a zero centroid). With Euclidean
distances D_mid[a, b] = |c_a - c_b| and D_up[u, v] = |c_u - c_v| (in [0, 2]), a queued key of
middle category b, upper U(b), gets, for a query of middle category a, upper U(a), the weight

    w(a, b) = 1                                                       if b == a
            = 1 - lambda_mid * exp(D_mid[a, b] - 2)                     if U(b) == U(a), b != a
            = 1 - lambda_mid * exp(D_mid[a, b] - 2)
                - lambda_up  * exp(D_up[U(a), U(b)] - 2)                otherwise

with lambda_mid = ``middle_penalty``, lambda_up = ``upper_penalty`` (0.25 each; their sum < 1
keeps weights in (0, 1]). Same-category negatives are the hard ones and keep full weight; the
farther a negative's category from the query's, the more it is down-weighted; an upper-category
mismatch costs an extra term. The weight multiplies the negative's exp(sim / T) in the softmax
denominator (a log-weight added to its logit). Two deliberate departures from the reference:
it multiplied the cosine itself (which *raises* negatives with negative similarity) and
L2-normalised the exp-distance terms over the whole queue (so weights depended on queue size
and all sat at about 1 - 1/sqrt(30 K)).

Also masked out of a query's negatives: empty slots (no random keys as in MoCo's start-up), and
(``mask_same_product``) queued keys from pairs with the query's product; with a queue of 30 x
2048 keys and a dataset of 13k pairs the queue otherwise holds the query's own positive from
earlier epochs as a "negative".

No Python loop over samples or categories: enqueue is one scatter (several keys of one category
in a batch, and more than K of them, handled), centroids one ``index_add_``, weights a
``[M, M]`` matrix gathered per (query, slot).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ml.serving.ontology import Ontology, load_ontology
from ml.serving.towers import InstanceConfig, create_towers
from ml.training.data import PairBatch
from ml.training.losses import ContrastiveOutput, LossConfig, combine_losses, info_nce_with_queue


@dataclass(frozen=True)
class MQMCConfig:
    queue_size: int = 2048  # K keys per queue
    momentum: float = 0.999  # key heads: k <- m k + (1 - m) q
    multi_queue: bool = True  # one queue per middle category; False: one queue of K keys (MoCo)
    reweight_negatives: bool = True  # ontology-aware weights; False: every negative weighs 1
    middle_penalty: float = 0.25
    upper_penalty: float = 0.25
    mask_same_product: bool = True  # queued keys of the query's own product are not negatives
    middle_to_upper: tuple[int, ...] | None = None  # upper index of each middle; None: bundled ontology

    def __post_init__(self):
        if not 0 <= self.middle_penalty + self.upper_penalty < 1 or min(self.middle_penalty, self.upper_penalty) < 0:
            raise ValueError("middle_penalty and upper_penalty must be >= 0 with a sum < 1")
        if self.middle_to_upper is not None:  # JSON round trips give lists
            object.__setattr__(self, "middle_to_upper", tuple(int(u) for u in self.middle_to_upper))


def ontology_middle_to_upper(ontology: Ontology | None = None) -> tuple[int, ...]:
    ontology = ontology or load_ontology()
    return tuple(m.parent.level_index for m in ontology.middle)


class CategoryKeyQueue(nn.Module):
    """Momentum keys of one side in per-category FIFO queues, with per-category centroids."""

    def __init__(self, cfg: MQMCConfig, dim: int, middle_to_upper: Tensor):
        super().__init__()
        self.cfg = cfg
        num_middle, num_upper = len(middle_to_upper), int(middle_to_upper.max()) + 1
        num_queues = num_middle if cfg.multi_queue else 1
        k = cfg.queue_size
        self.register_buffer("middle_to_upper", middle_to_upper.clone(), persistent=False)
        self.register_buffer("keys", torch.zeros(num_queues, k, dim))
        self.register_buffer("ptr", torch.zeros(num_queues, dtype=torch.long))  # next slot of each queue
        self.register_buffer("middle", torch.full((num_queues, k), -1, dtype=torch.long))  # -1: empty slot
        self.register_buffer("product", torch.full((num_queues, k), -1, dtype=torch.long))
        self.register_buffer("middle_centroids", torch.zeros(num_middle, dim))
        self.register_buffer("upper_centroids", torch.zeros(num_upper, dim))

    @torch.no_grad()
    def enqueue(self, keys: Tensor, middle: Tensor, product: Tensor) -> None:
        """Write a batch of keys into their queues (FIFO, per queue in batch order), then refresh centroids."""
        num_queues, k, dim = self.keys.shape
        queue = middle if num_queues > 1 else torch.zeros_like(middle)
        onehot = F.one_hot(queue, num_queues)  # [B, Q]
        rank = (onehot.cumsum(0) * onehot).sum(1) - 1  # position of each key among its queue's keys in the batch
        count = onehot.sum(0)  # keys per queue in this batch
        keep = rank >= count[queue] - k  # a queue receiving more than K keys keeps its last K
        slot = (queue * k + (self.ptr[queue] + rank) % k)[keep]
        # Out of place: the loss of this step was computed from the old keys and still needs them for backward.
        self.keys = self.keys.view(-1, dim).index_copy(0, slot, keys[keep].to(self.keys.dtype)).view(num_queues, k, dim)
        self.middle.view(-1).index_copy_(0, slot, middle[keep])
        self.product.view(-1).index_copy_(0, slot, product[keep])
        self.ptr.copy_((self.ptr + count) % k)
        self._update_centroids()

    @torch.no_grad()
    def _update_centroids(self) -> None:
        keys, labels = self.keys.view(-1, self.keys.shape[-1]), self.middle.view(-1)
        # Empty slots (label -1) still hold their initial zeros, so adding them to category 0 changes nothing.
        sums = keys.new_zeros(self.middle_centroids.shape).index_add_(0, labels.clamp(min=0), keys)
        upper_sums = keys.new_zeros(self.upper_centroids.shape).index_add_(0, self.middle_to_upper, sums)
        self.middle_centroids.copy_(F.normalize(sums, dim=1))
        self.upper_centroids.copy_(F.normalize(upper_sums, dim=1))

    @torch.no_grad()
    def category_weights(self) -> Tensor:
        """[M, M]: weight w(a, b) of a queued key of middle category b for a query of category a (module doc)."""
        m2u = self.middle_to_upper
        d_middle = torch.cdist(self.middle_centroids, self.middle_centroids)
        d_upper = torch.cdist(self.upper_centroids, self.upper_centroids)[m2u][:, m2u]
        other_upper = (m2u[:, None] != m2u[None, :]).to(d_middle.dtype)
        penalty = self.cfg.middle_penalty * torch.exp(d_middle - 2) + self.cfg.upper_penalty * torch.exp(d_upper - 2) * other_upper
        return (1 - penalty).fill_diagonal_(1.0)

    @torch.no_grad()
    def negative_bias(self, query_middle: Tensor, query_product: Tensor) -> Tensor:
        """[B, Q*K] log-weights added to the negative logits: log w(a, b), -inf for dropped slots."""
        labels = self.middle.view(-1)
        num_middle = len(self.middle_to_upper)
        log_weights = self.category_weights().log() if self.cfg.reweight_negatives else self.keys.new_zeros(num_middle, num_middle)
        log_weights = F.pad(log_weights, (0, 1), value=float("-inf"))  # extra column: empty slots
        slot_category = torch.where(labels >= 0, labels, num_middle)
        bias = log_weights.index_select(0, query_middle).index_select(1, slot_category)
        if self.cfg.mask_same_product:
            bias.masked_fill_(self.product.view(-1).unsqueeze(0) == query_product.unsqueeze(1), float("-inf"))
        return bias

    def flat_keys(self) -> Tensor:
        return self.keys.view(-1, self.keys.shape[-1])


class MultiQueueMoCo(nn.Module):
    """MQMC: bidirectional momentum contrast against per-category queues (see the module doc).

    ``video_queue`` holds video keys (negatives of product queries); ``product_queue`` holds
    product keys (negatives of video queries). In eval mode ``forward`` still returns the loss
    but leaves key heads and queues untouched.
    """

    def __init__(self, instance: InstanceConfig, loss: LossConfig, mqmc: MQMCConfig):
        super().__init__()
        self.loss_cfg, self.cfg = loss, mqmc
        self.video_tower, self.product_tower = create_towers(instance)
        self.video_key_head = copy.deepcopy(self.video_tower.head).requires_grad_(False)
        self.product_key_head = copy.deepcopy(self.product_tower.head).requires_grad_(False)
        middle_to_upper = torch.tensor(mqmc.middle_to_upper or ontology_middle_to_upper(), dtype=torch.long)
        self.video_queue = CategoryKeyQueue(mqmc, instance.proj_dim, middle_to_upper)
        self.product_queue = CategoryKeyQueue(mqmc, instance.proj_dim, middle_to_upper)

    @torch.no_grad()
    def _momentum_update(self) -> None:
        for tower, key_head in ((self.video_tower, self.video_key_head), (self.product_tower, self.product_key_head)):
            torch._foreach_lerp_(list(key_head.parameters()), list(tower.head.parameters()), 1 - self.cfg.momentum)

    def forward(self, batch: PairBatch) -> ContrastiveOutput:
        video = self.video_tower(batch.video_frames, batch.video_frame_mask, batch.video_caption)
        product = self.product_tower(batch.product_images, batch.product_image_mask, batch.product_text)
        with torch.no_grad():
            if self.training:
                self._momentum_update()
            video_key = F.normalize(self.video_key_head(video.fused.detach()) + video.shortcut, dim=1)
            product_key = F.normalize(self.product_key_head(product.fused.detach()) + product.shortcut, dim=1)
            v2p_bias = self.product_queue.negative_bias(batch.middle, batch.product_index)
            p2v_bias = self.video_queue.negative_bias(batch.middle, batch.product_index)
        t = self.loss_cfg.temperature
        v2p = info_nce_with_queue(F.normalize(video.embedding, dim=1), product_key, self.product_queue.flat_keys(), v2p_bias, t)
        p2v = info_nce_with_queue(F.normalize(product.embedding, dim=1), video_key, self.video_queue.flat_keys(), p2v_bias, t)
        if self.training:
            self.video_queue.enqueue(video_key, batch.middle, batch.product_index)
            self.product_queue.enqueue(product_key, batch.middle, batch.product_index)
        return combine_losses(v2p, p2v, video, product, self.loss_cfg)
