"""Benchmark: every method, ablation and single-modality row trained and tested on one set of features.

    python -m ml.evaluation.benchmark --data var/bench-data --out var/bench-report [--epochs 50] [--methods infonce mqmc]
    python -m ml.evaluation.benchmark --mvs-pickle train.pkl test.pkl --trust-pickle --out var/mvs-report

Features come from a generated dataset (``python -m ml.datagen DIR --size full``) through
`ml.training.prepare` (image tower trained on the train split only; cached under ``DIR/.features``, so a
rerun skips decoding and tower training), or from the paper's MVS pickles (`ml.evaluation.mvs`).

Rows (`VARIANTS`): CLIP-style in-batch InfoNCE, single-queue MoCo, MQMC and its ablations, all
with the same towers, optimiser, batch, learning rate, epochs and seed; the model of the best
validation epoch is tested. Single-modality rows: the same instance towers trained with one
modality only (the other's features zeroed), and the encoder features themselves without any
instance training (mean-pooled frames vs mean-pooled photos; caption vs product text).
Test: the whole test split is the gallery, both directions, R@1/5/10, MdR, mean rank.

Writes ``OUT/report.md``, ``OUT/results.json``, plots (``loss.png``, ``val_recall.png``,
``upper_recall.png``) and one checkpoint folder per row under ``OUT/runs``; a rerun into the same
``OUT`` reuses every finished run whose config is unchanged, so adding a row trains only that row.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ml.evaluation.metrics import RECALL_AT, chance_metrics, retrieval_metrics, retrieval_metrics_by_group
from ml.serving.ontology import load_ontology
from ml.serving.towers import InstanceConfig, embed_products, embed_videos
from ml.training.data import FeatureSet
from ml.training.losses import LossConfig
from ml.training.mqmc import MQMCConfig
from ml.training.train_instance import TrainConfig, load_checkpoint, shortcut_instance, train_once


@dataclass(frozen=True)
class Variant:
    """One trained row of the table: a method of `ml.training.train_instance` with overrides."""

    label: str
    method: str
    loss: dict = field(default_factory=dict)  # LossConfig overrides
    mqmc: dict = field(default_factory=dict)  # MQMCConfig overrides
    modality: str = "fused"  # "visual" / "text": the other modality's features are zeroed in every split
    instance: dict = field(default_factory=dict)  # InstanceConfig overrides


VARIANTS: dict[str, Variant] = {
    "infonce": Variant("CLIP-style in-batch InfoNCE", "infonce"),
    "moco": Variant("MoCo, one queue, no weighting", "moco"),
    "mqmc": Variant("MQMC", "mqmc"),
    "mqmc-no-weighting": Variant("MQMC without ontology weighting", "mqmc", mqmc={"reweight_negatives": False}),
    "mqmc-beta0": Variant("MQMC, beta = 0 (no cross-modal consistency)", "mqmc", loss={"beta": 0.0}),
    "mqmc-gamma0": Variant("MQMC, gamma = 0 (no intra-instance consistency)", "mqmc", loss={"gamma": 0.0}),
    "mqmc-shortcut": Variant("MQMC + feature shortcut (towers start at the encoder features' similarity)", "mqmc",
                             instance={"feature_shortcut": True}),
    "infonce-shortcut": Variant("CLIP-style in-batch InfoNCE + feature shortcut", "infonce",
                                instance={"feature_shortcut": True}),
    "moco-shortcut": Variant("MoCo, one queue, no weighting + feature shortcut", "moco",
                             instance={"feature_shortcut": True}),
    # One modality: the consistency terms contrast visual with text, so they are off.
    "text-only": Variant("text only: caption vs product text (InfoNCE towers)", "infonce",
                         loss={"beta": 0.0, "gamma": 0.0}, modality="text"),
    "visual-only": Variant("visual only: frames vs photos (InfoNCE towers)", "infonce",
                           loss={"beta": 0.0, "gamma": 0.0}, modality="visual"),
}
# Rows without instance training: cosine similarity of the encoder features, mean-pooled over frames / photos.
FEATURE_ROWS = {
    "text-features": ("text only: encoder features, caption vs product text (no instance training)", "text"),
    "visual-features": ("visual only: encoder features, mean frame vs mean photo (no instance training)", "visual"),
    "fused-features": ("both: encoder features, mean of the visual and text cosines (no instance training)", "fused"),
}


@dataclass
class BenchmarkConfig:
    methods: tuple[str, ...] = tuple(VARIANTS)
    preset: str = "mvmatch-clip256"  # InstanceConfig preset; visual/text widths always follow the features
    epochs: int = 50
    batch_size: int = 256
    lr: float = 1e-4
    weight_decay: float = 0.0
    alpha: float = LossConfig.alpha
    beta: float = LossConfig.beta
    gamma: float = LossConfig.gamma
    temperature: float = LossConfig.temperature
    queue_size: int = MQMCConfig.queue_size
    momentum: float = MQMCConfig.momentum
    seed: int = 0
    device: str = "cpu"
    progress: bool = True

    def train_config(self, variant: Variant, data: FeatureSet) -> TrainConfig:
        instance = InstanceConfig.preset(self.preset, visual_dim=data.video_frames.shape[-1],
                                         text_dim=data.video_caption.shape[-1], **variant.instance)
        if instance.feature_shortcut:
            instance = shortcut_instance(instance)
        loss = replace(LossConfig(alpha=self.alpha, beta=self.beta, gamma=self.gamma, temperature=self.temperature),
                       **variant.loss)
        mqmc = replace(MQMCConfig(queue_size=self.queue_size, momentum=self.momentum), **variant.mqmc)
        return TrainConfig(method=variant.method, instance=instance, loss=loss, mqmc=mqmc, lr=self.lr,
                           weight_decay=self.weight_decay, batch_size=self.batch_size, epochs=self.epochs,
                           seed=self.seed, device=self.device, progress=self.progress)


def keep_modality(data: FeatureSet, modality: str) -> FeatureSet:
    """The features with the other modality zeroed ("fused": unchanged)."""
    if modality == "fused":
        return data
    if modality == "visual":
        return replace(data, video_caption=torch.zeros_like(data.video_caption),
                       product_text=torch.zeros_like(data.product_text))
    if modality == "text":
        return replace(data, video_frames=torch.zeros_like(data.video_frames),
                       product_images=torch.zeros_like(data.product_images))
    raise ValueError(f"modality must be fused, visual or text, got {modality!r}")


def negatives_per_query(cfg: TrainConfig, num_middle: int) -> int:
    if cfg.method == "infonce":
        return cfg.batch_size - 1
    return cfg.mqmc.queue_size * (num_middle if cfg.mqmc.multi_queue else 1)


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    w = mask.to(x.dtype).unsqueeze(-1)
    return (x * w).sum(1) / w.sum(1).clamp(min=1)


def feature_embeddings(data: FeatureSet, modality: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(video, product) embeddings of the encoder features alone: no instance towers."""
    if modality == "text":
        return data.video_caption, data.product_text
    if modality == "fused":  # what the feature shortcut (ml.serving.towers) starts from: the mean of both cosines
        parts = [feature_embeddings(data, m) for m in ("visual", "text")]
        return tuple(torch.cat([F.normalize(p[side], dim=1) for p in parts], dim=1) for side in (0, 1))
    return (_masked_mean(data.video_frames, data.video_frame_mask),
            _masked_mean(data.product_images, data.product_image_mask))


