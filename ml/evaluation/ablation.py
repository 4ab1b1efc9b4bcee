"""The video-text retrieval parts (issue 4), each measured on the benchmark's features, in one run.

    python -m ml.evaluation.ablation --data var/bench-data --out var/ablation-report --doc docs/ablation.md

Features are those of `ml.evaluation.benchmark` (same recipe, same cache under ``DATA/.features``: a run
after the benchmark loads them); the MQMC hyperparameters are the benchmark's defaults (flags as
there). Rows:

- stage-1 models (MQMC, trained and tested like the benchmark's MQMC row, one change each):
  frame pooling mean / seq_transformer / hierarchical; salient-frame filtering; multiple visual
  prototypes; single-frame training + frame ensemble; sparse frame sampling; the image tower
  trained with patch dropout;
- second-stage parts on top of the mean-pooling model's scores: caption branch, multi-grained
  re-ranking of the top 50 / 200 (text grains; text + photo grains), category boost / filter;
  weights tuned on the validation split.

Every row: video->product and product->video R@1/5/10 and MdR on the whole test split, text->video
R@1/5/10 for two kinds of text queries (the product's text; a short query "colour pattern
category"), training time, re-ranking latency per query at N = 50 / 200, and the shuffling test
(R@1 with every video's frames in random order). Diagnostics: share of product frames among the
salient frames vs. the base rate, category accuracy per level, patch-dropout tower step time.

Writes ``OUT/results.json`` and the Markdown report (``--doc``, default ``OUT/ablation.md``).
Trained runs are kept in ``OUT/runs/<row>``; a rerun reuses one whose config is unchanged.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ml.evaluation.benchmark import VARIANTS, BenchmarkConfig, machine_description
from ml.serving.caption_branch import caption_scores
from ml.serving.category import CategoryConfig, CategoryHead, category_accuracy, category_boost, category_filter, \
    category_labels
from ml.serving.frame_sampling import frame_ensemble_embeddings, shuffle_frames
from ml.evaluation.metrics import RECALL_AT, score_metrics, similarity
from ml.serving.rerank import MultiGrainedHead, ProductFine, RerankConfig, Reranker, VideoFine, products_fine_of, \
    rerank_latency_ms, rerank_scores, score_top_candidates, videos_fine_of
from ml.serving.salient import SalientConfig, filter_feature_set, kept_kind_share
from ml.serving.text_query import embed_queries
from ml.serving.towers import embed_products, embed_videos
from ml.training.data import FeatureSet
from ml.training.heads import TextQueryConfig, fit_category_head, fit_rerank_head, fit_salient_selector, \
    fit_text_query_head, short_query
from ml.training.second_stage import best_on_grid, direction_metrics, t2v_metrics, t2v_score
from ml.training.train_instance import TrainConfig, load_checkpoint, train_once

SPLITS = ("train", "val", "test")
QUERY_KINDS = {"text": "product text", "short": "short query"}


@dataclass
class AblationConfig:
    bench: BenchmarkConfig = field(default_factory=BenchmarkConfig)  # MQMC hyperparameters, as the benchmark's
    base: str = "mqmc"  # the benchmark row (ml.evaluation.benchmark.VARIANTS) every stage-1 row changes in one respect
    salient: SalientConfig = SalientConfig()
    prototypes: int = 3
    sparse_frames: int = 2  # ClipBERT: frames per video per training step
    rerank: RerankConfig = RerankConfig()
    rerank_n: tuple[int, ...] = (50, 200)
    patch_dropout: float = 0.5  # 0 skips the patch-dropout tower row
    timing_steps: int = 30  # tower steps timed with and without patch dropout
    category: CategoryConfig = CategoryConfig()
    text_query: TextQueryConfig = TextQueryConfig()
    boost_grid: tuple[float, ...] = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2)
    filter_grid: tuple[int, ...] = (1, 2, 3, 5, 10)
    caption_grid: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
    # The product's default (ml.training.build, matching.services): a stage-1 row and second-stage parts in order.
    # Re-ranking first: in the product its candidates are the vector index's top N of stage 1.
    default_stage: str = "mean"
    default_parts: tuple[str, ...] = ("rerank-photo", "caption", "category-boost")
    default_rerank_n: int = 50


# ---- inputs --------------------------------------------------------------------------------------

@dataclass
class Split:
    """One split's features plus what the parts need besides them."""

    data: FeatureSet
    words: torch.Tensor  # product text tokens [Np, L, D] float16
    word_mask: torch.Tensor
    queries: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # kind -> (features, tokens, mask), per product
    frame_kinds: list[list[str]]  # per video, per sampled frame
    has_caption: torch.Tensor  # [Nv] bool
    labels: torch.Tensor  # [Np, 3] (upper, middle, lower)

    def videos_fine(self) -> VideoFine:
        return videos_fine_of(self.data)

    def products_fine(self, photos: bool = True) -> ProductFine:
        return products_fine_of(self.data, self.words, self.word_mask, photos)

    def query_fine(self, kind: str) -> ProductFine:
        feats, tokens, mask = self.queries[kind]
        return ProductFine(tokens, mask, feats)


