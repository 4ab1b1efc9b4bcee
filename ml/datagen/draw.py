"""Vectorised drawing of products and scenes (float32 RGB canvases in 0..255).

A product is drawn in its own object space (u, v in about [-1, 1], v pointing down): a category
glyph (signed-distance silhouette), filled with the product's colours and pattern and shaded by
its texture. The glyph's family comes from the middle category and its proportions from the lower
category path, so siblings look alike and every lower category always gets the same silhouette.
Everything is a pure function of the product record (plus an explicit rng for poses and scenes).
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .manifest import Product
from .vocab import COLOURS

FAMILY_OF_MIDDLE = {
    "clothes/tops": "garment", "clothes/bottoms": "trousers", "clothes/bags": "bag", "clothes/footgear": "shoe",
    "clothes/jewelry": "ring", "cosmetics/makeup": "stick", "cosmetics/skincare": "jar",
    "cosmetics/cleanser": "bottle", "cosmetics/hairdressing": "bottle", "supplies/toiletries": "stick",
    "supplies/computers": "device", "supplies/ironware": "star", "supplies/decorate": "lamp",
    "supplies/consumable": "pouch", "furniture/electrical": "device", "furniture/tableware": "bowl",
    "furniture/furniture": "furniture", "furniture/beddings": "plain", "furniture/carrier": "vehicle",
    "entertainment/stationery": "stick", "entertainment/toy": "star", "entertainment/pet-supplies": "stick",
    "entertainment/teaching-video": "device", "food/snack": "pouch", "food/beverages": "bottle",
    "food/flavour": "jar", "food/fruits": "fruit", "food/vegetable": "plain", "food/flour": "bowl",
    "food/meat": "plain",
}


@dataclass(frozen=True)
class FamilySpec:
    aspect: tuple[float, float]  # body width / height
    squareness: tuple[float, float]  # superellipse exponent: 2 = ellipse, 6+ = rounded box
    lobes: tuple[int, ...] = (0,)
    lobe_depth: tuple[float, float] = (0.0, 0.0)
    taper: tuple[float, float] = (0.0, 0.0)  # > 0: wider towards the bottom


FAMILY_SPECS = {
    "plain": FamilySpec((0.6, 1.6), (1.8, 5.0), (0, 0, 3, 5, 7), (0.04, 0.14), (-0.3, 0.3)),
    "star": FamilySpec((0.8, 1.25), (1.8, 2.5), (4, 5, 6, 8), (0.15, 0.35)),
    "ring": FamilySpec((0.7, 1.4), (1.8, 4.0), (0, 0, 6, 8), (0.03, 0.08)),
    "bag": FamilySpec((0.9, 1.6), (2.5, 6.0), (0,), (0, 0), (0.0, 0.25)),
    "bottle": FamilySpec((0.45, 0.85), (2.2, 6.0), (0,), (0, 0), (-0.15, 0.2)),
    "jar": FamilySpec((1.0, 1.7), (3.0, 8.0), (0,), (0, 0), (-0.1, 0.1)),
    "garment": FamilySpec((0.65, 1.0), (4.0, 10.0), (0,), (0, 0), (0.0, 0.3)),
    "trousers": FamilySpec((0.45, 0.75), (4.0, 10.0), (0,), (0, 0), (0.0, 0.3)),
    "shoe": FamilySpec((1.8, 2.6), (2.2, 5.0), (0,), (0, 0), (-0.1, 0.1)),
    "device": FamilySpec((0.5, 1.7), (5.0, 12.0)),
    "vehicle": FamilySpec((1.6, 2.4), (3.0, 8.0)),
    "furniture": FamilySpec((1.2, 2.2), (5.0, 12.0)),
    "fruit": FamilySpec((0.8, 1.2), (1.9, 2.3), (0, 0, 2, 5), (0.03, 0.1), (-0.15, 0.15)),
    "bowl": FamilySpec((1.0, 1.6), (1.8, 3.0)),
    "lamp": FamilySpec((1.0, 1.8), (3.0, 8.0), (0,), (0, 0), (0.2, 0.5)),
    "pouch": FamilySpec((0.6, 0.9), (3.0, 8.0), (0, 0, 12), (0.02, 0.04), (-0.2, 0.2)),
    "stick": FamilySpec((0.15, 0.35), (2.5, 8.0)),
}
FAMILIES = tuple(FAMILY_SPECS)


@dataclass(frozen=True)
class Glyph:
    family: str
    aspect: float
    squareness: float
    lobes: int
    lobe_depth: float
    lobe_phase: float
    taper: float
    part: float  # 0..1 size of the family's extra part (handle, neck, sleeves, hole, ...)


def stable_seed(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


@lru_cache(maxsize=1024)
def category_glyph(category_path: str) -> Glyph:
    """The silhouette of a lower category: family from its middle category, proportions from its path."""
    middle = "/".join(category_path.split("/")[:2])
    family = FAMILY_OF_MIDDLE.get(middle) or FAMILIES[stable_seed(middle) % len(FAMILIES)]
    spec = FAMILY_SPECS[family]
    rng = np.random.default_rng(stable_seed(category_path))
    lobes = int(rng.choice(spec.lobes))
    return Glyph(
        family=family,
        aspect=float(rng.uniform(*spec.aspect)),
        squareness=float(rng.uniform(*spec.squareness)),
        lobes=lobes,
        lobe_depth=float(rng.uniform(*spec.lobe_depth)) if lobes else 0.0,
        lobe_phase=float(rng.uniform(0, 2 * math.pi)),
        taper=float(rng.uniform(*spec.taper)),
        part=float(rng.uniform(0.0, 1.0)),
    )


def shaped_glyph(glyph: Glyph, shape: str) -> Glyph:
    """The product's `shape` attribute bends the category glyph without leaving its family."""
    if shape == "slim":
        return replace(glyph, aspect=glyph.aspect * 0.72)
    if shape == "wide":
        return replace(glyph, aspect=glyph.aspect * 1.35)
    if shape == "rounded":
        return replace(glyph, squareness=max(1.8, glyph.squareness * 0.45))
    if shape == "boxy":
        return replace(glyph, squareness=glyph.squareness + 5.0, lobe_depth=glyph.lobe_depth * 0.5)
    return glyph


