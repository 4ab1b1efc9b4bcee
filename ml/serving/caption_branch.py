"""Caption branch (Cap4Video): query-caption matching fused with query-video matching.

A micro-video's caption (the publisher's caption and hashtags) is text, so a text-side query (a
product's text, or a user's search words) can be matched to it directly in the text encoder's
space, next to the instance towers' score: ``score = video_score + weight * caption_scores``,
``weight`` tuned on the validation split. Works for video -> product (the product's text vs the
video's caption) and product / text -> video alike. A video without a caption gets 0 from the
branch (the encoder's vector of an empty sentence would otherwise favour some products over others).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def caption_scores(video_caption: Tensor, query_text: Tensor, has_caption: Tensor | None = None) -> Tensor:
    """[Nv, Nq] cosine of every video's caption feature with every query / product text feature."""
    scores = F.normalize(video_caption.float(), dim=-1) @ F.normalize(query_text.float(), dim=-1).T
    return scores if has_caption is None else scores * has_caption[:, None].to(scores.dtype)
