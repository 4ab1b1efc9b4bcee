"""Train the instance towers on pre-extracted features; embed videos / products for the vector index.

    python -m ml.training.train_instance --train train.pt --val val.pt --out runs/mqmc --method mqmc

Methods: "mqmc" (multi-queue momentum contrast with ontology-aware weights; ablate with
``--single-queue`` / ``--no-reweight`` / ``--beta 0`` / ``--gamma 0``), "moco" (one queue, no
weights) and "infonce" (in-batch CLIP-style contrast); all share towers and consistency terms.

``out_dir`` receives ``last.pt`` (model + optimizer + queues + epoch + RNG states: resume from it),
``best.pt`` (model of the best validation epoch, selected on the mean R@K of both directions) and
``history.json`` (loss per step, validation metrics per epoch).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ml.evaluation.metrics import retrieval_metrics
from ml.serving.frame_sampling import sparse_frames
from ml.serving.towers import InstanceConfig, InstanceTowers, embed_products, embed_videos
from ml.training.data import FeatureSet, PairBatch
from ml.training.losses import InBatchContrast, LossConfig
from ml.training.mqmc import MQMCConfig, MultiQueueMoCo, ontology_middle_to_upper

METHODS = ("infonce", "moco", "mqmc")


@dataclass
class TrainConfig:
    method: str = "mqmc"
    instance: InstanceConfig = field(default_factory=InstanceConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    mqmc: MQMCConfig = field(default_factory=MQMCConfig)  # used by "moco" and "mqmc"
    lr: float = 1e-4
    weight_decay: float = 0.0
    batch_size: int = 256
    epochs: int = 50
    seed: int = 0
    device: str = "cpu"
    eval_batch_size: int = 1024
    progress: bool = True
    # Frames per video fed to each training step, drawn at random from its valid frames in temporal
    # order: 0 = all (dense); 1 = single-frame training (Singularity); a few = sparse sampling (ClipBERT).
    train_frames: int = 0
    # Share of training videos whose caption feature is swapped for the empty caption's
    # (``train(blank_caption=...)``): the visual path has to carry the match when a caption says nothing.
    caption_dropout: float = 0.0

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.method == "moco":  # plain MoCo: one queue, every negative weighs 1
            self.mqmc = replace(self.mqmc, multi_queue=False, reweight_negatives=False)
        if self.mqmc.middle_to_upper is None:  # pin the ontology into the config: checkpoints rebuild alone
            self.mqmc = replace(self.mqmc, middle_to_upper=ontology_middle_to_upper())

    def to_dict(self) -> dict:
        return asdict(self)

    def same_run(self, saved: dict) -> bool:
        """Whether a config saved as JSON trains exactly this run (the progress display aside)."""
        mine = json.loads(json.dumps(self.to_dict()))  # tuples read back as lists
        return {k: v for k, v in mine.items() if k != "progress"} == {k: v for k, v in saved.items() if k != "progress"}

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        nested = {"instance": InstanceConfig, "loss": LossConfig, "mqmc": MQMCConfig}
        return cls(**{k: nested[k](**v) if k in nested else v for k, v in data.items()})


# Settings that may change between a run and its resumption.
RESUMABLE_CHANGES = ("epochs", "device", "eval_batch_size", "progress")


def create_model(cfg: TrainConfig) -> nn.Module:
    if cfg.instance.video_prototypes > 1:
        if cfg.method == "infonce":
            raise ValueError("visual prototypes are implemented for the momentum-contrast methods (mqmc, moco)")
        from ml.training.prototypes import PrototypeMoCo

        return PrototypeMoCo(cfg.instance, cfg.loss, cfg.mqmc)
    if cfg.method == "infonce":
        return InBatchContrast(cfg.instance, cfg.loss)
    return MultiQueueMoCo(cfg.instance, cfg.loss, cfg.mqmc)


def evaluate(model: nn.Module, data: FeatureSet, modality: str = "fused", batch_size: int = 1024) -> dict[str, float]:
    """Bidirectional R@K / MdR / MnR on the whole split (see ml.evaluation.metrics)."""
    videos = embed_videos(model, data.video_frames, data.video_caption, data.video_frame_mask, modality=modality, batch_size=batch_size)
    products = embed_products(model, data.product_images, data.product_text, data.product_image_mask, modality=modality, batch_size=batch_size)
    return retrieval_metrics(videos, products, data.video_product)


def _epoch_batches(num: int, batch_size: int, generator: torch.Generator) -> list[Tensor]:
    """Shuffled batches; the last partial batch is dropped (unless it is the only one)."""
    order = torch.randperm(num, generator=generator)
    if num <= batch_size:
        return [order]
    return list(order[: num - num % batch_size].split(batch_size))


def _rng_states(shuffle: torch.Generator) -> dict:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "shuffle": shuffle.get_state(),
    }


def _restore_rng_states(states: dict, shuffle: torch.Generator) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    shuffle.set_state(states["shuffle"])


def load_checkpoint(path: str | Path, device: str = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model of a ``best.pt`` / ``last.pt`` checkpoint (eval mode) and return it with the checkpoint."""
    ckpt = torch.load(path, map_location=device, weights_only=True)
    model = create_model(TrainConfig.from_dict(ckpt["config"])).to(device)
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt


