"""Multi-grained re-ranking head (X-CLIP with attention over similarity matrices, AOSM).

Second stage of retrieval: the vector index returns the top N candidates from pooled embeddings;
this head rescores them from finer features and the two scores are added
(``first_stage + weight * fine``; ``weight`` is tuned on the validation split).

Grains. The video side is its frames (encoder image features, after salient filtering if on)
and the video = their mean; the product side is its words (``Encoder.encode_text_tokens``), its
sentence (the text feature) and, when stored, its photos and their mean. Every (video set,
product set) pair is a grain: video-sentence, video-word, frame-sentence, frame-word, plus
video-photo and frame-photo. Each grain's similarity matrix S [M, N] is aggregated by AOSM:
softmax-weighted over one axis then the other (both orders, averaged), so that the frames and
words that match dominate and noise frames / filler words fade; the grains are averaged.
Learned: a linear map on frames and one on words (identity at the start), one temperature per
grain, and the logit scale of the in-batch contrastive loss used to train it.

The head reads unit-norm float16 features; `VideoFine` / `ProductFine` are what to store per
video / product (or build per text query). Scoring works on aligned pairs (re-ranking) or on
all pairs of two batches (training).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ml.serving.pooling import masked_mean, masked_softmax


@dataclass
class VideoFine:
    """Per video: frame features [N, T, D] (unit, float16 is enough) and their mask [N, T]."""

    frames: Tensor
    frame_mask: Tensor

    def __len__(self) -> int:
        return self.frames.shape[0]

    def __getitem__(self, index) -> "VideoFine":
        return VideoFine(self.frames[index], self.frame_mask[index])


@dataclass
class ProductFine:
    """Per product (or text query): words [N, L, D] + mask, sentence [N, D], optional photos [N, P, D] + mask."""

    words: Tensor
    word_mask: Tensor
    sentence: Tensor
    photos: Tensor | None = None
    photo_mask: Tensor | None = None

    def __len__(self) -> int:
        return self.sentence.shape[0]

    def __getitem__(self, index) -> "ProductFine":
        return ProductFine(*(None if getattr(self, f.name) is None else getattr(self, f.name)[index] for f in fields(self)))


def videos_fine_of(data) -> VideoFine:
    """A `ml.training.data.FeatureSet`'s videos as the head reads them."""
    return VideoFine(data.video_frames.half(), data.video_frame_mask)


def products_fine_of(data, words: Tensor, word_mask: Tensor, photos: bool = True) -> ProductFine:
    """A FeatureSet's products as the head reads them; ``words`` [Np, L, D] are their texts' word features."""
    if not photos:
        return ProductFine(words, word_mask, data.product_text)
    return ProductFine(words, word_mask, data.product_text, data.product_images.half(), data.product_image_mask)


@dataclass(frozen=True)
class RerankConfig:
    photos: bool = True  # photo grains next to the text grains (X-CLIP itself is text-only)
    temperature: float = 0.05  # initial AOSM temperature of every grain
    epochs: int = 15
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    weight_grid: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)  # fine-score weights tried on validation


class FineScores(NamedTuple):
    score: Tensor  # [N] aligned pairs, or [A, B] all pairs
    frame_weight: Tensor  # how much each frame drove the score: [N, T] or [A, B, T]


def aosm(sims: Tensor, row_mask: Tensor, col_mask: Tensor, tau: Tensor) -> tuple[Tensor, Tensor]:
    """Attention over a similarity matrix ``sims [..., M, N]`` (X-CLIP): weight each similarity by
    the softmax of the similarities along one axis, sum, repeat along the other axis; average the two
    orders. Returns (score [...], weight of each row [..., M])."""
    if sims.shape[-1] == 1 or sims.shape[-2] == 1:
        return _aosm_vector(sims, row_mask, col_mask, tau)
    pair = row_mask.unsqueeze(-1) & col_mask.unsqueeze(-2)
    per_row = (masked_softmax(sims / tau, pair, -1) * sims).sum(-1)  # [..., M]: best columns of each row
    row_weight = masked_softmax(per_row / tau, row_mask, -1)
    rows_first = (row_weight * per_row).sum(-1)
    per_col = (masked_softmax(sims / tau, pair, -2) * sims).sum(-2)  # [..., N]
    cols_first = (masked_softmax(per_col / tau, col_mask, -1) * per_col).sum(-1)
    return (rows_first + cols_first) / 2, row_weight