def test_metrics(videos, products, data: FeatureSet) -> dict:
    """Whole-gallery metrics, and the same per upper category (keyed by its name)."""
    uppers = load_ontology().upper
    by_upper = retrieval_metrics_by_group(videos, products, data.video_product, data.product_upper)
    return {"test": retrieval_metrics(videos, products, data.video_product),
            "test_by_upper": {uppers[g].name: m for g, m in by_upper.items()}}


def run_variant(name: str, variant: Variant, splits: dict[str, FeatureSet], cfg: BenchmarkConfig,
                out_dir: Path) -> dict:
    """Train one row, test its best validation epoch; returns its results."""
    data = {s: keep_modality(d, variant.modality) for s, d in splits.items()}
    train_cfg = cfg.train_config(variant, data["train"])
    history, train_s = train_once(train_cfg, data["train"], data["val"], out_dir)
    start = time.monotonic()
    model, _ = load_checkpoint(out_dir / "best.pt", device=cfg.device)
    test = data["test"]
    videos = embed_videos(model, test.video_frames, test.video_caption, test.video_frame_mask)
    products = embed_products(model, test.product_images, test.product_text, test.product_image_mask)
    result = test_metrics(videos, products, test)
    return {
        "name": name, "label": variant.label, "method": variant.method, "modality": variant.modality,
        "negatives": negatives_per_query(train_cfg, len(train_cfg.mqmc.middle_to_upper)),
        "config": train_cfg.to_dict(), "best_epoch": history["best_epoch"], **result,
        "step_loss": history["step_loss"],
        "val_per_epoch": [e["val"] for e in history["epochs"]],
        "train_loss_per_epoch": [e["train_loss"] for e in history["epochs"]],
        "seconds": {"train": train_s, "test": time.monotonic() - start},
    }


