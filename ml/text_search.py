"""Text search: a text query (a product text or a few words typed by a user) into the retrieval index.

The index holds the instance towers' embeddings of videos and products; a query is only text, and
the product tower needs photos. `TextQueryHead` maps the encoder's text feature of the query into
the index space. It trains with the towers frozen: in-batch InfoNCE from the text of a training
product (and short queries about it) to its videos' and to its own stored embeddings, so one query
vector searches both collections of the same index. Videos given as several prototypes
([N, K, D]) match by their best one (``ml.metrics.similarity``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ml.metrics import similarity


@dataclass(frozen=True)
class TextQueryConfig:
    hidden_dim: int = 512
    temperature: float = 0.05
    epochs: int = 40
    batch_size: int = 256
    lr: float = 1e-3
    seed: int = 0


class TextQueryHead(nn.Module):
    """Encoder text feature [N, Dt] -> unit query vector [N, D] in the index space."""

    def __init__(self, text_dim: int, out_dim: int, hidden_dim: int = 512):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(text_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim))

    def forward(self, text: Tensor) -> Tensor:
        return F.normalize(self.net(F.normalize(text, dim=-1)), dim=-1)

    def save(self, path) -> None:
        dims = {"text_dim": self.net[0].in_features, "hidden_dim": self.net[0].out_features,
                "out_dim": self.net[2].out_features}
        torch.save({"dims": dims, "state": self.state_dict()}, path)

    @classmethod
    def load(cls, path) -> "TextQueryHead":
        saved = torch.load(path, map_location="cpu", weights_only=True)
        head = cls(**saved["dims"])
        head.load_state_dict(saved["state"])
        return head.eval()


def short_query(product) -> str:
    """What a user might type for a generated product (ml.datagen): colour, pattern (unless plain), category name."""
    from ml.ontology import load_ontology

    a = product.attributes
    words = [a["colour"], "" if a["pattern"] == "solid" else a["pattern"], load_ontology().get(product.category_path).name]
    return " ".join(w for w in words if w)


def fit_text_query_head(query_text: Tensor, query_product: Tensor, video_emb, video_product: Tensor, product_emb,
                        cfg: TextQueryConfig = TextQueryConfig()) -> tuple[TextQueryHead, float]:
    """Queries ``query_text`` [Nq, Dt] about products ``query_product`` [Nq]; targets: the frozen unit
    embeddings of the training videos (``video_product`` their products) and of the products.
    Each step contrasts a batch of queries with one random video of each query's product and with
    the products themselves. Returns (head in eval mode, seconds)."""
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
    started = time.perf_counter()
    head.train()
    for _ in range(cfg.epochs):
        for idx in torch.randperm(len(query_text), generator=generator).split(cfg.batch_size):
            pid = query_product[idx]
            vid = torch.stack([videos_of[p][torch.randint(len(videos_of[p]), (1,), generator=generator)][0]
                               for p in pid.tolist()])
            q = head(query_text[idx])
            same = (pid[:, None] == pid[None]) & ~torch.eye(len(idx), dtype=torch.bool)
            target = torch.arange(len(idx))
            loss = 0
            for sims in (similarity(videos[vid], q).T, q @ products[pid].T):  # [queries, targets]
                loss = loss + F.cross_entropy((sims / cfg.temperature).masked_fill(same, float("-inf")), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return head.eval(), time.perf_counter() - started


def fit_split_query_head(encoder, model: nn.Module, manifest, data, cfg: TextQueryConfig = TextQueryConfig()):
    """The query head of a model bundle, trained on one split of a generated dataset (``data``, a
    ``FeatureSet`` of ``manifest``): each product's own text and a short query about it."""
    from ml.train_instance import embed_products, embed_videos

    shorts = encoder.encode_texts([short_query(manifest.product(sku)) for sku in data.product_ids])
    videos = embed_videos(model, data.video_frames, data.video_caption, data.video_frame_mask)
    products = embed_products(model, data.product_images, data.product_text, data.product_image_mask)
    return fit_text_query_head(torch.cat([data.product_text, shorts]), torch.arange(data.num_products).repeat(2),
                               videos, data.video_product, products, cfg)


@torch.no_grad()
def embed_queries(head: TextQueryHead, text: Tensor) -> np.ndarray:
    return head(text).numpy()