def _aosm_vector(sims: Tensor, row_mask: Tensor, col_mask: Tensor, tau: Tensor) -> tuple[Tensor, Tensor]:
    """`aosm` where one side is a single item (a video vector, a sentence): both orders reduce to one softmax over
    the other side, so a lookup's four one-item grains cost one softmax each instead of four."""
    if sims.shape[-1] == 1 and sims.shape[-2] == 1:  # one pair: its similarity
        return sims[..., 0, 0].masked_fill(~(row_mask[..., 0] & col_mask[..., 0]), 0.0), row_mask.to(sims.dtype)
    if sims.shape[-1] == 1:  # one column: rows are the set
        x, one, many = sims[..., 0], col_mask[..., :1], row_mask
        mask = many & one
        row_weight = masked_softmax(x.masked_fill(~one, 0.0) / tau, row_mask, -1)
    else:  # one row: columns are the set
        x, one, many = sims[..., 0, :], row_mask[..., :1], col_mask
        mask = many & one
        row_weight = row_mask.to(sims.dtype)
    return (masked_softmax(x / tau, mask, -1) * x).sum(-1), row_weight


class MultiGrainedHead(nn.Module):
    """Fine score of (video, product) pairs from frame/word/photo features (see the module doc)."""

    def __init__(self, dim: int, cfg: RerankConfig = RerankConfig()):
        super().__init__()
        self.cfg = cfg
        self.frame_map = nn.Linear(dim, dim)
        self.word_map = nn.Linear(dim, dim)
        for layer in (self.frame_map, self.word_map):
            nn.init.eye_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.grains = ["video-sentence", "video-word", "frame-sentence", "frame-word"]
        if cfg.photos:
            self.grains += ["video-photo", "frame-photo"]
        self.log_tau = nn.Parameter(torch.full((len(self.grains),), math.log(cfg.temperature)))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(20.0)))

    def prepare_videos(self, videos: VideoFine) -> VideoFine:
        """Frames through the learned map, unit length: what `forward` reads (store it per video)."""
        return VideoFine(F.normalize(self.frame_map(videos.frames.float()), dim=-1), videos.frame_mask)

    def prepare_products(self, products: ProductFine) -> ProductFine:
        """Words through the learned map; everything unit length: what `forward` reads (store it per product)."""
        photos = None if products.photos is None else F.normalize(products.photos.float(), dim=-1)
        return ProductFine(F.normalize(self.word_map(products.words.float()), dim=-1), products.word_mask,
                           F.normalize(products.sentence.float(), dim=-1), photos, products.photo_mask)

    def forward(self, video: VideoFine, product: ProductFine, pairwise: bool = False) -> FineScores:
        """Prepared inputs (`prepare_videos`, `prepare_products`). Aligned pairs (video i, product i) -> [N];
        ``pairwise``: every video with every product -> [A, B]."""
        frames, fmask = video.frames.float(), video.frame_mask
        vid = F.normalize(masked_mean(frames, fmask), dim=-1).unsqueeze(-2)  # the video as a set of one
        one_v = fmask[..., :1].new_ones(fmask.shape[:-1] + (1,))
        words, sentence = product.words.float(), product.sentence.float().unsqueeze(-2)
        one_p = product.word_mask.new_ones(product.word_mask.shape[:-1] + (1,))
        targets = {"sentence": (sentence, one_p), "word": (words, product.word_mask)}
        if self.cfg.photos and product.photos is not None:
            photos = product.photos.float()
            targets["photo"] = (photos, product.photo_mask)
            targets["photomean"] = (F.normalize(masked_mean(photos, product.photo_mask), dim=-1).unsqueeze(-2), one_p)
        # Every target side side by side: one similarity matrix per source, each grain reads its columns.
        spans, at = {}, 0
        for name, (t, _) in targets.items():
            spans[name] = slice(at, at + t.shape[-2])
            at += t.shape[-2]
        columns = torch.cat([t for t, _ in targets.values()], dim=-2)
        column_mask = torch.cat([m for _, m in targets.values()], dim=-1)
        taus = self.log_tau.exp()
        scores, frame_weights = [], []
        for source, (rows, row_mask) in {"video": (vid, one_v), "frame": (frames, fmask)}.items():
            if pairwise:
                sims = torch.einsum("amd,bnd->abmn", rows, columns)
                a, b = rows.shape[0], columns.shape[0]
                row_mask, cols_mask = row_mask[:, None].expand(a, b, -1), column_mask[None].expand(a, b, -1)
            else:
                sims, cols_mask = torch.einsum("nmd,nkd->nmk", rows, columns), column_mask
            for g, grain in enumerate(self.grains):
                if not grain.startswith(source + "-"):
                    continue
                target = grain.split("-")[1]
                if target == "photo" and "photo" not in targets:
                    continue  # no photos (a text query): text grains only
                span = spans["photomean" if grain == "video-photo" else target]
                s, w = aosm(sims[..., span], row_mask, cols_mask[..., span], taus[g])
                scores.append(s)
                if source == "frame":
                    frame_weights.append(w)
        return FineScores(torch.stack(scores).mean(0), torch.stack(frame_weights).mean(0))


class RerankResult(NamedTuple):
    order: Tensor  # [N] candidate positions, best first
    score: Tensor  # [N] final score of each candidate (input order)
    fine: Tensor  # [N] fine score of each candidate (input order)
    frame: Tensor  # [N] index of the frame that drove each (video, product) match