def export_towers(model: nn.Module, cfg: TrainConfig) -> InstanceTowers:
    """The serving part of a trained model: its two towers, without key heads, queues or optimiser."""
    towers = InstanceTowers(cfg.instance)
    towers.load_state_dict({k: v for k, v in model.state_dict().items()
                            if k.split(".", 1)[0] in ("video_tower", "product_tower")})
    return towers.eval()


def train(
    cfg: TrainConfig,
    train_set: FeatureSet,
    val_set: FeatureSet | None = None,
    out_dir: str | Path | None = None,
    resume_from: str | Path | None = None,
    blank_caption: Tensor | None = None,
) -> tuple[nn.Module, dict]:
    """Train ``cfg.epochs`` epochs in total (continuing a resumed run); return (model, history).

    ``blank_caption``: the caption feature of an empty caption [Dt], needed when ``cfg.caption_dropout`` > 0.

    Resuming from ``last.pt`` with the same data and config continues bit for bit as if the run
    had not stopped: on the CPU always, on CUDA under ``torch.use_deterministic_algorithms(True)``
    (``--deterministic``); without it CUDA's atomic adds make even two fresh runs differ slightly.
    """
    if cfg.caption_dropout > 0 and blank_caption is None:
        raise ValueError("caption_dropout needs the empty caption's feature (blank_caption)")
    middle_to_upper = cfg.mqmc.middle_to_upper
    for data in (train_set, val_set):
        if data is not None:
            data.check_categories(middle_to_upper)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(cfg.seed)
    model = create_model(cfg).to(cfg.device)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)
    shuffle = torch.Generator().manual_seed(cfg.seed)
    history: dict = {"config": cfg.to_dict(), "step_loss": [], "epochs": [], "best_epoch": None, "best_score": None}
    start_epoch = 0

    if resume_from is not None:
        ckpt = torch.load(resume_from, map_location="cpu", weights_only=True)  # RNG states must stay on the CPU
        saved, wanted = dict(ckpt["config"]), cfg.to_dict()
        changed = [k for k in wanted if k not in RESUMABLE_CHANGES and saved.get(k) != wanted[k]]
        if changed:
            raise ValueError(f"cannot resume: settings differ from the checkpoint's: {', '.join(changed)}")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        _restore_rng_states(ckpt["rng"], shuffle)
        history = ckpt["history"]
        history["config"] = cfg.to_dict()
        start_epoch = ckpt["epoch"]

    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        model.train()
        epoch_losses = []
        bar = tqdm(_epoch_batches(train_set.num_videos, cfg.batch_size, shuffle), desc=f"epoch {epoch}/{cfg.epochs}",
                   disable=not cfg.progress, leave=False)
        for index in bar:
            batch = train_set.pair_batch(index)
            if cfg.caption_dropout > 0:
                batch = drop_captions(batch, cfg.caption_dropout, blank_caption)
            if cfg.train_frames:
                batch = sparse_frames(batch, cfg.train_frames)
            result = model(batch.to(cfg.device))
            optimizer.zero_grad(set_to_none=True)
            result.loss.backward()
            optimizer.step()
            epoch_losses.append(result.loss.item())
            bar.set_postfix(loss=f"{epoch_losses[-1]:.4f}")
        history["step_loss"].extend(epoch_losses)
        record = {"epoch": epoch, "train_loss": float(np.mean(epoch_losses))}
        if val_set is not None:
            record["val"] = evaluate(model, val_set, batch_size=cfg.eval_batch_size)
        history["epochs"].append(record)
        score = record["val"]["score"] if val_set is not None else -record["train_loss"]  # no val: lowest loss
        improved = history["best_score"] is None or score > history["best_score"]
        if improved:
            history["best_epoch"], history["best_score"] = epoch, score
        if out is not None:
            state = {"epoch": epoch, "config": cfg.to_dict(), "model": model.state_dict()}
            if improved:
                torch.save(state | {"metrics": record}, out / "best.pt")
            torch.save(state | {"optimizer": optimizer.state_dict(), "rng": _rng_states(shuffle), "history": history}, out / "last.pt")
            (out / "history.json").write_text(json.dumps(history, indent=1))
    return model, history


