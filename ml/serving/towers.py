"""Instance towers (forward only; training lives in ml.training): pre-extracted visual + text features of one side -> contrastive embedding.

One `InstanceTower` per side (micro-video: frames + caption; product: photos + title text),
built as in the MQMC reference code:

    pooled visual --VisualEmbedding--> v [d]  \
                                               FusedGatedUnit --> fused [d] --ProjectionHead--> z [proj_dim]
    text          --TextEmbedding----> t [d]  /

The uni-modal embeddings ``v`` and ``t`` are returned too: the MQMC consistency terms contrast
them across sides (video visual vs product visual, video text vs product text) and within an
instance (visual vs text), so they live in one shared space and also serve as visual-only /
text-only retrieval embeddings for ablations.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ml.serving.pooling import create_pooling, masked_softmax

MODALITIES = ("fused", "visual", "text")


@dataclass(frozen=True)
class InstanceConfig:
    """Dimensions of both towers (the two sides share them)."""

    visual_dim: int = 256  # per-frame / per-photo feature size
    text_dim: int = 256  # caption / product text feature size
    visual_hidden_dim: int = 512  # hidden width of the visual MLP
    embed_dim: int = 512  # uni-modal and fused embedding size (d)
    proj_dim: int = 256  # contrastive space (what goes into the vector index)
    frame_pooling: str = "mean"  # video frames -> one vector
    image_pooling: str = "mean"  # product photos -> one vector
    video_prototypes: int = 1  # > 1: that many visual prototypes per video (ml.training.prototypes), matched by the best
    # The embedding starts as the encoder features' own similarity: [pooled visual, text] (each unit
    # length) plus the projection head, whose last layer starts at zero. proj_dim = visual + text dim.
    feature_shortcut: bool = False

    @classmethod
    def preset(cls, name: str, **overrides) -> "InstanceConfig":
        try:
            base = INSTANCE_PRESETS[name]
        except KeyError:
            raise ValueError(f"unknown preset {name!r}; available: {', '.join(INSTANCE_PRESETS)}") from None
        return replace(base, **overrides)


INSTANCE_PRESETS: dict[str, InstanceConfig] = {
    # Our open_clip image/text features.
    "mvmatch-clip256": InstanceConfig(),
    # The paper: ResNet-50 2048-d frames/photos, BERT 768-d text, d = 1024, 512-d contrastive space.
    "mqmc-paper": InstanceConfig(visual_dim=2048, text_dim=768, embed_dim=1024, proj_dim=512),
}


class VisualEmbedding(nn.Module):
    """Visual MLP: in -> hidden -> hidden -> out, BatchNorm + LeakyReLU between layers."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 512):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.LeakyReLU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.LeakyReLU(),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class TextEmbedding(nn.Module):
    """Linear + BatchNorm + LeakyReLU over a sentence feature."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, out_dim), nn.BatchNorm1d(out_dim), nn.LeakyReLU())

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ContextGating(nn.Module):
    """x * sigmoid(W x + b), i.e. GLU over the concatenation [x, Wx + b]."""

    def __init__(self, dim: int):
        super().__init__()
        self.fc = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return F.glu(torch.cat((x, self.fc(x)), dim=1), dim=1)


class FusedGatedUnit(nn.Module):
    """Project both modalities to d, concatenate, Linear, BatchNorm, context gating."""

    def __init__(self, visual_dim: int, text_dim: int, out_dim: int):
        super().__init__()
        self.fc_visual = nn.Linear(visual_dim, out_dim)
        self.fc_text = nn.Linear(text_dim, out_dim)
        self.fc_out = nn.Linear(2 * out_dim, out_dim)
        self.bn = nn.BatchNorm1d(out_dim)
        self.gating = ContextGating(out_dim)

    def forward(self, visual: Tensor, text: Tensor) -> Tensor:
        x = torch.cat((self.fc_visual(visual), self.fc_text(text)), dim=1)
        return self.gating(self.bn(self.fc_out(x)))


class ProjectionHead(nn.Module):
    """3-layer MLP (in -> in -> in -> out) into the contrastive space; MoCo keeps a momentum copy."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, in_dim),
            nn.BatchNorm1d(in_dim),
            nn.LeakyReLU(),
            nn.Linear(in_dim, in_dim),
            nn.BatchNorm1d(in_dim),
            nn.LeakyReLU(),
            nn.Linear(in_dim, out_dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class TowerOutput(NamedTuple):
    visual: Tensor  # uni-modal visual embedding [B, d]
    text: Tensor  # uni-modal text embedding [B, d]
    fused: Tensor  # fused gated unit output [B, d]
    embedding: Tensor  # projection head output (+ shortcut) [B, proj_dim], not normalised
    shortcut: Tensor  # the feature shortcut part of ``embedding`` (a zero scalar when off): key heads add it too


class InstanceTower(nn.Module):
    """One side's encoder: pool the visual set, embed both modalities, fuse, project."""

    def __init__(self, cfg: InstanceConfig, pooling: str):
        super().__init__()
        self.pool = create_pooling(pooling, cfg.visual_dim)
        self.visual = VisualEmbedding(self.pool.out_dim, cfg.embed_dim, cfg.visual_hidden_dim)
        self.text = TextEmbedding(cfg.text_dim, cfg.embed_dim)
        self.fuse = FusedGatedUnit(cfg.embed_dim, cfg.embed_dim, cfg.embed_dim)
        self.head = ProjectionHead(cfg.embed_dim, cfg.proj_dim)
        self.feature_shortcut = cfg.feature_shortcut
        if cfg.feature_shortcut:
            if cfg.proj_dim != self.pool.out_dim + cfg.text_dim:
                raise ValueError(f"feature_shortcut needs proj_dim = pooled visual + text dim "
                                 f"({self.pool.out_dim} + {cfg.text_dim}), got {cfg.proj_dim}")
            nn.init.zeros_(self.head.net[-1].weight)
            nn.init.zeros_(self.head.net[-1].bias)

    def shortcut(self, pooled: Tensor, text: Tensor) -> Tensor:
        if not self.feature_shortcut:
            return pooled.new_zeros(())
        return torch.cat((F.normalize(pooled, dim=-1), F.normalize(text, dim=-1)), dim=-1) / 2 ** 0.5

    def forward(self, visual: Tensor, visual_mask: Tensor | None, text: Tensor) -> TowerOutput:
        """visual [B, T, Dv] (frames or photos), visual_mask [B, T] bool or None, text [B, Dt]."""
        pooled = self.pool(visual, visual_mask)
        v = self.visual(pooled)
        t = self.text(text)
        fused = self.fuse(v, t)
        base = self.shortcut(pooled, text)
        return TowerOutput(v, t, fused, self.head(fused) + base, base)

    def embed(self, visual: Tensor, visual_mask: Tensor | None, text: Tensor, modality: str = "fused") -> Tensor:
        """The retrieval embedding (not normalised): "fused" (projection), "visual" or "text" (uni-modal)."""
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        out = self(visual, visual_mask, text)
        return out.embedding if modality == "fused" else getattr(out, modality)


def create_towers(cfg: InstanceConfig) -> tuple[InstanceTower, InstanceTower]:
    """(video tower, product tower)."""
    return InstanceTower(cfg, cfg.frame_pooling), InstanceTower(cfg, cfg.image_pooling)


class PrototypeAttention(nn.Module):
    """frames [B, T, D] (+ mask) -> K prototypes [B, K, D]: each a learned query's attention over the frames."""

    def __init__(self, dim: int, num: int, temperature: float = 0.1):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(num, dim))
        self.key = nn.Linear(dim, dim)
        self.temperature = temperature
        self.out_dim = dim

    def attention(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        logits = torch.einsum("kd,btd->bkt", F.normalize(self.queries, dim=-1), F.normalize(self.key(x), dim=-1))
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device) if mask is None else mask
        return masked_softmax(logits / self.temperature, mask[:, None].expand_as(logits), -1)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.attention(x, mask) @ x