class Reranker:
    """What serving calls: ``rerank(query, candidates, first_stage)``.

    Store per video ``prepare_videos(VideoFine)`` and per product ``prepare_products(ProductFine)``
    (float16; they depend on the head, so on its version). A video query is a raw `VideoFine` of one
    video with prepared `ProductFine` candidates; a product or text query is a raw `ProductFine` of
    one (a text query: words and sentence, no photos) with prepared `VideoFine` candidates.
    ``first_stage`` [N] are the vector index's scores of the candidates (cosine of pooled embeddings).
    """

    def __init__(self, head: MultiGrainedHead, weight: float, top_n: int = 50):
        self.head = head.eval()
        self.weight = weight
        self.top_n = top_n

    @torch.no_grad()
    def prepare_videos(self, videos: VideoFine) -> VideoFine:
        prepared = self.head.prepare_videos(videos)
        return VideoFine(prepared.frames.half(), prepared.frame_mask)

    @torch.no_grad()
    def prepare_products(self, products: ProductFine) -> ProductFine:
        p = self.head.prepare_products(products)
        return ProductFine(p.words.half(), p.word_mask, p.sentence.half(),
                           None if p.photos is None else p.photos.half(), p.photo_mask)

    @torch.no_grad()
    def rerank(self, query: VideoFine | ProductFine, candidates: VideoFine | ProductFine,
               first_stage: Tensor) -> RerankResult:
        if isinstance(query, VideoFine):
            fine, frame_weight = self.head(self.head.prepare_videos(query), candidates, pairwise=True)
            fine, frame_weight = fine[0], frame_weight[0]
        else:
            fine, frame_weight = self.head(candidates, self.head.prepare_products(query), pairwise=True)
            fine, frame_weight = fine[:, 0], frame_weight[:, 0]
        score = first_stage.float() + self.weight * fine
        return RerankResult(score.argsort(descending=True), score, fine, frame_weight.argmax(-1))


class TopCandidates(NamedTuple):
    """Each query's top-N candidates of a score matrix and their fine scores (pairs flattened)."""

    query: Tensor  # [Q * n] row of the [Q, C] matrix (a video for "video" queries, else a product / text)
    candidate: Tensor  # [Q * n]
    fine: Tensor  # [Q * n]
    queries: str  # "video" or "product"


@torch.no_grad()
def score_top_candidates(first_stage: Tensor, head: MultiGrainedHead, videos: VideoFine, products: ProductFine,
                         top_n: int, queries: str = "video", batch_pairs: int = 8192) -> TopCandidates:
    """Fine scores of every query's ``top_n`` first-stage candidates. ``first_stage`` is [Nv, Np];
    ``queries="video"``: videos query products (rows), ``"product"``: products or text queries query videos."""
    scores = first_stage if queries == "video" else first_stage.T  # [Q, C]
    top = scores.topk(min(top_n, scores.shape[1]), dim=1).indices
    q = torch.arange(scores.shape[0])[:, None].expand_as(top).reshape(-1)
    c = top.reshape(-1)
    vid, prod = (q, c) if queries == "video" else (c, q)
    videos, products = head.prepare_videos(videos), head.prepare_products(products)
    fine = torch.cat([head(videos[vid[i:i + batch_pairs]], products[prod[i:i + batch_pairs]]).score
                      for i in range(0, len(q), batch_pairs)])
    return TopCandidates(q, c, fine, queries)


def rerank_scores(first_stage: Tensor, top: TopCandidates, weight: float) -> Tensor:
    """Scores [Nv, Np] after re-ranking each query's top candidates by ``first + weight * fine``; they are
    lifted above all others, so candidates the first stage missed stay where they were."""
    scores = first_stage.float() if top.queries == "video" else first_stage.float().T
    combined = scores[top.query, top.candidate] + weight * top.fine
    out = scores.clone()
    out[top.query, top.candidate] = combined + (scores.max() - combined.min() + 1)
    return out if top.queries == "video" else out.T


def rerank_latency_ms(reranker: Reranker, videos: VideoFine, products: ProductFine, n: int,
                      queries: int = 30, seed: int = 0) -> float:
    """Median wall time (ms) of re-ranking ``n`` product candidates for one video query (candidates'
    prepared features in memory, gathered per query)."""
    products = reranker.prepare_products(products)
    g = torch.Generator().manual_seed(seed)
    times = []
    for i in range(queries + 3):
        v = int(torch.randint(len(videos), (1,), generator=g))
        cand = torch.randint(len(products), (n,), generator=g)
        first = torch.rand(n, generator=g)
        started = time.perf_counter()
        reranker.rerank(videos[v:v + 1], products[cand], first)
        if i >= 3:  # warm-up
            times.append(time.perf_counter() - started)
    return 1000.0 * float(torch.tensor(times).median())
