"""Capture conditions: micro-videos filmed the way publishers film them, not the way the generator does.

A `CaptureConditions` switches conditions on one by one (each field is one condition, the rest say
how strong it is), and `CONDITIONS` names the presets: "clean" (today's generator), one per
condition alone, and "all". `render_capture` renders a video of a product under given conditions.

With every condition off it renders exactly what `ml.datagen.video.render_video_frames` renders.
Each condition draws its randomness from a stream of its own (spawned from the video's rng, which
it does not advance), so switching one condition on changes what that condition says and nothing
else: the same timeline, scenes, poses and noise, with the condition on top.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from .draw import (ProductLook, draw_product, glyph_distance, grid_coords, logo_card, product_look, random_colour,
                   sample_grid, to_uint8)
from .manifest import Product
from .video import (ShotPlan, channel_name, draw_shot_frame, encode_video, fill_transitions, plan_shot, plan_timeline,
                    runs, scene_clip)
from .vocab import OVERLAY_TEXTS, TITLE_CARD_TEXTS

DEFAULT_CRF = 23  # encode_video's own default: what a video without the compression condition gets
CONDITION_NAMES = ("clutter", "small", "shake", "light", "noise", "motion_blur", "compression", "vertical", "overlay",
                   "cards", "distractors")
FILMED_KINDS = ("product", "scene")  # frames a hand-held camera films (cards and black frames are not filmed)


@dataclass(frozen=True)
class CaptureConditions:
    """Which capture conditions a video has (the boolean fields) and how strong each is when on."""

    clutter: bool = False  # cluttered, textured backdrop instead of studio / scene backdrops
    small: bool = False  # product at `product_share` of the frame, sometimes partly out of frame
    shake: bool = False  # hand-held camera: jitter, a tilt, rolling
    light: bool = False  # lighting flicker and a colour cast
    noise: bool = False  # sensor noise
    motion_blur: bool = False
    compression: bool = False  # encoded at `crf`
    vertical: bool = False  # 9:16 or square framing with blurred or coloured letterboxing
    overlay: bool = False  # text banners and stickers over the product
    cards: bool = False  # a title card before and a logo outro after the footage
    distractors: bool = False  # other products in the frame beside the true one

    product_share: tuple[float, float] = (0.2, 0.6)  # longer side of the product's box / frame side
    out_of_frame: float = 0.5  # chance that a shot's start or end has the product crossing the frame edge
    shake_shift: float = 0.02  # per-frame step of the camera's random walk, as a share of the frame side
    tilt_degrees: float = 12.0  # a steady tilt of up to this much
    roll_degrees: float = 6.0  # amplitude of the rolling sway
    flicker: float = 0.25  # frame-to-frame brightness swing (relative)
    colour_cast: float = 0.3  # per-channel gain of the cast, up to +-this
    noise_sigma: tuple[float, float] = (8.0, 20.0)  # sensor noise std, 0..255 levels
    blur_length: tuple[float, float] = (0.05, 0.12)  # motion-blur streak, as a share of the frame side
    crf: int = 42
    framings: tuple[str, ...] = ("9:16", "1:1")
    letterboxes: tuple[str, ...] = ("blur", "colour")
    card_share: tuple[float, float] = (0.1, 0.2)  # each card's length, as a share of the footage's frames
    distractor_count: tuple[int, int] = (1, 3)

    @property
    def active(self) -> tuple[str, ...]:
        return tuple(name for name in CONDITION_NAMES if getattr(self, name))

    def encode_crf(self) -> int:
        return self.crf if self.compression else DEFAULT_CRF


CONDITIONS: dict[str, CaptureConditions] = {
    "clean": CaptureConditions(),
    **{name: CaptureConditions(**{name: True}) for name in CONDITION_NAMES},
    "all": CaptureConditions(**{name: True for name in CONDITION_NAMES}),
}


@dataclass
class CapturedVideo:
    frames: np.ndarray  # uint8 [T, H, W, 3]; H x W is 9:16 or square with letterboxing under "vertical"
    kinds: list[str]  # each frame's kind (ml.datagen.manifest.FRAME_KINDS); cards are "logo"
    crf: int  # the quality to encode it at (`write_capture`)
    product_boxes: list[tuple[float, float, float, float] | None]  # true product's (x0, y0, x1, y1), footage pixels
    distractors: list[str]  # skus of the other products in the frame
    footage_size: int  # side of the square footage the boxes refer to (before vertical framing)


# ---- backdrops, cards, overlays -----------------------------------------------------------------------

def cluttered_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A busy, textured scene: value-noise texture under many patterned shapes."""
    x, y = grid_coords(size)
    texture = sample_grid(rng.random((12, 12), dtype=np.float32), x * 2 - 1, y * 2 - 1, span=1.0)[..., None]
    img = random_colour(rng, 40, 220) * (0.7 + 0.6 * texture)
    for _ in range(int(rng.integers(14, 28))):
        cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.04, 0.2)
        if rng.random() < 0.5:
            inside = np.hypot(x - cx, y - cy) < r
        else:
            inside = (np.abs(x - cx) < r) & (np.abs(y - cy) < r * rng.uniform(0.3, 1.5))
        angle, freq = rng.uniform(0, math.pi), rng.uniform(4, 14)
        stripes = (0.5 + 0.5 * np.sin(2 * math.pi * freq * (x * math.cos(angle) + y * math.sin(angle))))[..., None]
        fill = random_colour(rng) * (1 - stripes) + random_colour(rng) * stripes
        img = np.where(inside[..., None], fill if rng.random() < 0.6 else random_colour(rng), img)
    grain = rng.standard_normal((size, size, 1), dtype=np.float32) * 10.0
    return (img + grain).astype(np.float32)