def split_extras(encoder, manifest, split: str, data: FeatureSet, frames_per_video: int) -> dict:
    from ml.training.dataset import sampled_frame_kinds
    from ml.serving.texts import product_text

    products = [manifest.product(sku) for sku in data.product_ids]
    videos = {v.key: v for v in manifest.videos_in(split)}
    texts = [product_text(p.title, p.description) for p in products]
    shorts = [short_query(p) for p in products]
    words, word_mask = encoder.encode_text_tokens(texts)
    short_words, short_mask = encoder.encode_text_tokens(shorts)
    return {
        "words": words, "word_mask": word_mask,
        "queries": {"text": (data.product_text, words, word_mask),
                    "short": (encoder.encode_texts(shorts), short_words, short_mask)},
        "short_texts": shorts,
        "frame_kinds": [sampled_frame_kinds(videos[k], frames_per_video) for k in data.video_ids],
        "has_caption": torch.tensor([bool(videos[k].caption.strip()) for k in data.video_ids]),
        "labels": category_labels([p.category_path for p in products]),
    }


def load_splits(args, progress: bool) -> tuple[dict[str, Split], object, dict]:
    """The benchmark's features (cached) and the extras of every split (cached next to the report)."""
    from ml.datagen import load_manifest
    from ml.training.prepare import FeatureRecipe, features_key, prepare_features

    manifest = load_manifest(args.data)
    recipe = FeatureRecipe(encoder=args.encoder, tower_steps=args.tower_steps, tower_batch=args.tower_batch,
                           frames_per_video=args.frames_per_video, seed=args.seed)
    cache = Path(args.cache) if args.cache else Path(args.data) / ".features"
    prepared = prepare_features(manifest, list(SPLITS), recipe, cache_dir=cache, progress=progress)
    extras_path = Path(args.out) / f"extras-{features_key(manifest, recipe, SPLITS)}.pt"
    if extras_path.exists():
        extras = torch.load(extras_path, weights_only=True)
    else:
        extras = {s: split_extras(prepared.encoder, manifest, s, prepared.features[s], recipe.frames_per_video)
                  for s in SPLITS}
        extras_path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(extras, extras_path)
    splits = {s: Split(prepared.features[s], **{k: v for k, v in extras[s].items() if k != "short_texts"})
              for s in SPLITS}
    gen = manifest.generator
    setup = {
        "data": [f"Dataset `{args.data}`: size `{gen['size']}`, seed {gen['seed']}, caption difficulty "
                 f"{gen['caption_difficulty']}, visual difficulty {gen['visual_difficulty']}."]
        + [f"{s}: {info['products']} products, {info['videos']} videos; chance R@1 {100 * info['chance_r1']:.3f} %"
           for s, info in manifest.splits.items()]
        + [f"Features: `{recipe.encoder}`, tower {recipe.tower_steps} steps x {recipe.tower_batch}, "
           f"{recipe.frames_per_video} frames per video" + (" (feature cache)" if prepared.cached else "") + ".",
           "Short queries look like: " + "; ".join(f"`{q}`" for q in extras["test"]["short_texts"][:4]) + "."],
        "feature_timings": prepared.timings,
    }
    return splits, (manifest, recipe, cache, prepared.encoder), setup


# ---- evaluation helpers --------------------------------------------------------------------------

@dataclass
class StageOne:
    """A stage-1 model's unit embeddings per split and its text-query head's query vectors."""

    videos: dict[str, np.ndarray]
    products: dict[str, np.ndarray]
    queries: dict[str, dict[str, np.ndarray]]  # split -> query kind -> [Np, D]

    def scores(self, split: str) -> torch.Tensor:
        return similarity(torch.from_numpy(self.videos[split]), torch.from_numpy(self.products[split]))

    def text_scores(self, split: str, kind: str) -> torch.Tensor:
        return similarity(torch.from_numpy(self.videos[split]), torch.from_numpy(self.queries[split][kind]))