# ---- signed distances (object units, > 0 inside) ----

def extent(aspect: float, size: float) -> tuple[float, float]:
    """Half width and half height of a body of the given aspect that fits a `size` half-box."""
    return (size, size / aspect) if aspect > 1 else (size * aspect, size)


def superellipse(g: Glyph, u, v, cy: float, bw: float, bh: float, shrink: float = 1.0):
    y = (v - cy) / (bh * shrink)
    x = u / (bw * shrink * (1.0 + g.taper * np.clip(y, -1.0, 1.0)))
    p = g.squareness
    rho = (np.abs(x) ** p + np.abs(y) ** p) ** (1.0 / p)
    r = 1.0
    if g.lobes:
        r = 1.0 + g.lobe_depth * np.cos(g.lobes * np.arctan2(y, x) + g.lobe_phase)
    return (r - rho) * (min(bw, bh) * shrink)


def box(u, v, cx: float, cy: float, hw: float, hh: float):
    return np.minimum(hw - np.abs(u - cx), hh - np.abs(v - cy))


def span_box(u, v, cx: float, hw: float, top: float, bottom: float):
    return box(u, v, cx, (top + bottom) / 2, hw, (bottom - top) / 2)


def circle(u, v, cx: float, cy: float, r: float):
    return r - np.hypot(u - cx, v - cy)