def drop_captions(batch: PairBatch, share: float, blank_caption: Tensor) -> PairBatch:
    """``batch`` with the captions of a random ``share`` of its videos replaced by ``blank_caption`` (global torch RNG: resumable)."""
    dropped = (torch.rand(len(batch)) < share).unsqueeze(1)
    return replace(batch, video_caption=torch.where(dropped, blank_caption.to(batch.video_caption), batch.video_caption))


def train_once(cfg: TrainConfig, train_set: FeatureSet, val_set: FeatureSet | None, out_dir: str | Path) -> tuple[dict, float]:
    """`train` into ``out_dir`` unless it holds a finished run of the same config; returns (history,
    training seconds of the run that made it). ``done.json`` marks a finished run."""
    out = Path(out_dir)
    done = out / "done.json"
    if done.exists() and cfg.same_run(json.loads(done.read_text())["config"]):
        return json.loads((out / "history.json").read_text()), json.loads(done.read_text())["train_s"]
    done.unlink(missing_ok=True)  # the folder is being rewritten: an interrupted run must not look finished
    start = time.monotonic()
    _, history = train(cfg, train_set, val_set, out_dir=out)
    seconds = time.monotonic() - start
    done.write_text(json.dumps({"config": cfg.to_dict(), "train_s": seconds}))
    return history, seconds


def shortcut_instance(cfg: InstanceConfig) -> InstanceConfig:
    """``cfg`` with the feature shortcut on (its contrastive space widened to visual + text)."""
    return replace(cfg, feature_shortcut=True, proj_dim=cfg.visual_dim + cfg.text_dim)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", required=True, help="FeatureSet .pt of the training split")
    parser.add_argument("--val", help="FeatureSet .pt of the validation split (model selection)")
    parser.add_argument("--out", required=True, help="output folder: last.pt, best.pt, history.json")
    parser.add_argument("--method", choices=METHODS, default="mqmc")
    parser.add_argument("--preset", default="mvmatch-clip256", help="InstanceConfig preset (mvmatch-clip256, mqmc-paper)")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--alpha", type=float, default=LossConfig.alpha)
    parser.add_argument("--beta", type=float, default=LossConfig.beta, help="0 switches cross-modal consistency off")
    parser.add_argument("--gamma", type=float, default=LossConfig.gamma, help="0 switches intra-instance consistency off")
    parser.add_argument("--temperature", type=float, default=LossConfig.temperature)
    parser.add_argument("--queue-size", type=int, default=MQMCConfig.queue_size)
    parser.add_argument("--momentum", type=float, default=MQMCConfig.momentum)
    parser.add_argument("--single-queue", action="store_true", help="one queue instead of one per middle category")
    parser.add_argument("--no-reweight", action="store_true", help="no ontology-aware negative weights")
    parser.add_argument("--feature-shortcut", action="store_true",
                        help="towers start at the encoder features' similarity (ml.serving.towers)")
    parser.add_argument("--resume", help="last.pt to continue from")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--deterministic", action="store_true", help="deterministic CUDA kernels: exact resume")
    args = parser.parse_args(argv)
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # must precede cuBLAS's start
        torch.use_deterministic_algorithms(True)

    cfg = TrainConfig(
        method=args.method,
        instance=shortcut_instance(InstanceConfig.preset(args.preset)) if args.feature_shortcut
        else InstanceConfig.preset(args.preset),
        loss=LossConfig(alpha=args.alpha, beta=args.beta, gamma=args.gamma, temperature=args.temperature),
        mqmc=MQMCConfig(queue_size=args.queue_size, momentum=args.momentum, multi_queue=not args.single_queue,
                        reweight_negatives=not args.no_reweight),
        lr=args.lr, weight_decay=args.weight_decay, batch_size=args.batch_size, epochs=args.epochs,
        seed=args.seed, device=args.device, progress=not args.no_progress,
    )
    val_set = FeatureSet.load(args.val) if args.val else None
    _, history = train(cfg, FeatureSet.load(args.train), val_set, args.out, args.resume)
    print(json.dumps({"best_epoch": history["best_epoch"], "best_score": history["best_score"],
                      "last": history["epochs"][-1]}, indent=1))


if __name__ == "__main__":
    main()