TARGET_GROUPS = {"video": ("v2p", "p2v"), **{k: (f"t2v-{k}",) for k in QUERY_KINDS}}


@dataclass
class Part:
    """A second-stage part: ``apply(scores, prepare(scores, split, target), param) -> scores`` for a
    [videos, products or text queries] score matrix; ``param`` is tuned on validation over ``grid``.
    Targets: "v2p", "p2v", "t2v-<query kind>"; ``text``: the part also serves text queries."""

    name: str
    grid: list | tuple
    prepare: Callable[[torch.Tensor, str, str], object]
    apply: Callable[[torch.Tensor, object, object], torch.Tensor]
    text: bool = False


# ---- the run -------------------------------------------------------------------------------------

class Ablation:
    def __init__(self, cfg: AblationConfig, splits: dict[str, Split], out: Path, progress: bool):
        self.cfg, self.splits, self.out, self.progress = cfg, splits, out, progress
        self.rows: dict[str, dict] = {}
        self.diagnostics: dict = {}
        self.heads: dict[str, torch.nn.Module] = {}
        self.stages: dict[str, StageOne] = {}

    # -- stage 1 --
    def train_config(self, **changes) -> TrainConfig:
        base = self.cfg.bench.train_config(VARIANTS[self.cfg.base], self.splits["train"].data)
        instance = replace(base.instance, **changes.pop("instance", {}))
        return replace(base, instance=instance, progress=self.progress, **changes)

    def fit(self, name: str, cfg: TrainConfig, data: dict[str, FeatureSet]):
        """Train (or reuse an identical finished run) and return (best model, training seconds)."""
        run = self.out / "runs" / name
        _, seconds = train_once(cfg, data["train"], data["val"], run)
        model, _ = load_checkpoint(run / "best.pt")
        return model, seconds

    def stage_one(self, model, data: dict[str, FeatureSet], ensemble: bool) -> StageOne:
        def videos(d: FeatureSet) -> np.ndarray:
            if ensemble:
                return frame_ensemble_embeddings(model, d.video_frames, d.video_caption, d.video_frame_mask)
            return embed_videos(model, d.video_frames, d.video_caption, d.video_frame_mask)

        emb_v = {s: videos(data[s]) for s in SPLITS}
        emb_p = {s: embed_products(model, data[s].product_images, data[s].product_text, data[s].product_image_mask)
                 for s in SPLITS}
        train_split = self.splits["train"]
        n = train_split.data.num_products
        query_text = torch.cat([train_split.queries[k][0] for k in QUERY_KINDS])
        head, _ = fit_text_query_head(query_text, torch.arange(n).repeat(len(QUERY_KINDS)), emb_v["train"],
                                      train_split.data.video_product, emb_p["train"], self.cfg.text_query)
        queries = {s: {k: embed_queries(head, self.splits[s].queries[k][0]) for k in QUERY_KINDS} for s in SPLITS}
        return StageOne(emb_v, emb_p, queries)

    def model_row(self, name: str, label: str, cfg: TrainConfig, data: dict[str, FeatureSet] | None = None,
                  ensemble: bool = False, extra_train_s: float = 0.0) -> StageOne:
        data = data or {s: self.splits[s].data for s in SPLITS}
        model, train_s = self.fit(name, cfg, data)
        stage = self.stage_one(model, data, ensemble)
        test = data["test"]
        scores = stage.scores("test")
        row = {"label": label, "metrics": score_metrics(scores, test.video_product),
               "t2v": {k: t2v_metrics(stage.text_scores("test", k), test.video_product) for k in QUERY_KINDS},
               "train_s": train_s + extra_train_s}
        frames, mask = shuffle_frames(test.video_frames, test.video_frame_mask, seed=0)
        shuffled = replace(test, video_frames=frames, video_frame_mask=mask)
        shuffled_videos = (frame_ensemble_embeddings(model, frames, test.video_caption, mask) if ensemble
                           else embed_videos(model, frames, test.video_caption, mask))
        row["shuffled"] = score_metrics(similarity(torch.from_numpy(shuffled_videos),
                                                   torch.from_numpy(stage.products["test"])), shuffled.video_product)
        self.rows[name] = row
        self.stages[name] = stage
        self.save()
        return stage

    # -- second stage: parts acting on a stage-1 model's score matrices --
    def second_stage(self, stage: StageOne, parts: list[Part]) -> dict:
        """Apply ``parts`` in order to the stage-1 scores, each part's parameter tuned on validation
        given the parts before it (video targets: mean R@K of both directions; text targets: their own).
        Returns the row fields: test metrics, text->video metrics, tuned parameters."""
        mats = {split: {"v2p": stage.scores(split), "p2v": stage.scores(split),
                        **{f"t2v-{k}": stage.text_scores(split, k) for k in QUERY_KINDS}} for split in ("val", "test")}
        tuned = {}
        for part in parts:
            for group, targets in TARGET_GROUPS.items():
                if group != "video" and not part.text:
                    continue
                ctx = {split: {t: part.prepare(mats[split][t], split, t) for t in targets} for split in mats}

                def on_val(param) -> float:
                    return float(np.mean([self.target_score(t, part.apply(mats["val"][t], ctx["val"][t], param), "val")
                                          for t in targets]))

                best, _ = best_on_grid(part.grid, on_val)
                for split in mats:
                    for t in targets:
                        mats[split][t] = part.apply(mats[split][t], ctx[split][t], best)
                tuned[part.name if group == "video" else f"{part.name} ({QUERY_KINDS[group]})"] = best
        test = self.splits["test"].data.video_product
        out = {"metrics": direction_metrics(mats["test"]["v2p"], mats["test"]["p2v"], test), "tuned": tuned}
        if any(p.text for p in parts):
            out["t2v"] = {k: t2v_metrics(mats["test"][f"t2v-{k}"], test) for k in QUERY_KINDS}
        return out

    def target_score(self, target: str, scores: torch.Tensor, split: str) -> float:
        video_product = self.splits[split].data.video_product
        if target.startswith("t2v"):
            return t2v_score(scores, video_product)
        metrics = score_metrics(scores, video_product)
        return float(np.mean([metrics[f"{target}_R@{k}"] for k in RECALL_AT]))

    def caption_part(self) -> Part:
        def prepare(scores, split: str, target: str):
            s = self.splits[split]
            text = s.data.product_text if target in ("v2p", "p2v") else s.queries[target[4:]][0]
            return caption_scores(s.data.video_caption, text, s.has_caption)

        return Part("caption weight", self.cfg.caption_grid, prepare, lambda m, ctx, w: m + w * ctx, text=True)

    def rerank_part(self, head: MultiGrainedHead, n: int) -> Part:
        def prepare(scores, split: str, target: str):
            s = self.splits[split]
            if target == "v2p":
                return score_top_candidates(scores, head, s.videos_fine(), s.products_fine(head.cfg.photos), n, "video")
            queries = s.products_fine(head.cfg.photos) if target == "p2v" else s.query_fine(target[4:])
            return score_top_candidates(scores, head, s.videos_fine(), queries, n, "product")

        return Part("re-rank weight", self.cfg.rerank.weight_grid, prepare, rerank_scores, text=True)

    def category_parts(self, head: CategoryHead) -> tuple[Part, Part]:
        levels = {"middle": 1, "lower": 2}
        with torch.no_grad():
            log_probs = {split: head.level_log_probs(self.splits[split].data.video_frames,
                                                     self.splits[split].data.video_frame_mask,
                                                     self.splits[split].data.video_caption) for split in ("val", "test")}

        def prepare(scores, split: str, target: str):
            return split

        def boost(scores, split: str, param):
            level, w = param
            return category_boost(scores, log_probs[split][level], self.splits[split].labels[:, levels[level]], w)

        def keep_top(scores, split: str, param):
            level, k = param
            return category_filter(scores, log_probs[split][level], self.splits[split].labels[:, levels[level]], k)

        return (Part("category boost (level, weight)", [(lv, w) for lv in levels for w in self.cfg.boost_grid],
                     prepare, boost),
                Part("category filter (level, top-k)", [(lv, k) for lv in levels for k in self.cfg.filter_grid],
                     prepare, keep_top))

    def second_stage_rows(self, base: StageOne) -> None:
        tr, test = self.splits["train"], self.splits["test"]
        self.rows["caption"] = {"label": "+ caption branch (Cap4Video query-caption matching)", "train_s": 0.0,
                                **self.second_stage(base, [self.caption_part()])}
        self.save()
        for photos in (False, True):
            cfg = replace(self.cfg.rerank, photos=photos)
            head, seconds = fit_rerank_head(tr.videos_fine(), tr.products_fine(photos), tr.data.video_product, cfg)
            self.heads[f"rerank-{'photo' if photos else 'text'}"] = head
            grains = "text + photo grains" if photos else "text grains"
            for n in self.cfg.rerank_n:
                row = self.second_stage(base, [self.rerank_part(head, n)])
                reranker = Reranker(head, row["tuned"]["re-rank weight"], n)
                latency = rerank_latency_ms(reranker, test.videos_fine(), test.products_fine(photos), n)
                self.rows[f"rerank-{'photo' if photos else 'text'}-{n}"] = {
                    "label": f"+ multi-grained re-ranking (X-CLIP AOSM, {grains}), top {n}", "train_s": seconds,
                    "latency_ms": {n: latency}, **row}
                self.save()
        lower = tr.labels[tr.data.video_product, 2]
        head, seconds = fit_category_head(tr.data.video_frames, tr.data.video_frame_mask, tr.data.video_caption, lower,
                                          self.cfg.category)
        self.heads["category"] = head
        self.diagnostics["category_accuracy"] = category_accuracy(
            head, test.data.video_frames, test.data.video_frame_mask, test.data.video_caption,
            test.labels[test.data.video_product])
        for name, part in zip(("category-boost", "category-filter"), self.category_parts(head)):
            self.rows[name] = {"label": f"+ {part.name.split(' (')[0]} (category predicted from frames + caption)",
                               "train_s": seconds, **self.second_stage(base, [part])}
        self.save()

    def salient_row(self) -> None:
        tr = self.splits["train"].data
        selector, seconds = fit_salient_selector(tr.video_frames, tr.video_frame_mask, tr.product_text[tr.video_product],
                                                 self.cfg.salient)
        data = {s: filter_feature_set(selector, self.splits[s].data) for s in SPLITS}
        test = self.splits["test"]
        share = {"learned scorer": kept_kind_share(data["test"].video_frame_mask, test.frame_kinds)}
        with_caption = replace(selector.cfg, caption_weight=1.0)
        selector.cfg = with_caption
        share["learned scorer + caption"] = kept_kind_share(filter_feature_set(selector, test.data).video_frame_mask,
                                                            test.frame_kinds)
        selector.cfg = replace(with_caption, caption_weight=0.0)
        # The language-guided teacher itself, which needs the product text (training only).
        t = test.data
        teacher = (torch.nn.functional.normalize(t.video_frames, dim=-1)
                   @ t.product_text[t.video_product].unsqueeze(-1)).squeeze(-1).masked_fill(~t.video_frame_mask, -1e4)
        kept = torch.zeros_like(teacher, dtype=torch.bool).scatter_(1, teacher.topk(self.cfg.salient.keep, 1).indices,
                                                                    True)
        share["teacher: cos with the paired product text (not available at indexing)"] = kept_kind_share(
            kept & t.video_frame_mask, test.frame_kinds)
        self.diagnostics["salient"] = {"keep": self.cfg.salient.keep, "share": share, "fit_s": seconds}
        self.model_row("salient", f"MQMC, salient frames only (LGDN, keep {self.cfg.salient.keep}, learned scorer)",
                       self.train_config(), data, extra_train_s=seconds)

    def patch_dropout_row(self, context) -> None:
        manifest, recipe, cache, _ = context
        ratio = self.cfg.patch_dropout
        features, timing = patch_dropout_features(manifest, recipe, ratio, cache, self.cfg.timing_steps, self.progress)
        self.diagnostics["patch_dropout"] = timing
        self.model_row("patch-dropout", f"MQMC on features of an image tower trained with {int(100 * ratio)} % "
                       "patch dropout (MAC/SMAUG-style masking)", self.train_config(), features,
                       extra_train_s=timing["tower_s"])
        self.rows["patch-dropout"]["train_note"] = "incl. tower"

    def run(self, context) -> None:
        c = self.cfg
        base = self.model_row("mean", "MQMC, mean pooling (CLIP4Clip meanP; the issue-3 model)", self.train_config())
        self.model_row("seq_transformer", "MQMC, seqTransf pooling (CLIP4Clip)",
                       self.train_config(instance={"frame_pooling": "seq_transformer"}))
        self.model_row("hierarchical", "MQMC, hierarchical pooling (HCMI-style frames -> clips -> video)",
                       self.train_config(instance={"frame_pooling": "hierarchical"}))
        self.salient_row()
        self.model_row("prototypes", f"MQMC, {c.prototypes} visual prototypes per video (max match, diversity term)",
                       self.train_config(instance={"video_prototypes": c.prototypes, "feature_shortcut": False}))
        self.model_row("single-frame", "MQMC, single-frame training + frame ensemble (Singularity)",
                       self.train_config(train_frames=1), ensemble=True)
        self.model_row("sparse", f"MQMC, sparse sampling: {c.sparse_frames} random frames per step (ClipBERT)",
                       self.train_config(train_frames=c.sparse_frames))
        if c.patch_dropout:
            self.patch_dropout_row(context)
        self.second_stage_rows(base)
        self.default_row()
        self.save()

    def default_row(self) -> None:
        c = self.cfg
        boost, _ = self.category_parts(self.heads["category"])
        parts = {"caption": self.caption_part(), "category-boost": boost,
                 "rerank-photo": self.rerank_part(self.heads["rerank-photo"], c.default_rerank_n),
                 "rerank-text": self.rerank_part(self.heads["rerank-text"], c.default_rerank_n)}
        names = {"caption": "caption branch", "category-boost": "category boost",
                 "rerank-photo": f"re-rank top {c.default_rerank_n} (text + photo grains)",
                 "rerank-text": f"re-rank top {c.default_rerank_n} (text grains)"}
        chosen = [parts[p] for p in c.default_parts]
        self.rows["default"] = {
            "label": f"**product default**: {self.rows[c.default_stage]['label']} + "
                     + " + ".join(names[p] for p in c.default_parts),
            "train_s": self.rows[c.default_stage]["train_s"], **self.second_stage(self.stages[c.default_stage], chosen)}

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "results.json").write_text(json.dumps({"rows": self.rows, "diagnostics": self.diagnostics},
                                                          indent=1, default=float))