def run_benchmark(splits: dict[str, FeatureSet], cfg: BenchmarkConfig, out_dir: str | Path, setup: dict) -> dict:
    """Train every variant of ``cfg.methods``, test all rows, write report.md, results.json and plots."""
    unknown = [m for m in cfg.methods if m not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; available: {', '.join(VARIANTS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    test = splits["test"]
    rows = {"chance": {"name": "chance", "label": "chance (random ranking)",
                       "test": chance_metrics(test.num_products, test.num_videos)}}
    for name, (label, modality) in FEATURE_ROWS.items():
        videos, products = feature_embeddings(test, modality)
        rows[name] = {"name": name, "label": label, "modality": modality, **test_metrics(videos, products, test)}
    bar = tqdm(cfg.methods, desc="benchmark", disable=not cfg.progress)
    for name in bar:
        bar.set_postfix_str(name)
        rows[name] = run_variant(name, VARIANTS[name], splits, cfg, out / "runs" / name)
        (out / "results.json").write_text(json.dumps(_results(cfg, setup, rows), indent=1))  # partial results survive
    results = _results(cfg, setup, rows)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    write_plots(results, out)
    (out / "report.md").write_text(render_report(results))
    return results


def _results(cfg: BenchmarkConfig, setup: dict, rows: dict) -> dict:
    return {"config": asdict(cfg), "setup": setup, "rows": rows}


# ---- report -----------------------------------------------------------------------------------

def machine_description(device: str) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    text = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads"
    if device.startswith("cuda") and torch.cuda.is_available():
        text += f"; training on {torch.cuda.get_device_name(device)}"
    return text


def _fmt(metrics: dict, direction: str) -> list[str]:
    recalls = [f"{metrics[f'{direction}_R@{k}']:.1f}" for k in RECALL_AT]
    return recalls + [f"{metrics[f'{direction}_MdR']:g}", f"{metrics[f'{direction}_MnR']:.1f}"]


def results_table(rows: dict) -> str:
    head = ["row"] + [f"{d} {m}" for d in ("v→p", "p→v") for m in (*(f"R@{k}" for k in RECALL_AT), "MdR", "MnR")]
    head += ["negatives / query", "best epoch", "train s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows.values():
        extra = [str(row.get("negatives", "")), str(row.get("best_epoch", "")),
                 f"{row['seconds']['train']:.0f}" if "seconds" in row else ""]
        lines.append("| " + " | ".join([row["label"], *_fmt(row["test"], "v2p"), *_fmt(row["test"], "p2v"), *extra]) + " |")
    return "\n".join(lines)


def render_report(results: dict) -> str:
    cfg, setup, rows = results["config"], results["setup"], results["rows"]
    timings = "\n".join(f"| {k} | {v:.0f} |" for k, v in setup.get("timings", {}).items())
    timings += "".join(f"\n| train + test {r['name']} | {r['seconds']['train'] + r['seconds']['test']:.0f} |"
                       for r in rows.values() if "seconds" in r)
    data_lines = "\n".join(f"- {line}" for line in setup.get("data", []))
    trained = [r for r in rows.values() if "config" in r]
    hyper = ""
    if trained:
        c = trained[0]["config"]
        hyper = (f"Instance towers: {c['instance']}. Adam, lr {cfg['lr']}, weight decay {cfg['weight_decay']}, "
                 f"batch {cfg['batch_size']}, {cfg['epochs']} epochs, seed {cfg['seed']} (the same for every row). "
                 f"Loss: alpha {cfg['alpha']}, beta {cfg['beta']}, gamma {cfg['gamma']}, temperature "
                 f"{cfg['temperature']}; queues: K = {cfg['queue_size']} keys per queue (30 queues for MQMC, one "
                 f"for MoCo), momentum {cfg['momentum']}. Model selection: best validation epoch by the mean R@K "
                 f"of both directions.")
    return f"""# Micro-video ↔ product retrieval benchmark

Command: `{setup.get('command', '')}`

Machine: {setup.get('machine', '')}

## Results (test split: the whole split is the gallery)

v→p: a video queries all test products; p→v: a product queries all test videos. R@K in %,
MdR = median rank, MnR = mean rank (1 is best).

{results_table(rows)}

Rows "… (InfoNCE towers)" train the same instance towers with in-batch InfoNCE on one modality
(the other modality's features set to zero, consistency terms off); rows "encoder features" rank
by cosine similarity of the encoder features alone, mean-pooled over frames / photos.

## Setup

{data_lines}

{hyper}

## Timings (seconds)

| stage | s |
|---|---|
{timings}

## Plots

![training loss](loss.png)

![validation R@K per epoch](val_recall.png)

![test R@K by upper category](upper_recall.png)
"""


def write_plots(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from cycler import cycler

    plt.rcParams["axes.prop_cycle"] = cycler(color=plt.get_cmap("tab20").colors)  # more rows than tab10 has colours
    trained = [r for r in results["rows"].values() if "step_loss" in r]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for r in trained:
        loss = np.asarray(r["step_loss"])
        window = max(1, len(loss) // 50)
        smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
        ax.plot(np.arange(len(smooth)) + window, smooth, label=r["name"])
    ax.set(xlabel="step", ylabel="training loss (moving average)", yscale="log", title="Training loss")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(RECALL_AT), figsize=(13, 4), sharex=True)
    for ax, k in zip(axes, RECALL_AT):
        for r in trained:
            values = [(e[f"v2p_R@{k}"] + e[f"p2v_R@{k}"]) / 2 for e in r["val_per_epoch"]]
            ax.plot(np.arange(1, len(values) + 1), values, label=r["name"])
        ax.set(xlabel="epoch", ylabel=f"R@{k} (%), mean of both directions", title=f"Validation R@{k}")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "val_recall.png", dpi=110)
    plt.close(fig)

    shown = [r for r in results["rows"].values() if "test_by_upper" in r]
    groups = [u.name for u in load_ontology().upper if any(u.name in r["test_by_upper"] for r in shown)]
    fig, axes = plt.subplots(2, 2, figsize=(14, 8), sharey="row")
    width = 0.8 / max(1, len(shown))
    for row_axes, k in zip(axes, (1, 10)):
        for ax, direction in zip(row_axes, ("v2p", "p2v")):
            for i, r in enumerate(shown):
                values = [r["test_by_upper"].get(g, {}).get(f"{direction}_R@{k}", 0.0) for g in groups]
                ax.bar(np.arange(len(groups)) + (i - (len(shown) - 1) / 2) * width, values, width, label=r["name"])
            ax.set_xticks(np.arange(len(groups)), groups)
            ax.set(ylabel=f"R@{k} (%)", title=f"Test {direction.replace('2', ' → ')} R@{k} by upper category")
    axes[0][0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "upper_recall.png", dpi=110)
    plt.close(fig)


# ---- command line ---------------------------------------------------------------------------------

def generated_splits(args) -> tuple[dict[str, FeatureSet], dict]:
    """Features of a generated dataset (cached), and what the report says about them."""
    from ml.datagen import load_manifest
    from ml.training.prepare import FeatureRecipe, prepare_features

    manifest = load_manifest(args.data)
    recipe = FeatureRecipe(encoder=args.encoder, tower_steps=args.tower_steps, tower_batch=args.tower_batch,
                           frames_per_video=args.frames_per_video, seed=args.seed)
    cache = Path(args.cache) if args.cache else Path(args.data) / ".features"
    prepared = prepare_features(manifest, ["train", "val", "test"], recipe, cache_dir=cache, device=args.device,
                                progress=not args.no_progress)
    gen = manifest.generator
    data = [f"Dataset: `{args.data}`, generated with size `{gen['size']}`, seed {gen['seed']}, caption difficulty "
            f"{gen['caption_difficulty']}, visual difficulty {gen['visual_difficulty']}."]
    data += [f"{s}: {info['products']} products, {info['videos']} videos; chance R@1 (video → product) "
             f"{100 * info['chance_r1']:.3f} %" for s, info in manifest.splits.items()]
    data.append(f"Features: `{recipe.encoder}` (tiny ViT image tower trained {recipe.tower_steps} steps x "
                f"{recipe.tower_batch} on {prepared.tower_pairs} train-split image/text pairs, locked MiniLM text "
                f"tower with a trained projection), {recipe.frames_per_video} frames per video, "
                f"{prepared.encoder.embed_dim}-d" + (" (loaded from the feature cache)" if prepared.cached else "") + ".")
    timings = {f"{'(cached) ' if prepared.cached else ''}{k}": v for k, v in prepared.timings.items()}
    return prepared.features, {"data": data, "timings": timings, "tower_loss_last": prepared.tower_loss[-1]}


def mvs_splits(args) -> tuple[dict[str, FeatureSet], dict]:
    from ml.evaluation.mvs import load_mvs_splits

    splits = load_mvs_splits(args.mvs_pickle, trust=args.trust_pickle, seed=args.seed)
    data = [f"MVS feature pickles: {', '.join(f'`{p}`' for p in args.mvs_pickle)}."]
    data += [f"{s}: {d.num_products} products, {d.num_videos} videos" for s, d in splits.items()]
    return splits, {"data": data, "timings": {}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="generated dataset folder (python -m ml.datagen)")
    source.add_argument("--mvs-pickle", nargs="+", metavar="PATH",
                        help="MVS feature pickle(s): one (split by product), train + test, or train + val + test")
    parser.add_argument("--trust-pickle", action="store_true", help="allow unpickling --mvs-pickle (runs code)")
    parser.add_argument("--out", required=True, help="report folder")
    parser.add_argument("--methods", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), metavar="METHOD",
                        help=f"rows to train (default all): {', '.join(VARIANTS)}")
    defaults = BenchmarkConfig()
    parser.add_argument("--preset", help="InstanceConfig preset (default mvmatch-clip256; mqmc-paper for --mvs-pickle)")
    for key in ("epochs", "batch_size", "lr", "weight_decay", "alpha", "beta", "gamma", "temperature", "queue_size",
                "momentum", "seed"):
        value = getattr(defaults, key)
        parser.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--encoder", default="mv-tiny-vit-minilm", help="encoder config (generated data)")
    parser.add_argument("--tower-steps", type=int, default=400)
    parser.add_argument("--tower-batch", type=int, default=64)
    parser.add_argument("--frames-per-video", type=int, default=8)
    parser.add_argument("--cache", help="feature cache folder (default DATA/.features)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from ml.evaluation.mvs import MVSFormatError, UntrustedPickleError

    start = time.monotonic()
    try:
        splits, setup = mvs_splits(args) if args.mvs_pickle else generated_splits(args)
    except (UntrustedPickleError, MVSFormatError) as e:
        parser.exit(2, f"error: {e}\n")
    setup["timings"]["features total"] = time.monotonic() - start
    setup["command"] = "python -m ml.evaluation.benchmark " + shlex.join(sys.argv[1:] if argv is None else argv)
    setup["machine"] = machine_description(args.device)
    preset = args.preset or ("mqmc-paper" if args.mvs_pickle else "mvmatch-clip256")
    cfg = BenchmarkConfig(methods=tuple(args.methods), preset=preset, device=args.device, progress=not args.no_progress,
                          **{k: getattr(args, k) for k in ("epochs", "batch_size", "lr", "weight_decay", "alpha", "beta",
                                                           "gamma", "temperature", "queue_size", "momentum", "seed")})
    results = run_benchmark(splits, cfg, args.out, setup)
    print(results_table(results["rows"]))
    print(f"report: {Path(args.out) / 'report.md'}")


if __name__ == "__main__":
    main()