class PrototypeVideoTower(InstanceTower):
    """An `InstanceTower` whose visual side is K prototypes (ml.training.prototypes): ``embedding`` /
    ``fused`` are [B, K, .]; ``visual`` (for the consistency terms) is the prototypes' mean uni-modal embedding."""

    def __init__(self, cfg: InstanceConfig):
        if cfg.feature_shortcut:
            raise ValueError("video prototypes do not combine with feature_shortcut")
        super().__init__(cfg, cfg.frame_pooling)
        self.pool = PrototypeAttention(cfg.visual_dim, cfg.video_prototypes)

    def forward(self, visual: Tensor, visual_mask: Tensor | None, text: Tensor) -> TowerOutput:
        protos = self.pool(visual, visual_mask)  # [B, K, Dv]
        b, k, _ = protos.shape
        v = self.visual(protos.flatten(0, 1))
        t = self.text(text)
        fused = self.fuse(v, t.repeat_interleave(k, dim=0))
        return TowerOutput(v.view(b, k, -1).mean(1), t, fused.view(b, k, -1), self.head(fused).view(b, k, -1),
                           fused.new_zeros(()))


class InstanceTowers(nn.Module):
    """The two towers a model bundle ships (no key heads, queues or optimiser): what serving runs.

    Every training model (ml.training) has the same ``video_tower`` / ``product_tower`` attributes, so
    `embed_videos` / `embed_products` take either."""

    def __init__(self, cfg: InstanceConfig):
        super().__init__()
        self.cfg = cfg
        self.video_tower = PrototypeVideoTower(cfg) if cfg.video_prototypes > 1 else InstanceTower(cfg, cfg.frame_pooling)
        self.product_tower = InstanceTower(cfg, cfg.image_pooling)

    def config_dict(self) -> dict:
        return asdict(self.cfg)

    @classmethod
    def from_state(cls, config: dict, state: dict, device: str | torch.device = "cpu") -> "InstanceTowers":
        """Rebuild from a JSON config and a state dict holding (at least) both towers' weights."""
        towers = cls(InstanceConfig(**config))
        towers.load_state_dict({k: v for k, v in state.items() if k.split(".", 1)[0] in ("video_tower", "product_tower")})
        return towers.to(device).eval()


