"""Contrastive training of an `Encoder`'s image tower against its (locked) text tower.

LiT the other way round: the pretrained text transformer (MiniLM) stays frozen and the small
image tower learns to land next to the captions of its images; the text projection and the
temperature train too. Loss is CLIP's symmetric InfoNCE (open_clip's ``ClipLoss``) over the
batch; AdamW with a warm-up + cosine schedule; augmentation on tensors (`Augmentation`).

Batches come from any source of ``(images uint8 [B, H, W, 3], texts list[str])``: a callable
``source(batch_size)`` or an iterable of batches (re-iterated if it runs out).
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field, replace
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
    """Capture conditions drawn onto a batch of [0, 1] images, per image and seeded, so the tower
    learns the product rather than the frame around it.

    In order: paste onto clutter (the image shrunk onto a random textured background, partly out
    of frame; a plain backdrop is keyed out so only the product lands), random resized crop with
    rotation and flip (one affine resample), colour jitter and a colour cast, blur (separate
    strength per axis, like motion blur), sensor noise, cut-out. Every image of the batch goes
    through it: product photos as much as video frames. No hue shift, since colour is often what
    a caption says. Each op is off at 0 (``flip``: False).
    """

    min_scale: float = 0.5  # smallest crop area, as a fraction of the image
    max_aspect: float = 4 / 3
    flip: bool = True
    rotation: float = 0.0  # largest rotation, degrees either way
    jitter: float = 0.3  # brightness / contrast / saturation factors drawn from [1 - j, 1 + j]
    colour_cast: float = 0.0  # per-channel gains drawn from [1 - c, 1 + c]
    paste: float = 0.0  # share of images pasted onto clutter
    paste_scale: tuple[float, float] = (0.35, 0.8)  # side of the pasted image, as a fraction of the frame's
    paste_out: float = 0.25  # how far past the frame's edge the pasted image may reach, as a fraction of its side
    key_threshold: float = 0.12  # colour distance from a plain backdrop at which a pixel counts as product
    blur: float = 0.0  # share of images blurred
    blur_sigma: float = 1.5  # largest blur, pixels (each axis drawn on its own)
    noise: float = 0.0  # largest standard deviation of the added Gaussian noise
    cutout: float = 0.0  # share of images with a rectangle painted over
    cutout_size: float = 0.35  # largest side of that rectangle, as a fraction of the image
    overlay: float = 0.0  # share of images with a text banner and round stickers drawn over them

    def __call__(self, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        x = pixels
        if self.paste > 0:
            x, _ = self.paste_onto_clutter(x, generator)
        x = self._crop(x, generator)
        x = self._colour(x, generator)
        if self.blur > 0 and self.blur_sigma > 0:
            x = self._blur(x, generator)
        if self.noise > 0:
            x = x + _uniform(x, generator, 0.0, self.noise).view(-1, 1, 1, 1) * _randn(x, generator)
        if self.cutout > 0 and self.cutout_size > 0:
            x = self._cutout(x, generator)
        if self.overlay > 0:
            x = self._overlay(x, generator)
        return x.clamp(0, 1)

    def paste_onto_clutter(self, pixels: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The images (a ``paste`` share of them) shrunk onto random clutter; returns (images, alpha [N, 1, H, W]):
        where the source lands. A source whose border is plain (a catalogue backdrop) pastes only what differs from it."""
        n, _, h, w = pixels.shape
        chosen = (_uniform(pixels, generator, 0.0, 1.0) < self.paste).nonzero().flatten()
        k = len(chosen)
        side = _uniform(chosen, generator, *self.paste_scale)
        reach = (1 - side + 2 * self.paste_out * side).clamp(min=0)  # how far the centre may move from the middle
        centre_x = _uniform(chosen, generator, -1.0, 1.0) * reach
        centre_y = _uniform(chosen, generator, -1.0, 1.0) * reach
        theta = torch.zeros(k, 2, 3, device=pixels.device)
        theta[:, 0, 0] = theta[:, 1, 1] = 1 / side
        theta[:, 0, 2], theta[:, 1, 2] = -centre_x / side, -centre_y / side
        grid = F.affine_grid(theta, [k, 4, h, w], align_corners=False)
        source = torch.cat([pixels[chosen], _product_mask(pixels[chosen], self.key_threshold)], dim=1)
        placed = F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        alpha = placed[:, 3:]
        out, out_alpha = pixels.clone(), pixels.new_zeros(n, 1, h, w)
        out[chosen] = placed[:, :3] * alpha + clutter(k, h, w, generator).to(pixels.device) * (1 - alpha)
        out_alpha[chosen] = alpha
        return out, out_alpha

    def _crop(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        area = _uniform(x, generator, self.min_scale, 1.0)
        log_aspect = math.log(self.max_aspect)
        aspect = torch.exp(_uniform(x, generator, -log_aspect, log_aspect))
        scale_x = (area * aspect).sqrt().clamp(max=1.0)
        scale_y = (area / aspect).sqrt().clamp(max=1.0)
        shift_x = _uniform(x, generator, -1.0, 1.0) * (1 - scale_x)
        shift_y = _uniform(x, generator, -1.0, 1.0) * (1 - scale_y)
        mirror = torch.where(_uniform(x, generator, 0.0, 1.0) < 0.5, -1.0, 1.0) if self.flip else torch.ones_like(scale_x)
        angle = _uniform(x, generator, -1.0, 1.0) * math.radians(self.rotation) if self.rotation else torch.zeros_like(scale_x)
        cos, sin = angle.cos(), angle.sin()
        theta = torch.zeros(x.shape[0], 2, 3, device=x.device)
        theta[:, 0, 0], theta[:, 0, 1], theta[:, 0, 2] = cos * scale_x * mirror, -sin * scale_y, shift_x
        theta[:, 1, 0], theta[:, 1, 1], theta[:, 1, 2] = sin * scale_x * mirror, cos * scale_y, shift_y
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    def _colour(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n = x.shape[0]

        def factor(spread: float) -> torch.Tensor:
            return _uniform(x, generator, 1 - spread, 1 + spread).view(n, 1, 1, 1)

        x = x * factor(self.jitter)  # brightness
        mean_grey = _grey(x).mean(dim=(2, 3), keepdim=True)
        x = mean_grey + (x - mean_grey) * factor(self.jitter)  # contrast
        x = _grey(x) + (x - _grey(x)) * factor(self.jitter)  # saturation
        if self.colour_cast > 0:
            gains = 1 + self.colour_cast * (2 * torch.rand(n, 3, 1, 1, generator=generator) - 1)
            x = x * gains.to(x.device)
        return x

    def _blur(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Separable Gaussian blur with a sigma per image and axis (0 on images not drawn)."""
        n, c, h, w = x.shape
        chosen = _uniform(x, generator, 0.0, 1.0) < self.blur
        radius = max(1, math.ceil(2 * self.blur_sigma))
        offsets = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
        for axis in (3, 2):
            sigma = _uniform(x, generator, 0.3, self.blur_sigma) * chosen
            kernel = torch.exp(-0.5 * (offsets / sigma.clamp(min=1e-3).view(n, 1)) ** 2)
            kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)
            shape = (n * c, 1, 1, -1) if axis == 3 else (n * c, 1, -1, 1)
            padding = (radius, radius, 0, 0) if axis == 3 else (0, 0, radius, radius)
            x = F.conv2d(F.pad(x.reshape(1, n * c, h, w), padding, mode="replicate"), kernel.view(shape),
                         groups=n * c).view(n, c, h, w)
        return x

    def _cutout(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, _, h, w = x.shape
        chosen = _uniform(x, generator, 0.0, 1.0) < self.cutout
        half_w = _uniform(x, generator, 0.05, self.cutout_size / 2) * chosen
        half_h = _uniform(x, generator, 0.05, self.cutout_size / 2) * chosen
        centre_x, centre_y = _uniform(x, generator, 0.0, 1.0), _uniform(x, generator, 0.0, 1.0)
        xs = (torch.arange(w, device=x.device) + 0.5) / w
        ys = (torch.arange(h, device=x.device) + 0.5) / h
        inside = (((xs.view(1, 1, w) - centre_x.view(n, 1, 1)).abs() < half_w.view(n, 1, 1))
                  & ((ys.view(1, h, 1) - centre_y.view(n, 1, 1)).abs() < half_h.view(n, 1, 1))).unsqueeze(1)
        colour = torch.rand(n, 3, 1, 1, generator=generator).to(x.device)
        return torch.where(inside, colour, x)

    def _overlay(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """What publishers put over their products: a banner with text-like strokes across the middle part of
        the image, and up to two round stickers near it."""
        n, _, h, w = x.shape
        chosen = (_uniform(x, generator, 0.0, 1.0) < self.overlay).view(n, 1, 1)
        ys = ((torch.arange(h, device=x.device) + 0.5) / h).view(1, h, 1)
        xs = ((torch.arange(w, device=x.device) + 0.5) / w).view(1, 1, w)

        def drawn(low: float, high: float) -> torch.Tensor:
            return _uniform(x, generator, low, high).view(n, 1, 1)

        centre_y, half_h, centre_x, half_w = drawn(0.2, 0.8), drawn(0.035, 0.08), drawn(0.3, 0.7), drawn(0.15, 0.45)
        banner = chosen & ((ys - centre_y).abs() < half_h) & ((xs - centre_x).abs() < half_w)
        letters = banner & ((ys - centre_y).abs() < 0.5 * half_h) & (torch.sin(2 * math.pi * drawn(15, 40) * xs) > 0)
        colour = torch.rand(n, 3, 1, 1, generator=generator).to(x.device)
        x = torch.where(banner.unsqueeze(1), colour, x)
        x = torch.where(letters.unsqueeze(1), (colour.mean(1, keepdim=True) < 0.5).float().expand_as(colour), x)
        for _ in range(2):
            centre_x, centre_y, radius, shown = drawn(0.2, 0.8), drawn(0.2, 0.8), drawn(0.04, 0.1), drawn(0.0, 1.0)
            sticker = chosen & (shown < 0.7) & ((xs - centre_x) ** 2 + (ys - centre_y) ** 2 < radius ** 2)
            x = torch.where(sticker.unsqueeze(1), torch.rand(n, 3, 1, 1, generator=generator).to(x.device), x)
        return x


def _uniform(like: torch.Tensor, generator: torch.Generator, low: float, high: float) -> torch.Tensor:
    """One value per image of ``like``, drawn on the CPU generator (seeded runs match across devices)."""
    return (low + (high - low) * torch.rand(like.shape[0], generator=generator)).to(like.device)


def _randn(like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(like.shape, generator=generator).to(like.device)


def _grey(image: torch.Tensor) -> torch.Tensor:
    return 0.299 * image[:, 0:1] + 0.587 * image[:, 1:2] + 0.114 * image[:, 2:3]


def _product_mask(pixels: torch.Tensor, threshold: float) -> torch.Tensor:
    """[N, 1, H, W]: 1 where an image differs from its plain border colour; all ones where the border is not plain."""
    border = torch.cat([pixels[:, :, :2].flatten(2), pixels[:, :, -2:].flatten(2),
                        pixels[:, :, :, :2].flatten(2), pixels[:, :, :, -2:].flatten(2)], dim=2)
    backdrop = border.median(dim=2).values.view(-1, 3, 1, 1)
    distance = (pixels - backdrop).abs().amax(dim=1, keepdim=True)
    keyed = ((distance - threshold) / threshold + 0.5).clamp(0, 1)
    plain = ((border - backdrop.flatten(2)).abs().amax(dim=1) < threshold).float().mean(dim=1) > 0.9
    return torch.where(plain.view(-1, 1, 1, 1), keyed, torch.ones_like(keyed))


def clutter(n: int, h: int, w: int, generator: torch.Generator) -> torch.Tensor:
    """[n, 3, h, w] random cluttered backgrounds in [0, 1]: colour blotches, stripes, boxes and grain."""
    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator)

    tone = rand(n, 1, 1, 1)
    blotches = F.interpolate(rand(n, 3, 4, 4), size=(h, w), mode="bilinear", align_corners=False)
    base = tone + (blotches - tone) * rand(n, 1, 1, 1) * 0.8  # muted colours, like a room
    ys = ((torch.arange(h) + 0.5) / h).view(1, h, 1)
    xs = ((torch.arange(w) + 0.5) / w).view(1, 1, w)
    angle = rand(n, 1, 1) * math.pi
    frequency = 2 + 10 * rand(n, 1, 1)
    stripes = torch.sin(2 * math.pi * frequency * (xs * angle.cos() + ys * angle.sin()))
    base = base * (1 + 0.25 * rand(n, 1, 1, 1) * stripes.unsqueeze(1))
    for _ in range(6):  # boxes of other objects lying around
        cx, cy, half_w, half_h = rand(n, 1, 1), rand(n, 1, 1), 0.03 + 0.2 * rand(n, 1, 1), 0.03 + 0.2 * rand(n, 1, 1)
        inside = (((xs - cx).abs() < half_w) & ((ys - cy).abs() < half_h) & (rand(n, 1, 1) < 0.6)).unsqueeze(1)
        base = torch.where(inside, rand(n, 3, 1, 1), base)
    grain = F.interpolate(rand(n, 1, h // 4, w // 4), size=(h, w), mode="nearest") - 0.5
    return (base + 0.15 * rand(n, 1, 1, 1) * grain).clamp(0, 1)


@dataclass(frozen=True)
class AugmentationMix:
    """Each image goes through one of several augmentations, drawn per image by weight, so one batch holds
    the product as the catalogue shows it and as a hand-held camera films it."""

    choices: tuple[tuple[Augmentation, float], ...]

    def __call__(self, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        weights = torch.tensor([weight for _, weight in self.choices], dtype=torch.float)
        picked = torch.multinomial(weights, pixels.shape[0], replacement=True, generator=generator).to(pixels.device)
        out = pixels.clone()
        for i, (augmentation, _) in enumerate(self.choices):
            chosen = (picked == i).nonzero().flatten()
            if len(chosen):
                out[chosen] = augmentation(pixels[chosen], generator)
        return out


# Named augmentations (what a build config picks): "light" is the crop / flip / jitter the demo model
# trained with before capture conditions; "light-overlay" (the default) adds banners and stickers over half the
# images, which publishers put over their products; "capture" adds what hand-held footage does to a product;
# "mixed" gives half of every batch the light one and half the capture one without its colour cast
# (a colour cast blurs the colours that tell sibling products apart: docs/benchmark/robustness-recipes.md).
LIGHT = Augmentation()
CAPTURE = Augmentation(min_scale=0.3, rotation=15.0, jitter=0.4, colour_cast=0.15, paste=0.5, paste_scale=(0.4, 0.85),
                       paste_out=0.15, blur=0.3, noise=0.05, cutout=0.25)
AUGMENTATIONS: dict[str, Augmentation | AugmentationMix | None] = {
    "none": None,
    "light": LIGHT,
    "capture": CAPTURE,
    "light-overlay": replace(LIGHT, overlay=0.5),
    "mixed": AugmentationMix(((LIGHT, 1.0), (replace(CAPTURE, colour_cast=0.0, jitter=LIGHT.jitter), 1.0))),
}


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
    augmentation: Augmentation | AugmentationMix | None = Augmentation(),
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
    log_line_every = max(log_every, steps // 10)  # a log file gets about ten loss lines, whatever the length
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
                if (step + 1) % log_line_every == 0 or step + 1 == steps:
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