def glyph_distance(g: Glyph, u, v):
    """(silhouette distance, darker detail distance or None) of a glyph at object coordinates."""
    f, p = g.family, g.part
    detail = None
    if f == "bag":
        bw, bh = extent(g.aspect, 0.72)
        cy = 0.92 - bh
        top = cy - bh
        radius = bw * (0.4 + 0.3 * p)
        handle = np.minimum(0.07 - np.abs(np.hypot(u, v - top) - radius), top + 0.05 - v)
        d = np.maximum(superellipse(g, u, v, cy, bw, bh), handle)
    elif f == "bottle":
        bw, bh = extent(g.aspect, 0.62)
        cy = 0.95 - bh
        nw = bw * (0.25 + 0.25 * p)
        neck = span_box(u, v, 0.0, nw, -0.8, cy - bh + 0.1)
        cap = span_box(u, v, 0.0, nw * 1.25, -0.95, -0.7)
        d = np.maximum(np.maximum(superellipse(g, u, v, cy, bw, bh), neck), cap)
        detail = cap
    elif f == "jar":
        bw, bh = extent(g.aspect, 0.8)
        cy = 0.12
        lid = span_box(u, v, 0.0, bw * 1.04, cy - bh - 0.15 - 0.1 * p, cy - bh + 0.08)
        d = np.maximum(superellipse(g, u, v, cy, bw, bh), lid)
        detail = lid
    elif f == "garment":
        bw, bh = extent(g.aspect, 0.65)
        cy = 0.15
        sleeve_h = bh * 0.3
        sleeves = box(u, v, 0.0, cy - bh + sleeve_h, bw * (1.35 + 0.45 * p), sleeve_h)
        d = np.minimum(np.maximum(superellipse(g, u, v, cy, bw, bh), sleeves), -circle(u, v, 0.0, cy - bh, bw * 0.3))
    elif f == "trousers":
        bw, bh = extent(g.aspect, 0.9)
        notch = span_box(u, v, 0.0, bw * 0.12, -bh * (0.5 * p - 0.1), 1.2)
        d = np.minimum(superellipse(g, u, v, 0.0, bw, bh), -notch)
    elif f == "shoe":
        bw, bh = extent(g.aspect, 0.88)
        cy = 0.55
        shaft = span_box(u, v, -bw * 0.65, bw * 0.32, cy - bh - 0.3 - 0.6 * p, cy)
        d = np.maximum(superellipse(g, u, v, cy, bw, bh), shaft)
        detail = np.minimum(d, v - (cy + bh * 0.45))
    elif f == "device":
        bw, bh = extent(g.aspect, 0.85)
        d = superellipse(g, u, v, 0.0, bw, bh)
        detail = superellipse(g, u, v, -0.04 * p, bw, bh, shrink=0.72 + 0.12 * p)
    elif f == "vehicle":
        bw, bh = extent(g.aspect, 0.85)
        cy = -0.05
        cabin = span_box(u, v, bw * (0.3 * p - 0.15), bw * 0.45, cy - bh - 0.35, cy)
        r = 0.16 + 0.1 * p
        wheels = np.maximum(circle(u, v, -bw * 0.6, cy + bh, r), circle(u, v, bw * 0.6, cy + bh, r))
        d = np.maximum(np.maximum(superellipse(g, u, v, cy, bw, bh), cabin), wheels)
        detail = wheels
    elif f == "furniture":
        bw, bh = extent(g.aspect, 0.85)
        cy = -0.2
        legs = np.maximum(span_box(u, v, -bw * 0.8, 0.06, cy, 0.85), span_box(u, v, bw * 0.8, 0.06, cy, 0.85))
        d = np.maximum(superellipse(g, u, v, cy, bw, bh), legs)
    elif f == "fruit":
        bw, bh = extent(g.aspect, 0.72)
        cy = 0.2
        stem = span_box(u, v, 0.0, 0.04, cy - bh - 0.2, cy - bh + 0.1)
        leaf = superellipse(replace(g, squareness=2.0, lobes=0, taper=0.0), u - 0.05 - 0.15 * p, v, cy - bh - 0.12,
                            0.12 + 0.1 * p, 0.06)
        d = np.maximum(np.maximum(superellipse(g, u, v, cy, bw, bh), stem), leaf)
        detail = np.maximum(stem, leaf)
    elif f == "bowl":
        bw, bh = extent(g.aspect, 0.88)
        cy = -0.15
        rim = box(u, v, 0.0, cy, bw * 1.03, 0.05)
        d = np.maximum(np.minimum(superellipse(g, u, v, cy, bw, bh), v - cy), rim)
    elif f == "lamp":
        bw, bh = extent(g.aspect, 0.48)
        cy = -0.95 + bh
        stem = span_box(u, v, 0.0, 0.05, cy, 0.8)
        base = span_box(u, v, 0.0, 0.25 + 0.2 * p, 0.76, 0.92)
        d = np.maximum(np.maximum(superellipse(g, u, v, cy, bw, bh), stem), base)
        detail = np.maximum(stem, base)
    elif f == "pouch":
        bw, bh = extent(g.aspect, 0.88)
        d = superellipse(g, u, v, 0.0, bw, bh)
        detail = np.minimum(d, -bh + 0.12 + 0.12 * p - v)
    elif f == "stick":
        bw, bh = extent(g.aspect, 0.92)
        d = superellipse(g, u, v, 0.0, bw, bh)
        detail = np.minimum(d, -bh + bh * (0.4 + 0.5 * p) - v)
    elif f == "ring":
        bw, bh = extent(g.aspect, 0.88)
        hole = superellipse(g, u, v, 0.0, bw, bh, shrink=0.35 + 0.3 * p)
        d = np.minimum(superellipse(g, u, v, 0.0, bw, bh), -hole)
    else:  # plain, star
        bw, bh = extent(g.aspect, 0.88)
        d = superellipse(g, u, v, 0.0, bw, bh)
    return d, detail