def patch_dropout_features(manifest, recipe, ratio: float, cache: Path, timing_steps: int, progress: bool):
    """Features from an image tower trained with patch dropout (cached like ml.training.prepare's), and the
    tower's step time with and without it (same batches, same process)."""
    from ml.training.dataset import manifest_features
    from ml.training.prepare import decode_cached, encoder_image_size, features_key, tower_pairs
    from ml.training.train_tower import train_tower

    folder = cache / f"{features_key(manifest, recipe, SPLITS)}-patch-dropout-{ratio:g}"
    if (folder / "done.json").exists():
        info = json.loads((folder / "done.json").read_text())
        return {s: FeatureSet.load(folder / f"{s}.pt") for s in SPLITS}, info
    size = encoder_image_size(recipe.encoder)
    frames = decode_cached(manifest, [v for s in SPLITS for v in manifest.videos_in(s)], recipe.frames_per_video,
                           size, cache, progress)
    timing = {}
    for label, r in (("step_s_without", 0.0), ("step_s_with", ratio)):
        source, _ = tower_pairs(manifest, frames, recipe.frames_per_video, size, recipe.seed)
        timed = train_tower(recipe.encoder, source, steps=timing_steps, batch_size=recipe.tower_batch,
                            seed=recipe.seed, progress=False, patch_dropout=r)
        timing[label] = timed.seconds / timing_steps
    source, _ = tower_pairs(manifest, frames, recipe.frames_per_video, size, recipe.seed)
    tower = train_tower(recipe.encoder, source, steps=recipe.tower_steps, batch_size=recipe.tower_batch,
                        seed=recipe.seed, progress=progress, patch_dropout=ratio)
    timing |= {"ratio": ratio, "tower_s": tower.seconds, "tower_steps": recipe.tower_steps,
               "final_loss": tower.loss_history[-1]}
    features = {s: manifest_features(tower.encoder, manifest, s, frames, progress=progress) for s in SPLITS}
    folder.mkdir(parents=True, exist_ok=True)
    for s, d in features.items():
        d.save(folder / f"{s}.pt")
    tower.encoder.save(folder / "encoder.pt")
    (folder / "done.json").write_text(json.dumps(timing))
    return features, timing


