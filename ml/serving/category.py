"""Ontology as explicit semantics: predict a video's category from its frames and caption.

One classifier over the lower categories; the middle and upper probabilities are sums over each
category's children, so the three levels never disagree. Retrieval uses the prediction two ways
on the first-stage scores s(video, product):

- boost: s + weight * log p(level category of the product | video);
- filter: candidates outside the video's top-k predicted categories of a level drop to the bottom
  (the vector index can do the same with a category-subtree filter).

Both read the same [videos, products] log-probability matrix, so they serve either direction.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ml.serving.ontology import Ontology, load_ontology
from ml.serving.pooling import masked_mean

LEVELS = ("upper", "middle", "lower")


@dataclass(frozen=True)
class CategoryConfig:
    hidden_dim: int = 512
    dropout: float = 0.2
    epochs: int = 60
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0


def ontology_maps(ontology: Ontology | None = None) -> tuple[Tensor, Tensor]:
    """(middle index of every lower category [312], upper index of every middle category [30])."""
    onto = ontology or load_ontology()
    return (torch.tensor([c.parent.level_index for c in onto.lower]),
            torch.tensor([c.parent.level_index for c in onto.middle]))


def category_labels(category_paths: list[str], ontology: Ontology | None = None) -> Tensor:
    """[N, 3] (upper, middle, lower) level indices of lower-category paths."""
    onto = ontology or load_ontology()
    cats = [onto.get(p) for p in category_paths]
    return torch.tensor([[c.ancestor(0).level_index, c.ancestor(1).level_index, c.level_index] for c in cats])


class CategoryHead(nn.Module):
    """(frames [N, T, Dv] + mask, caption [N, Dt]) -> log-probabilities per level."""

    def __init__(self, visual_dim: int, text_dim: int, cfg: CategoryConfig = CategoryConfig(),
                 ontology: Ontology | None = None):
        super().__init__()
        lower_to_middle, middle_to_upper = ontology_maps(ontology)
        self.register_buffer("lower_to_middle", lower_to_middle, persistent=False)
        self.register_buffer("middle_to_upper", middle_to_upper, persistent=False)
        self.net = nn.Sequential(nn.Linear(visual_dim + text_dim, cfg.hidden_dim), nn.GELU(), nn.Dropout(cfg.dropout),
                                 nn.Linear(cfg.hidden_dim, len(lower_to_middle)))

    def forward(self, frames: Tensor, mask: Tensor, caption: Tensor) -> Tensor:
        """Lower-category logits [N, 312]."""
        x = torch.cat((F.normalize(masked_mean(frames, mask), dim=-1), F.normalize(caption, dim=-1)), dim=-1)
        return self.net(x)

    def level_log_probs(self, frames: Tensor, mask: Tensor, caption: Tensor) -> dict[str, Tensor]:
        """{"upper": [N, 6], "middle": [N, 30], "lower": [N, 312]} log-probabilities, consistent across levels."""
        return self.levels(torch.log_softmax(self(frames, mask, caption), dim=-1))

    def levels(self, lower: Tensor) -> dict[str, Tensor]:
        """All three levels from lower-category log-probabilities [N, 312] (what serving stores per video)."""
        middle = _sum_children(lower, self.lower_to_middle, len(self.middle_to_upper))
        upper = _sum_children(middle, self.middle_to_upper, int(self.middle_to_upper.max()) + 1)
        return {"upper": upper, "middle": middle, "lower": lower}


def _sum_children(log_probs: Tensor, parent: Tensor, num_parents: int) -> Tensor:
    """log sum_{children c of p} exp(log_probs[:, c]) for every parent p."""
    peak = log_probs.max(dim=1, keepdim=True).values
    sums = log_probs.new_zeros(log_probs.shape[0], num_parents).index_add_(1, parent, (log_probs - peak).exp())
    return sums.clamp(min=1e-30).log() + peak


@torch.no_grad()
def category_accuracy(head: CategoryHead, frames: Tensor, mask: Tensor, caption: Tensor, labels: Tensor
                      ) -> dict[str, float]:
    """Top-1 accuracy (%) per level; ``labels`` [N, 3] = (upper, middle, lower)."""
    log_probs = head.level_log_probs(frames, mask, caption)
    return {level: 100.0 * float((log_probs[level].argmax(1) == labels[:, i]).float().mean())
            for i, level in enumerate(LEVELS)}


def category_boost(scores: Tensor, level_log_probs: Tensor, product_category: Tensor, weight: float) -> Tensor:
    """scores [Nv, Np] + weight * log p(product's category | video); ``level_log_probs`` [Nv, n] of one level,
    ``product_category`` [Np] the products' indices at that level."""
    return scores + weight * level_log_probs[:, product_category]


def category_filter(scores: Tensor, level_log_probs: Tensor, product_category: Tensor, top_k: int) -> Tensor:
    """Products outside each video's ``top_k`` predicted categories (of one level) sink below all others."""
    allowed = torch.zeros_like(level_log_probs, dtype=torch.bool)
    allowed.scatter_(1, level_log_probs.topk(min(top_k, level_log_probs.shape[1]), dim=1).indices, True)
    drop = float(scores.max() - scores.min()) + 1.0
    return scores - drop * (~allowed[:, product_category]).to(scores.dtype)