# ---- product appearance ----

@dataclass
class ProductLook:
    glyph: Glyph
    primary: np.ndarray  # float32 (3,)
    accent: np.ndarray
    pattern: str
    texture: str
    pattern_angle: float
    pattern_freq: float  # cycles per object unit
    grain: np.ndarray  # (G, G) value noise in object space, so the texture moves with the product


def product_look(product: Product) -> ProductLook:
    attrs = product.attributes
    rng = np.random.default_rng(stable_seed(product.sku))
    grain_size = {"grainy": 40, "matte": 8}.get(attrs["texture"], 4)
    return ProductLook(
        glyph=shaped_glyph(category_glyph(product.category_path), attrs["shape"]),
        primary=np.asarray(COLOURS[attrs["colour"]], np.float32),
        accent=np.asarray(COLOURS[attrs["accent_colour"]], np.float32),
        pattern=attrs["pattern"],
        texture=attrs["texture"],
        pattern_angle=float(rng.uniform(0, math.pi)),
        pattern_freq=float(rng.uniform(2.0, 4.0)),
        grain=rng.random((grain_size, grain_size), dtype=np.float32),
    )


def soft(x, sharpness: float = 3.0):
    return np.clip(x * sharpness + 0.5, 0.0, 1.0)


def pattern_weight(look: ProductLook, u, v):
    """Share of the accent colour at each point (0 = primary colour)."""
    if look.pattern == "solid":
        return np.zeros_like(u)
    ca, sa = math.cos(look.pattern_angle), math.sin(look.pattern_angle)
    along, across = u * ca + v * sa, v * ca - u * sa
    f = look.pattern_freq
    if look.pattern == "striped":
        return soft(np.sin(2 * math.pi * f * along))
    if look.pattern == "zigzag":
        tri = np.abs((across * f * 2.0) % 1.0 - 0.5)
        return soft(np.sin(2 * math.pi * (f * along + tri)))
    if look.pattern == "dotted":
        du, dv = (along * f * 1.5) % 1.0 - 0.5, (across * f * 1.5) % 1.0 - 0.5
        return soft((0.28 - np.hypot(du, dv)) * 8.0)
    if look.pattern == "checked":
        return soft(np.sin(2 * math.pi * f * u) * np.sin(2 * math.pi * f * v) * 4.0)
    return np.clip(0.5 + 0.6 * along, 0.0, 1.0)  # gradient