@torch.no_grad()
def _embed(tower: nn.Module, visual, text, visual_mask, modality: str, batch_size: int) -> np.ndarray:
    device = next(tower.parameters()).device
    visual, text = torch.as_tensor(visual), torch.as_tensor(text)
    was_training = tower.training
    tower.eval()
    try:
        out = [
            tower.embed(
                visual[i : i + batch_size].to(device),
                None if visual_mask is None else torch.as_tensor(visual_mask)[i : i + batch_size].to(device),
                text[i : i + batch_size].to(device),
                modality,
            )
            for i in range(0, len(visual), batch_size)
        ]
    finally:
        tower.train(was_training)
    return F.normalize(torch.cat(out), dim=-1).cpu().numpy().astype(np.float32)


def embed_videos(model: nn.Module, frames, caption, frame_mask=None, *, modality: str = "fused", batch_size: int = 1024) -> np.ndarray:
    """L2-normalised video embeddings [N, d] (float32): frames [N, T, Dv], caption [N, Dt], frame_mask [N, T].

    modality "fused" is the contrastive embedding for the vector index; "visual" / "text" the
    uni-modal ones (ablations). ``model``: `InstanceTowers` or any training model with the same towers.
    """
    return _embed(model.video_tower, frames, caption, frame_mask, modality, batch_size)


def embed_products(model: nn.Module, images, text, image_mask=None, *, modality: str = "fused", batch_size: int = 1024) -> np.ndarray:
    """L2-normalised product embeddings [N, d] (float32): images [N, P, Dv], text [N, Dt], image_mask [N, P]."""
    return _embed(model.product_tower, images, text, image_mask, modality, batch_size)
