"""Contrastive training of an `Encoder`'s image tower against its (locked) text tower.

LiT the other way round: the pretrained text transformer (MiniLM) stays frozen and the small
image tower learns to land next to the captions of its images; the text projection and the
temperature train too. Loss is CLIP's symmetric InfoNCE (open_clip's ``ClipLoss``) over the
batch; AdamW with a warm-up + cosine schedule; light augmentation on tensors.

Batches come from any source of ``(images uint8 [B, H, W, 3], texts list[str])``: a callable
``source(batch_size)`` or an iterable of batches (re-iterated if it runs out).
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from open_clip import ClipLoss
from open_clip.hf_model import HFTextEncoder
from open_clip.transformer import PatchDropout
from torch import nn
from tqdm.auto import tqdm

from ml.serving.encoders import Encoder, create_encoder

log = logging.getLogger(__name__)

Batch = tuple[np.ndarray, Sequence[str]]
BatchSource = Callable[[int], Batch] | Iterable[Batch]

MAX_LOGIT_SCALE = math.log(100)  # CLIP's cap on the learned inverse temperature


@dataclass
class TrainResult:
    encoder: Encoder
    loss_history: list[float] = field(default_factory=list)  # one value per step
    seconds: float = 0.0  # wall time of the training loop
    checkpoint: Path | None = None


@dataclass(frozen=True)
class Augmentation:
    """Random resized crop + horizontal flip (one affine resample per image) and colour jitter.

    Works on a batch of [0, 1] pixels with per-image parameters; no hue shift, since colour is
    often what a caption says.
    """

    min_scale: float = 0.5  # smallest crop area, as a fraction of the image
    max_aspect: float = 4 / 3
    flip: bool = True
    jitter: float = 0.3  # brightness / contrast / saturation factors drawn from [1 - j, 1 + j]

    def __call__(self, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n = pixels.shape[0]

        def uniform(low: float, high: float) -> torch.Tensor:
            return (low + (high - low) * torch.rand(n, generator=generator)).to(pixels.device)

        area = uniform(self.min_scale, 1.0)
        aspect = torch.exp(uniform(-math.log(self.max_aspect), math.log(self.max_aspect)))
        scale_x = (area * aspect).sqrt().clamp(max=1.0)
        scale_y = (area / aspect).sqrt().clamp(max=1.0)
        shift_x = uniform(-1.0, 1.0) * (1 - scale_x)
        shift_y = uniform(-1.0, 1.0) * (1 - scale_y)
        mirror = torch.where(uniform(0.0, 1.0) < 0.5, -1.0, 1.0) if self.flip else torch.ones_like(scale_x)
        theta = torch.zeros(n, 2, 3, device=pixels.device)
        theta[:, 0, 0], theta[:, 0, 2] = scale_x * mirror, shift_x
        theta[:, 1, 1], theta[:, 1, 2] = scale_y, shift_y
        grid = F.affine_grid(theta, list(pixels.shape), align_corners=False)
        x = F.grid_sample(pixels, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

        def factor() -> torch.Tensor:
            return uniform(1 - self.jitter, 1 + self.jitter).view(n, 1, 1, 1)

        def grey(image: torch.Tensor) -> torch.Tensor:
            return (0.299 * image[:, 0:1] + 0.587 * image[:, 1:2] + 0.114 * image[:, 2:3])

        x = x * factor()  # brightness
        mean_grey = grey(x).mean(dim=(2, 3), keepdim=True)
        x = mean_grey + (x - mean_grey) * factor()  # contrast
        x = grey(x) + (x - grey(x)) * factor()  # saturation
        return x.clamp_(0, 1)


def _batches(source: BatchSource, batch_size: int) -> Iterator[Batch]:
    if callable(source):
        while True:
            yield source(batch_size)
    while True:
        empty = True
        for batch in source:
            empty = False
            yield batch
        if empty or iter(source) is source:  # an exhausted iterator cannot start over
            raise ValueError("the batch source ran out before the requested number of steps")


def _warmup_cosine(warmup_steps: int, steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / max(1, steps - warmup_steps)))
    return factor


def _optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over trainable parameters; gains, biases, embeddings of rank < 2 and the temperature skip decay."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98), eps=1e-6)


class LockedTextFeatures:
    """Pooled outputs of a locked HF text transformer, memoised per caption.

    A locked transformer in eval mode is a fixed function of the text, and captions repeat across
    batches, so each is encoded once; only the trainable projection runs every step. Same maths as
    ``HFTextEncoder.forward`` up to the projection.
    """

    def __init__(self, encoder: Encoder):
        self.encoder = encoder
        self.text: HFTextEncoder = encoder.model.text
        self.cache: dict[str, torch.Tensor] = {}

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        missing = list(dict.fromkeys(t for t in texts if t not in self.cache))
        if missing:
            tokens = self.encoder.tokenize(missing)
            mask = (tokens != self.text.config.pad_token_id).long()
            with torch.no_grad():
                pooled = self.text.pooler(self.text.transformer(input_ids=tokens, attention_mask=mask), mask)
            self.cache.update(zip(missing, pooled))
        return torch.stack([self.cache[t] for t in texts])


def _train_mode(model: nn.Module) -> None:
    """Train mode, except for fully frozen submodules: a locked tower is deterministic (no dropout)."""
    model.train()
    for module in model.modules():
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            module.eval()


def train_tower(
    encoder_or_config: Encoder | str,
    pairs: BatchSource,
    steps: int = 300,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
    lock_text: bool = True,
    patch_dropout: float = 0.0,
    log_every: int = 10,
    *,
    weight_decay: float = 0.1,
    warmup_steps: int | None = None,
    augmentation: Augmentation | None = Augmentation(),
    checkpoint_path: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
) -> TrainResult:
    """Train the image tower (and projections) of an encoder on image/caption batches.

    ``encoder_or_config``: an `Encoder` (trained in place) or a registered model name (created
    fresh on ``device``, seeded by ``seed``). ``lock_text`` freezes the text transformer (an HF
    tower keeps its projection trainable; open_clip's own text tower locks whole). ``patch_dropout`` drops that fraction of image patches while training
    only (FLIP-style speed-up). ``warmup_steps`` defaults to 10% of ``steps``. With
    ``checkpoint_path`` the result is saved there with `Encoder.save` (config, weights, run settings).
    """
    torch.manual_seed(seed)
    encoder = create_encoder(encoder_or_config, device=device) if isinstance(encoder_or_config, str) \
        else encoder_or_config
    model = encoder.model
    generator = torch.Generator().manual_seed(seed)
    warmup_steps = max(1, steps // 10) if warmup_steps is None else warmup_steps

    requires_grad = [p.requires_grad for p in model.parameters()]
    kept_patch_dropout = model.visual.patch_dropout if patch_dropout > 0 else None
    if lock_text:
        model.lock_text_tower()
    if kept_patch_dropout is not None:
        model.visual.patch_dropout = PatchDropout(patch_dropout)
    optimizer = _optimizer(model, lr, weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(warmup_steps, steps))
    clip_loss = ClipLoss()
    hf_text = isinstance(getattr(model, "text", None), HFTextEncoder)
    locked_text = LockedTextFeatures(encoder) if lock_text and hf_text else None

    losses: list[float] = []
    started = time.perf_counter()
    try:
        _train_mode(model)
        bar = tqdm(islice(_batches(pairs, batch_size), steps), total=steps, disable=not progress, desc="train tower")
        for step, (images, texts) in enumerate(bar):
            pixels = encoder.frames_to_pixels(images)
            if augmentation is not None:
                pixels = augmentation(pixels, generator)
            image_features = model.encode_image(encoder.normalise(pixels), normalize=True)
            if locked_text is not None:
                text_features = F.normalize(model.text.proj(locked_text(texts)), dim=-1)
            else:
                text_features = model.encode_text(encoder.tokenize(texts), normalize=True)
            loss = clip_loss(image_features, text_features, model.logit_scale.exp())

            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)

            losses.append(loss.item())
            if (step + 1) % log_every == 0 or step + 1 == steps:
                recent = sum(losses[-log_every:]) / len(losses[-log_every:])
                bar.set_postfix(loss=f"{recent:.3f}", lr=f"{schedule.get_last_lr()[0]:.1e}")
                log.info("step %d/%d loss %.4f", step + 1, steps, recent)
    finally:
        if kept_patch_dropout is not None:
            model.visual.patch_dropout = kept_patch_dropout
        for param, flag in zip(model.parameters(), requires_grad):
            param.requires_grad_(flag)
        model.eval()
    seconds = time.perf_counter() - started

    checkpoint = None
    if checkpoint_path is not None:
        checkpoint = encoder.save(checkpoint_path, extra_meta={"train_tower": {
            "steps": steps, "lr": lr, "batch_size": batch_size, "seed": seed, "lock_text": lock_text,
            "patch_dropout": patch_dropout, "first_loss": losses[0], "final_loss": losses[-1], "seconds": seconds,
        }})
    return TrainResult(encoder=encoder, loss_history=losses, seconds=seconds, checkpoint=checkpoint)