def sample_grid(grid: np.ndarray, u, v, span: float = 1.2):
    """Bilinear sample of a square grid laid over [-span, span]^2 of object space."""
    n = grid.shape[0] - 1
    gx = np.clip((u + span) / (2 * span) * n, 0, n - 1e-3)
    gy = np.clip((v + span) / (2 * span) * n, 0, n - 1e-3)
    x0, y0 = gx.astype(np.int32), gy.astype(np.int32)
    fx, fy = gx - x0, gy - y0
    top = grid[y0, x0] * (1 - fx) + grid[y0, x0 + 1] * fx
    bottom = grid[y0 + 1, x0] * (1 - fx) + grid[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def texture_shading(look: ProductLook, u, v, depth):
    """(multiplicative shading, additive highlight) from light, edge falloff and the texture."""
    contrast = {"glossy": 0.28, "matte": 0.08}.get(look.texture, 0.16)
    shade = (1.0 - contrast * (u + v) * 0.5) * (0.72 + 0.28 * np.clip(depth / 0.15, 0.0, 1.0))
    highlight = 0.0
    if look.texture in ("grainy", "matte"):
        amount = 0.45 if look.texture == "grainy" else 0.22
        shade = shade * (1.0 + amount * (sample_grid(look.grain, u, v) - 0.5))
    elif look.texture == "knit":
        shade = shade * (1.0 + 0.12 * np.sin(14 * math.pi * (u + v)) * np.sin(14 * math.pi * (u - v)))
    elif look.texture == "glossy":
        highlight = 110.0 * np.exp(-((u + 0.3) ** 2 + (v + 0.35) ** 2) / 0.04)
    return shade, highlight


def draw_product(canvas: np.ndarray, look: ProductLook, cx: float, cy: float, scale: float, angle: float = 0.0):
    """Draw the product centred at pixel (cx, cy), `scale` pixels per object unit, rotated by `angle` radians."""
    h, w = canvas.shape[:2]
    reach = 1.45 * scale
    x0, x1 = max(0, int(cx - reach)), min(w, int(cx + reach) + 1)
    y0, y1 = max(0, int(cy - reach)), min(h, int(cy + reach) + 1)
    if x0 >= x1 or y0 >= y1:
        return canvas
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
    dx, dy = (xs - cx) / scale, (ys - cy) / scale
    ca, sa = math.cos(angle), math.sin(angle)
    u, v = ca * dx + sa * dy, ca * dy - sa * dx
    d, detail = glyph_distance(look.glyph, u, v)
    alpha = np.clip(d * scale + 0.5, 0.0, 1.0)[..., None]
    t = pattern_weight(look, u, v)[..., None]
    colour = look.primary * (1.0 - t) + look.accent * t
    shade, highlight = texture_shading(look, u, v, d)
    colour = colour * shade[..., None] + np.asarray(highlight, np.float32)[..., None]
    if detail is not None:
        colour = colour * (1.0 - 0.55 * np.clip(detail * scale + 0.5, 0.0, 1.0))[..., None]
    region = canvas[y0:y1, x0:x1]
    canvas[y0:y1, x0:x1] = region * (1.0 - alpha) + colour * alpha
    return canvas


def draw_shadow(canvas: np.ndarray, cx: float, cy: float, scale: float, strength: float = 0.35):
    h, w = canvas.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    r2 = ((xs - cx) / (0.8 * scale)) ** 2 + ((ys - cy - 0.92 * scale) / (0.14 * scale)) ** 2
    canvas *= (1.0 - strength * np.exp(-r2 * 2.0))[..., None]
    return canvas


# ---- backgrounds and noise content ----

def grid_coords(size: int):
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    return xs / size, ys / size


def random_colour(rng: np.random.Generator, low: float = 0.0, high: float = 255.0) -> np.ndarray:
    return rng.uniform(low, high, 3).astype(np.float32)


def studio_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """The plain, light backdrop of catalogue photos."""
    _, y = grid_coords(size)
    tone = rng.uniform(222, 248) + rng.uniform(-6, 6, 3)
    return (tone[None, None, :] - 22.0 * y[..., None]).astype(np.float32)


def gradient_background(rng: np.random.Generator, size: int) -> np.ndarray:
    x, y = grid_coords(size)
    a = rng.uniform(0, 2 * math.pi)
    t = np.clip((x - 0.5) * math.cos(a) + (y - 0.5) * math.sin(a) + 0.5, 0, 1)[..., None]
    return random_colour(rng) * (1 - t) + random_colour(rng) * t


def room_background(rng: np.random.Generator, size: int) -> np.ndarray:
    x, y = grid_coords(size)
    horizon = rng.uniform(0.5, 0.8)
    wall, floor = random_colour(rng, 90, 235), random_colour(rng, 40, 170)
    planks = 1.0 + 0.12 * np.sin(2 * math.pi * ((x - 0.5) / (0.2 + y)) * rng.uniform(3, 8))
    img = np.where((y < horizon)[..., None], wall, floor * planks[..., None])
    wx, ww = rng.uniform(0.05, 0.6), rng.uniform(0.15, 0.35)  # a window or picture on the wall
    frame = (x > wx) & (x < wx + ww) & (y > horizon * 0.15) & (y < horizon * 0.7)
    return np.where(frame[..., None], random_colour(rng, 150, 255), img).astype(np.float32)


def outdoor_background(rng: np.random.Generator, size: int) -> np.ndarray:
    x, y = grid_coords(size)
    horizon = rng.uniform(0.4, 0.75)
    sky = np.asarray([110, 170, 235], np.float32) * (0.8 + 0.4 * y[..., None])
    ground = random_colour(rng, 40, 160) * (0.8 + 0.3 * (1 - y[..., None]))
    img = np.where((y < horizon + 0.03 * np.sin(x * rng.uniform(5, 15)))[..., None], sky, ground)
    sun = np.hypot(x - rng.uniform(0.1, 0.9), y - rng.uniform(0.05, horizon * 0.6)) < rng.uniform(0.05, 0.1)
    return np.where(sun[..., None], np.float32([255, 236, 160]), img).astype(np.float32)


def table_background(rng: np.random.Generator, size: int) -> np.ndarray:
    x, y = grid_coords(size)
    wood = random_colour(rng, 90, 200) * np.float32([1.0, 0.75, 0.5])
    grain = np.sin(2 * math.pi * (y * rng.uniform(6, 14) + 0.15 * np.sin(x * rng.uniform(4, 10))))
    return (wood * (1.0 + 0.12 * grain)[..., None]).astype(np.float32)


def clutter_background(rng: np.random.Generator, size: int) -> np.ndarray:
    x, y = grid_coords(size)
    img = np.broadcast_to(random_colour(rng, 60, 230), (size, size, 3)).copy()
    for _ in range(int(rng.integers(5, 13))):
        cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.25)
        inside = np.hypot(x - cx, y - cy) < r if rng.random() < 0.5 else (np.abs(x - cx) < r) & (np.abs(y - cy) < r * 0.6)
        img[inside] = random_colour(rng)
    return img