# ---- report --------------------------------------------------------------------------------------

def _f(x, fmt=".1f") -> str:
    return "–" if x is None else format(x, fmt)


def render(results: dict, setup: dict, cfg: AblationConfig) -> str:
    rows, diag = results["rows"], results["diagnostics"]
    k = RECALL_AT
    head1 = (["part"] + [f"v→p R@{i}" for i in k] + ["v→p MdR"] + [f"p→v R@{i}" for i in k] + ["p→v MdR"]
             + [f"t→v ({QUERY_KINDS['text']}) R@{i}" for i in k] + [f"t→v ({QUERY_KINDS['short']}) R@{i}" for i in k])
    lines = ["| " + " | ".join(head1) + " |", "|" + "---|" * len(head1)]
    for row in rows.values():
        m, t2v = row["metrics"], row.get("t2v", {})
        cells = [row["label"]]
        for d in ("v2p", "p2v"):
            cells += [_f(m[f"{d}_R@{i}"]) for i in k] + [_f(m[f"{d}_MdR"], "g")]
        for kind in QUERY_KINDS:
            cells += [_f(t2v[kind][f"R@{i}"]) if kind in t2v else "–" for i in k]
        lines.append("| " + " | ".join(cells) + " |")
    table1 = "\n".join(lines)

    head2 = ["part", "training s", "re-rank ms/query N=50", "re-rank ms/query N=200",
             "shuffled v→p R@1 (Δ)", "shuffled p→v R@1 (Δ)", "tuned on val"]
    lines = ["| " + " | ".join(head2) + " |", "|" + "---|" * len(head2)]
    for name, row in rows.items():
        lat = row.get("latency_ms", {})
        shuffle = []
        for d in ("v2p", "p2v"):
            if "shuffled" in row:
                s, m = row["shuffled"][f"{d}_R@1"], row["metrics"][f"{d}_R@1"]
                shuffle.append(f"{s:.1f} ({s - m:+.1f})")
            else:
                shuffle.append("–")
        train_s = f"{row['train_s']:.0f}" + (f" ({row['train_note']})" if row.get("train_note") else "")
        tuned = ", ".join(f"{a}: {b:g}" if isinstance(b, (int, float)) else f"{a}: {b}"
                          for a, b in row.get("tuned", {}).items())
        lines.append("| " + " | ".join([row["label"], train_s, _f(lat.get(50, lat.get("50")), ".2f"),
                                        _f(lat.get(200, lat.get("200")), ".2f"), *shuffle, tuned or "–"]) + " |")
    table2 = "\n".join(lines)

    sections = []
    if "salient" in diag:
        s = diag["salient"]
        body = "\n".join(f"| {name} | {v['kept_share']:.1f} | {v['base_rate']:.1f} | {v['videos_without_kind_kept']:.1f} |"
                         for name, v in s["share"].items())
        sections.append(f"""### Salient frames (test split, keep {s['keep']} of the sampled frames)

| scorer | product frames among kept, % | product frames among all (base rate), % | videos with no product frame kept, % |
|---|---|---|---|
{body}""")
    if "category_accuracy" in diag:
        a = diag["category_accuracy"]
        sections.append(f"""### Category prediction from frames + caption (test videos, top-1 accuracy %)

| upper (6) | middle (30) | lower (312) |
|---|---|---|
| {a['upper']:.1f} | {a['middle']:.1f} | {a['lower']:.1f} |""")
    if "patch_dropout" in diag:
        p = diag["patch_dropout"]
        saving = 100 * (1 - p["step_s_with"] / p["step_s_without"])
        sections.append(f"""### Patch dropout in image-tower training

{int(100 * p['ratio'])} % of the patches dropped: {1000 * p['step_s_with']:.0f} ms per step against
{1000 * p['step_s_without']:.0f} ms without ({saving:.0f} % less; {cfg.timing_steps} steps each, batch
{setup.get('tower_batch', '')}, same process). The full tower run with it took {p['tower_s']:.0f} s for
{p['tower_steps']} steps.""")
    data_lines = "\n".join(f"- {line}" for line in setup["data"])
    b = cfg.bench
    return f"""# Video-text retrieval parts: ablation (issue 4)

Command: `{setup['command']}`

Machine: {setup['machine']}

{data_lines}

Every stage-1 row is the benchmark's row "{VARIANTS[cfg.base].label}" (prototypes: without the
feature shortcut, which they do not combine with) with its settings (`ml.evaluation.benchmark`: Adam lr {b.lr}, batch
{b.batch_size}, {b.epochs} epochs, K = {b.queue_size} keys per queue, seed {b.seed}), best validation epoch,
changed in one respect. "+" rows act on the scores of the first row (mean pooling); the product-default
row acts on the scores of its own stage-1 row, in the order the product applies its parts (`ml.training.build`,
`matching.services`). Weights were tuned on the validation split. Test split = the whole gallery. R@K in %, MdR = median rank.
Text queries: one per test product, ranked against all test videos, through a text-query head
trained on the train split against each row's own embeddings (`ml.serving.text_query`).

## Retrieval

{table1}

## Cost and order reliance

Training seconds: the row's own training (stage-1 rows: MQMC; "+" rows: their head only). Re-ranking
latency: one video query, N candidates, features in memory, median over 30 queries (torch threads as on
the Machine line).
Shuffling test (HiTeA): R@1 with every test video's frames in random order, and the change.

{table2}

## Diagnostics

{chr(10).join(s + chr(10) for s in sections)}
{SWITCHES}"""


