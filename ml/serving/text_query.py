"""Text search: a text query (a product text or a few words typed by a user) into the retrieval index.

The index holds the instance towers' embeddings of videos and products; a query is only text, and
the product tower needs photos. `TextQueryHead` maps the encoder's text feature of the query into
the index space. It trains with the towers frozen (ml.training.heads.fit_text_query_head), so one query
vector searches both collections of the same index.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn



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


@torch.no_grad()
def embed_queries(head: TextQueryHead, text: Tensor) -> np.ndarray:
    return head(text).numpy()