def blotch_background(rng: np.random.Generator, size: int) -> np.ndarray:
    x, y = grid_coords(size)
    noise = sample_grid(rng.random((6, 6), dtype=np.float32), x * 2 - 1, y * 2 - 1, span=1.0)[..., None]
    return random_colour(rng) * (1 - noise) + random_colour(rng) * noise


SCENES = (gradient_background, room_background, outdoor_background, table_background, clutter_background,
          blotch_background)


def random_scene(rng: np.random.Generator, size: int) -> np.ndarray:
    return SCENES[int(rng.integers(len(SCENES)))](rng, size)


def draw_occluder(canvas: np.ndarray, rng: np.random.Generator):
    """A hand-like capsule reaching in from one edge of the frame."""
    size = canvas.shape[0]
    x, y = grid_coords(size)
    side = rng.integers(4)
    a = np.array([rng.uniform(0.1, 0.9), -0.1])
    a = a if side < 2 else a[::-1]
    a = np.abs(a - 1.0) if side % 2 else a  # from the opposite edge
    b = np.array([rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7)])
    ab = b - a
    t = np.clip(((x - a[0]) * ab[0] + (y - a[1]) * ab[1]) / float(ab @ ab), 0, 1)
    dist = np.hypot(x - a[0] - t * ab[0], y - a[1] - t * ab[1])
    skin = np.float32([224, 172, 138]) * rng.uniform(0.55, 1.05)
    inside = np.clip((rng.uniform(0.06, 0.11) - dist) * size + 0.5, 0, 1)[..., None]
    canvas[:] = canvas * (1 - inside) + skin * inside
    return canvas


def logo_card(rng: np.random.Generator, size: int, name: str) -> np.ndarray:
    """A channel logo on a flat colour: the intro/outro card of many micro-videos."""
    bg = tuple(int(c) for c in rng.integers(0, 256, 3))
    fg = tuple(255 - c for c in bg)
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    r = size * rng.uniform(0.15, 0.25)
    c = size / 2, size * 0.42
    box_ = (c[0] - r, c[1] - r, c[0] + r, c[1] + r)
    shape = rng.integers(3)
    if shape == 0:
        draw.ellipse(box_, fill=fg)
    elif shape == 1:
        draw.rounded_rectangle(box_, radius=r / 3, fill=fg)
    else:
        draw.polygon([(c[0], c[1] - r), (c[0] + r, c[1] + r), (c[0] - r, c[1] + r)], fill=fg)
    font = ImageFont.load_default(size=max(8, size // 10))
    draw.text((size / 2, size * 0.8), name, fill=fg, font=font, anchor="mm")
    return np.asarray(img, np.float32)


def to_uint8(canvas: np.ndarray) -> np.ndarray:
    return np.clip(canvas + 0.5, 0, 255).astype(np.uint8)


def render_product_photo(product: Product, variant: int = 0, size: int = 128) -> np.ndarray:
    """Catalogue photo uint8 [size, size, 3]; variant 0 is the centred packshot, others move slightly."""
    look = product_look(product)
    rng = np.random.default_rng([stable_seed(product.sku), variant])
    canvas = studio_background(rng, size)
    cx = cy = size / 2
    scale, angle = 0.4 * size, 0.0
    if variant:
        cx, cy = cx + rng.uniform(-0.06, 0.06) * size, cy + rng.uniform(-0.05, 0.03) * size
        scale *= rng.uniform(0.78, 0.98)
        angle = math.radians(rng.uniform(-12, 12))
    draw_shadow(canvas, cx, cy, scale)
    draw_product(canvas, look, cx, cy, scale, angle)
    return to_uint8(canvas)