SWITCHES = """## The parts as configuration

| part | switch | module |
|---|---|---|
| frame pooling | `InstanceConfig(frame_pooling="mean" or "seq_transformer" or "hierarchical")` | `ml.serving.pooling` (registry: `register_pooling`, `create_pooling`) |
| visual prototypes | `InstanceConfig(video_prototypes=K)`, `LossConfig(diversity=...)`; index K vectors per video | `ml.training.prototypes` |
| single-frame / sparse training | `TrainConfig(train_frames=1 or k)`; frame ensemble: `frame_ensemble_embeddings` | `ml.serving.frame_sampling` |
| salient frames | `fit_salient_selector(...)`, `SalientConfig(keep, caption_weight)`; `selector.select(frames, mask, caption)` -> kept-frame mask | `ml.serving.salient`, fitting: `ml.training.heads` |
| patch dropout | `train_tower(..., patch_dropout=0.5)` | `ml.training.train_tower` |
| product default | `ml.training.build` flags `--salient-frames`, `--rerank-top-n`, `--category-head`; serving: `MVMATCH_RERANK_TOP_N` (0 = index order) | `ml.serving.two_stage`, fitting and weights: `ml.training.second_stage` |
| re-ranking | `Reranker(head, weight, top_n).rerank(query, candidates, first_stage)`; store `prepare_videos` / `prepare_products` outputs (float16); word features from `Encoder.encode_text_tokens` | `ml.serving.rerank`, fitting: `ml.training.heads` |
| caption branch | `score + weight * caption_scores(video_caption, query_text, has_caption)` | `ml.serving.caption_branch` |
| category | `fit_category_head`, `head.level_log_probs(...)`, `category_boost` / `category_filter` | `ml.serving.category`, fitting: `ml.training.heads` |
| text queries | `fit_text_query_head`, `embed_queries(head, encoder.encode_texts([query]))` -> a vector for the same index | `ml.serving.text_query`, fitting: `ml.training.heads` |
| shuffling test | `shuffle_frames(frames, mask)` | `ml.serving.frame_sampling` |
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="generated dataset folder (python -m ml.datagen)")
    parser.add_argument("--out", required=True, help="results folder")
    parser.add_argument("--doc", help="write the Markdown report here too (e.g. docs/ablation.md)")
    defaults = BenchmarkConfig()
    for key in ("epochs", "batch_size", "lr", "queue_size", "seed"):
        parser.add_argument(f"--{key.replace('_', '-')}", type=type(getattr(defaults, key)), default=getattr(defaults, key))
    parser.add_argument("--base", default=AblationConfig.base, choices=[k for k, v in VARIANTS.items() if v.method == "mqmc"],
                        help="benchmark row the stage-1 rows start from")
    parser.add_argument("--encoder", default="mv-tiny-vit-minilm")
    parser.add_argument("--tower-steps", type=int, default=400)
    parser.add_argument("--tower-batch", type=int, default=64)
    parser.add_argument("--frames-per-video", type=int, default=8)
    parser.add_argument("--cache", help="feature cache folder (default DATA/.features, shared with ml.evaluation.benchmark)")
    parser.add_argument("--patch-dropout", type=float, default=AblationConfig.patch_dropout)
    parser.add_argument("--rerank-epochs", type=int, default=RerankConfig.epochs)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    progress = not args.no_progress
    started = time.perf_counter()
    splits, context, setup = load_splits(args, progress)
    bench = BenchmarkConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, queue_size=args.queue_size,
                            seed=args.seed, progress=progress)
    cfg = AblationConfig(bench=bench, base=args.base, patch_dropout=args.patch_dropout,
                         rerank=replace(RerankConfig(), epochs=args.rerank_epochs))
    out = Path(args.out)
    ablation = Ablation(cfg, splits, out, progress)
    ablation.run(context)
    setup |= {"command": "python -m ml.evaluation.ablation " + shlex.join(sys.argv[1:] if argv is None else argv),
              "machine": machine_description("cpu"), "tower_batch": args.tower_batch,
              "total_s": time.perf_counter() - started}
    results = {"rows": ablation.rows, "diagnostics": ablation.diagnostics, "setup": setup}
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float))
    report = render(results, setup, cfg)
    (out / "ablation.md").write_text(report)
    if args.doc:
        Path(args.doc).write_text(report)
    print(report)


if __name__ == "__main__":
    main()