def title_card(rng: np.random.Generator, size: int) -> np.ndarray:
    """An intro card: a short title and the channel name on a flat colour."""
    bg = tuple(int(c) for c in rng.integers(0, 256, 3))
    fg = (255, 255, 255) if sum(bg) < 384 else (16, 16, 16)
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    draw.text((size / 2, size * 0.45), str(rng.choice(TITLE_CARD_TEXTS)), fill=fg,
              font=ImageFont.load_default(size=max(8, size // 7)), anchor="mm")
    draw.text((size / 2, size * 0.7), channel_name(rng), fill=fg, font=ImageFont.load_default(size=max(6, size // 12)),
              anchor="mm")
    return np.asarray(img, np.float32)


def overlay_layer(rng: np.random.Generator, size: int, near: tuple[float, float]) -> np.ndarray:
    """RGBA float [size, size, 4] (alpha 0..1): text banners and stickers, placed over the point ``near``."""
    layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    cx, cy = near
    for _ in range(int(rng.integers(1, 3))):  # banners across the product
        y = float(np.clip(cy + rng.uniform(-0.2, 0.2) * size, 0.1 * size, 0.9 * size))
        font = ImageFont.load_default(size=max(8, int(size * rng.uniform(0.08, 0.13))))
        text = str(rng.choice(OVERLAY_TEXTS))
        box = draw.textbbox((size / 2, y), text, font=font, anchor="mm")
        if rng.random() < 0.6:
            fill = tuple(int(c) for c in rng.integers(0, 256, 3)) + (int(rng.uniform(150, 240)),)
            draw.rectangle((box[0] - 3, box[1] - 2, box[2] + 3, box[3] + 2), fill=fill)
        draw.text((size / 2, y), text, font=font, anchor="mm", fill=(255, 255, 255, 255), stroke_width=1,
                  stroke_fill=(0, 0, 0, 255))
    for _ in range(int(rng.integers(1, 4))):  # stickers on or by the product
        r = size * rng.uniform(0.06, 0.12)
        x, y = cx + rng.uniform(-0.25, 0.25) * size, cy + rng.uniform(-0.25, 0.25) * size
        colour = tuple(int(c) for c in rng.integers(0, 256, 3)) + (255,)
        if rng.random() < 0.5:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=colour, outline=(255, 255, 255, 255), width=2)
        else:
            radii = [r if k % 2 == 0 else r * 0.45 for k in range(10)]
            points = [(x + radius * math.cos(math.pi * k / 5 - math.pi / 2),
                       y + radius * math.sin(math.pi * k / 5 - math.pi / 2)) for k, radius in enumerate(radii)]
            draw.polygon(points, fill=colour)
    out = np.asarray(layer, np.float32)
    out[..., 3] /= 255.0
    return out


# ---- the true product's geometry ------------------------------------------------------------------------

def product_box(look: ProductLook, angle: float, resolution: int = 64) -> tuple[float, float, float, float]:
    """Bounding box (x0, y0, x1, y1) of the drawn product around its centre, in object units, at ``angle``."""
    reach = 1.45  # draw_product's reach
    grid = (np.arange(resolution, dtype=np.float32) + 0.5) / resolution * 2 * reach - reach
    dy, dx = np.meshgrid(grid, grid, indexing="ij")
    ca, sa = math.cos(angle), math.sin(angle)
    d, _ = glyph_distance(look.glyph, ca * dx + sa * dy, ca * dy - sa * dx)
    inside = d > 0
    xs, ys = dx[inside], dy[inside]
    half_cell = reach / resolution
    return (float(xs.min()) - half_cell, float(ys.min()) - half_cell,
            float(xs.max()) + half_cell, float(ys.max()) + half_cell)


def small_pose(look: ProductLook, rng: np.random.Generator, size: int, angle: float, cfg: CaptureConditions
               ) -> tuple[float, float, float]:
    """(share of the frame, cx, cy) for one end of a shot: the product small, sometimes over the frame's edge."""
    share = rng.uniform(*cfg.product_share)
    x0, y0, x1, y1 = product_box(look, angle)
    scale = share * size / max(x1 - x0, y1 - y0)
    lo, hi = np.array([-x0, -y0]) * scale, size - np.array([x1, y1]) * scale  # centres keeping the box inside
    centre = rng.uniform(lo, np.maximum(hi, lo))
    if rng.random() < cfg.out_of_frame:  # push it over one edge: 15-45 % of the box leaves the frame
        axis, far = int(rng.integers(2)), rng.random() < 0.5
        width = (x1 - x0, y1 - y0)[axis] * scale
        beyond = rng.uniform(0.15, 0.45) * width
        centre[axis] = hi[axis] + beyond if far else lo[axis] - beyond
    return share, float(centre[0]), float(centre[1])


# ---- camera effects on filmed frames -------------------------------------------------------------------

def camera_path(rng: np.random.Generator, n: int, size: int, cfg: CaptureConditions) -> np.ndarray:
    """[n, 3] per frame (shift x, shift y in pixels, rotation in radians) of a hand-held camera."""
    steps = rng.standard_normal((n, 2)) * cfg.shake_shift * size
    walk = np.zeros((n, 2))
    for i in range(1, n):
        walk[i] = 0.85 * walk[i - 1] + steps[i]  # drifts, but comes back
    tilt = math.radians(rng.uniform(-cfg.tilt_degrees, cfg.tilt_degrees))
    sway = math.radians(cfg.roll_degrees) * rng.uniform(0.5, 1.0)
    rolling = tilt + sway * np.sin(2 * math.pi * rng.uniform(0.05, 0.15) * np.arange(n) + rng.uniform(0, 2 * math.pi))
    return np.column_stack([walk, rolling])


def move_camera(frame: np.ndarray, dx: float, dy: float, angle: float) -> np.ndarray:
    """The frame seen by a camera shifted by (dx, dy) and rolled by ``angle``; edges continue mirrored."""
    size = frame.shape[0]
    pad = size // 2
    padded = np.pad(frame, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    c = size / 2
    ca, sa = math.cos(angle), math.sin(angle)
    coeffs = (ca, -sa, c + dx + pad - ca * c + sa * c, sa, ca, c + dy + pad - sa * c - ca * c)
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(padded[..., k])).transform(
        (size, size), Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR)) for k in range(3)], -1)


def streak(frame: np.ndarray, length: float, direction: float) -> np.ndarray:
    """Motion blur: the mean of the frame shifted along ``direction`` over ``length`` pixels."""
    taps = max(2, int(round(length)))
    pad = taps + 1
    padded = np.pad(frame, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    h, w = frame.shape[:2]
    out = np.zeros_like(frame)
    for k in range(taps):
        t = k - (taps - 1) / 2
        oy, ox = int(round(t * math.sin(direction))), int(round(t * math.cos(direction)))
        out += padded[pad + oy:pad + oy + h, pad + ox:pad + ox + w]
    return out / taps


def sensor_noise(rng: np.random.Generator, shape: tuple[int, ...], cfg: CaptureConditions) -> np.ndarray:
    """Luma noise shared by the channels plus weaker chroma noise of each channel."""
    sigma = rng.uniform(*cfg.noise_sigma)
    luma = rng.standard_normal((*shape[:-1], 1), dtype=np.float32) * sigma
    return luma + rng.standard_normal(shape, dtype=np.float32) * (sigma / 2)


def letterbox(frames: np.ndarray, rng: np.random.Generator, cfg: CaptureConditions) -> np.ndarray:
    """Square footage reframed for a phone feed: 9:16 or square, the footage (square or cropped to 16:9) in the
    middle, the bars a blurred, enlarged copy of it or a flat colour."""
    t, size = frames.shape[:2]
    framing = str(rng.choice(cfg.framings))
    height = even(size * 16 / 9) if framing == "9:16" else size
    landscape = framing != "9:16" or rng.random() < 0.5
    content_h = even(size * 9 / 16) if landscape else size
    top = (size - content_h) // 2
    content = frames[:, top:top + content_h]
    y0 = (height - content_h) // 2
    style = str(rng.choice(cfg.letterboxes))
    colour = rng.integers(0, 256, 3).astype(np.uint8)
    out = np.empty((t, height, size, 3), np.uint8)
    for i in range(t):
        if style == "blur":
            cover = Image.fromarray(content[i]).resize((even(size * height / content_h), height),
                                                       Image.Resampling.BILINEAR)
            left = (cover.width - size) // 2
            cover = cover.crop((left, 0, left + size, height)).filter(ImageFilter.GaussianBlur(size / 16))
            out[i] = (np.asarray(cover, np.float32) * 0.7).astype(np.uint8)
        else:
            out[i] = colour
        out[i, y0:y0 + content_h] = content[i]
    return out


def even(x: float) -> int:
    return int(round(x / 2)) * 2


# ---- the video --------------------------------------------------------------------------------------------

def pick_distractors(product: Product, others: Sequence[Product], rng: np.random.Generator,
                     cfg: CaptureConditions) -> list[Product]:
    pool = [p for p in others if p.sku != product.sku]
    if not pool:
        raise ValueError("the distractors condition needs other products to draw")
    n = min(len(pool), int(rng.integers(cfg.distractor_count[0], cfg.distractor_count[1] + 1)))
    return [pool[i] for i in rng.choice(len(pool), size=n, replace=False)]


def distractor_backdrop(scene: np.ndarray, looks: list[ProductLook], rng: np.random.Generator, scale: float,
                        avoid: np.ndarray) -> np.ndarray:
    """The scene with other products standing in it, away from the true product's place (``avoid``)."""
    size = scene.shape[0]
    backdrop = scene.copy()
    for look in looks:
        spots = rng.uniform(0.15, 0.85, (8, 2)) * size
        spot = spots[np.argmax(np.linalg.norm(spots - avoid, axis=1))]
        draw_product(backdrop, look, float(spot[0]), float(spot[1]), scale * rng.uniform(0.6, 1.0),
                     rng.uniform(-1, 1) * math.radians(40))
    return backdrop


def captured_shot(look: ProductLook, rng: np.random.Generator, n: int, size: int, difficulty: float,
                  cfg: CaptureConditions, streams: dict[str, np.random.Generator], distractors: list[ProductLook]
                  ) -> tuple[np.ndarray, list[tuple[float, float, float, float]]]:
    """`ml.datagen.video.product_shot` under the conditions that act on the shot itself: backdrop, size and
    place, other products. Returns the frames and the true product's box in each."""
    plan: ShotPlan = plan_shot(rng, size, difficulty)
    if cfg.clutter:
        plan = replace(plan, scene=cluttered_background(streams["clutter"], size))
        plan.shadow = bool(plan.scene.mean() > 120)
    shares = None
    if cfg.small:
        ends = [small_pose(look, streams["small"], size, a, cfg) for a in plan.angles]
        shares = [e[0] for e in ends]
        plan.centres = np.array([[e[1], e[2]] for e in ends])
    backdrop = None
    if distractors:  # as large as the true product at the shot's start
        x0, y0, x1, y1 = product_box(look, plan.angles[0])
        scale = plan.scales[0] if shares is None else shares[0] * size / max(x1 - x0, y1 - y0)
        backdrop = distractor_backdrop(plan.scene, distractors, streams["distractors"], float(scale), plan.centres[0])
    frames = np.empty((n, size, size, 3), np.float32)
    boxes = []
    for i in range(n):
        t = i / max(1, n - 1)
        cx, cy, scale, angle = plan.pose(t)
        x0, y0, x1, y1 = product_box(look, angle)
        if shares is not None:  # scale so the box's longer side is the share, whatever the angle
            scale = (shares[0] * (1 - t) + shares[1] * t) * size / max(x1 - x0, y1 - y0)
        frames[i] = draw_shot_frame(look, plan, t, backdrop, pose=(cx, cy, scale, angle))
        boxes.append((cx + x0 * scale, cy + y0 * scale, cx + x1 * scale, cy + y1 * scale))
    return frames, boxes


def film(frames: np.ndarray, kinds: list[str], cfg: CaptureConditions, streams: dict[str, np.random.Generator]
         ) -> None:
    """In place: lighting, camera motion and motion blur on the filmed frames (product shots and scenes)."""
    n, size = len(frames), frames.shape[1]
    filmed = [i for i, kind in enumerate(kinds) if kind in FILMED_KINDS]
    if cfg.light:
        rng = streams["light"]
        cast = (1 + rng.uniform(-cfg.colour_cast, cfg.colour_cast, 3)).astype(np.float32)
        phase, rate = rng.uniform(0, 2 * math.pi), rng.uniform(0.1, 0.4)
        swing = 0.6 * np.sin(2 * math.pi * rate * np.arange(n) + phase) + 0.4 * rng.standard_normal(n)
        gain = 1 + cfg.flicker * np.clip(swing, -1.5, 1.5)
        for i in filmed:
            frames[i] *= cast * np.float32(gain[i])
    path = camera_path(streams["shake"], n, size, cfg) if cfg.shake else None
    if path is not None:
        for i in filmed:
            frames[i] = move_camera(frames[i], *path[i])
    if cfg.motion_blur:
        rng = streams["motion_blur"]
        length = rng.uniform(*cfg.blur_length) * size
        direction = rng.uniform(0, math.pi)
        for i in filmed:
            if path is not None and i > 0:  # along the camera's own motion
                step = path[i, :2] - path[i - 1, :2]
                direction = math.atan2(step[1], step[0]) if np.any(step) else direction
            frames[i] = streak(frames[i], length, direction)


def render_capture(product: Product, rng: np.random.Generator, n_frames: int, size: int = 128,
                   difficulty: float = 0.5, conditions: CaptureConditions = CONDITIONS["clean"],
                   others: Sequence[Product] = ()) -> CapturedVideo:
    """A micro-video about ``product`` under ``conditions``; ``others`` are the products distractors come from.

    ``n_frames`` frames of footage (cards add theirs before and after); ``size`` the footage's (even) side.
    """
    cfg = conditions
    streams = dict(zip(CONDITION_NAMES, rng.spawn(len(CONDITION_NAMES))))
    kinds = plan_timeline(rng, n_frames, difficulty)
    look = product_look(product)
    chosen = pick_distractors(product, others, streams["distractors"], cfg) if cfg.distractors else []
    distractor_looks = [product_look(p) for p in chosen]
    frames = np.zeros((n_frames, size, size, 3), np.float32)
    boxes: list = [None] * n_frames
    for start, stop, kind in runs(kinds):
        n = stop - start
        if kind == "product":
            frames[start:stop], boxes[start:stop] = captured_shot(look, rng, n, size, difficulty, cfg, streams,
                                                                  distractor_looks)
        elif kind == "black":
            frames[start:stop] = rng.uniform(0, 8)
        elif kind == "logo":
            frames[start:stop] = logo_card(rng, size, channel_name(rng))
        elif kind == "scene":
            frames[start:stop] = scene_clip(rng, n, size)
    film(frames, kinds, cfg, streams)
    fill_transitions(frames, kinds)
    frames += rng.standard_normal(frames.shape, dtype=np.float32) * (1.0 + 4.0 * difficulty)  # as render_video_frames
    if cfg.noise:
        frames += sensor_noise(streams["noise"], frames.shape, cfg)
    if cfg.overlay:
        first = next((b for b in boxes if b is not None), (0, 0, size, size))
        layer = overlay_layer(streams["overlay"], size, ((first[0] + first[2]) / 2, (first[1] + first[3]) / 2))
        frames = frames * (1 - layer[..., 3:]) + layer[..., :3] * layer[..., 3:]
    if cfg.cards:
        rng_cards = streams["cards"]
        intro, outro = (max(1, round(n_frames * rng_cards.uniform(*cfg.card_share))) for _ in range(2))
        title = np.broadcast_to(title_card(rng_cards, size), (intro, size, size, 3))
        logo = np.broadcast_to(logo_card(rng_cards, size, channel_name(rng_cards)), (outro, size, size, 3))
        frames = np.concatenate([title, frames, logo])
        kinds = ["logo"] * intro + kinds + ["logo"] * outro
        boxes = [None] * intro + boxes + [None] * outro
    out = to_uint8(frames)
    if cfg.vertical:
        out = letterbox(out, streams["vertical"], cfg)
    return CapturedVideo(out, kinds, cfg.encode_crf(), boxes, [p.sku for p in chosen], size)


def write_capture(video: CapturedVideo, path: str | Path, fps: int) -> Path:
    """Encode a captured video as H.264 MP4 at its condition's quality."""
    return encode_video(video.frames, path, fps, crf=video.crf)
