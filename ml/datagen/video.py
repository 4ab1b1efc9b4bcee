"""Micro-video frames (product shots mixed with noise frames) and their ffmpeg encoding / decoding.

A video is a timeline of runs: product shots (the product moving, zooming and turning over a scene,
under a lighting change, sometimes occluded or blurred) separated and framed by noise runs (black
frames, transitions, logo cards, unrelated scenes). At least a third of the frames are noise, and
every frame's kind is returned, so salient-frame filtering can be measured against it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import ffmpeg
import numpy as np

from .draw import (ProductLook, draw_occluder, draw_product, draw_shadow, grid_coords, logo_card, product_look,
                   random_scene, studio_background, to_uint8)
from .manifest import FRAME_KINDS, Product
from .vocab import BRAND_SYLLABLES

MIN_NOISE_SHARE = 1 / 3
NOISE_KINDS = FRAME_KINDS[1:]
NOISE_WEIGHTS = np.array([0.25, 0.3, 0.2, 0.25])  # black, transition, logo, scene


def composition(rng: np.random.Generator, total: int, parts: int, minimum: int) -> list[int]:
    """Random split of `total` into `parts` integers, each at least `minimum`."""
    spare = total - parts * minimum
    return [int(n) + minimum for n in rng.multinomial(spare, rng.dirichlet(np.ones(parts)))]


def plan_timeline(rng: np.random.Generator, n_frames: int, difficulty: float = 0.5) -> list[str]:
    """The kind of every frame: 1-3 product shots with noise runs before, between and after them."""
    share = rng.uniform(MIN_NOISE_SHARE, 0.45 + 0.2 * difficulty)
    n_noise = min(n_frames - 1, max(math.ceil(n_frames * MIN_NOISE_SHARE), round(n_frames * share)))
    n_product = n_frames - n_noise
    n_shots = int(rng.integers(1, min(3, max(1, n_product // 4)) + 1))
    shots = composition(rng, n_product, n_shots, minimum=1)
    kinds: list[str] = []
    for i, slot in enumerate(composition(rng, n_noise, n_shots + 1, minimum=0)):
        while slot:
            run = min(slot, int(rng.integers(1, 5)))
            kinds += [str(rng.choice(NOISE_KINDS, p=NOISE_WEIGHTS))] * run
            slot -= run
        if i < n_shots:
            kinds += ["product"] * shots[i]
    return kinds


def runs(kinds: list[str]):
    start = 0
    for i in range(1, len(kinds) + 1):
        if i == len(kinds) or kinds[i] != kinds[start]:
            yield start, i, kinds[start]
            start = i


def blur(frame: np.ndarray) -> np.ndarray:
    for axis in (0, 1):
        frame = (np.roll(frame, 1, axis) + frame + np.roll(frame, -1, axis)) / 3.0
    return frame


@dataclass
class ShotPlan:
    """Everything random about one product shot, drawn before any frame is rendered (captures change it)."""
    scene: np.ndarray  # float32 [size, size, 3] backdrop
    scales: np.ndarray  # [2] pixels per object unit at the shot's start and end
    centres: np.ndarray  # [2, 2] product centre (x, y) at the start and end
    angles: tuple[float, float]
    light: np.ndarray  # [3] per-channel gain
    vignette: np.ndarray  # [size, size, 1]
    occluder_seed: int | None
    blurred: bool
    shadow: bool

    def pose(self, t: float) -> tuple:
        """(cx, cy, scale, angle) at time t in 0..1 of the shot: pose, zoom and position move linearly."""
        (cx, cy), scale = self.centres[0] * (1 - t) + self.centres[1] * t, self.scales[0] * (1 - t) + self.scales[1] * t
        return cx, cy, scale, self.angles[0] * (1 - t) + self.angles[1] * t  # numpy scalars: float64 drawing


def plan_shot(rng: np.random.Generator, size: int, difficulty: float) -> ShotPlan:
    d = difficulty
    scene = studio_background(rng, size) if rng.random() < 0.25 * (1 - d) else random_scene(rng, size)
    scales = rng.uniform(0.3 - 0.18 * d, 0.42 + 0.33 * d, 2) * size
    spread = 0.08 + 0.25 * d
    centres = size * (0.5 + rng.uniform(-spread, spread, (2, 2)))
    a0 = rng.uniform(-1, 1) * math.radians(15 + 165 * d)
    angles = (a0, a0 + rng.uniform(-1, 1) * math.radians(10 + 30 * d))
    light = (1 + rng.uniform(-1, 1) * (0.1 + 0.4 * d)) * (1 + rng.uniform(-1, 1, 3) * (0.04 + 0.25 * d))
    x, y = grid_coords(size)
    vignette = 1.0 - rng.uniform(0, 0.1 + 0.6 * d) * ((x - 0.5) ** 2 + (y - 0.5) ** 2)[..., None] * 2
    occluder_seed = int(rng.integers(2**32)) if rng.random() < 0.1 + 0.5 * d else None
    blurred = rng.random() < 0.6 * d
    return ShotPlan(scene, scales, centres, angles, light.astype(np.float32), vignette, occluder_seed, blurred,
                    shadow=bool(scene.mean() > 120))


def draw_shot_frame(look: ProductLook, plan: ShotPlan, t: float, backdrop: np.ndarray | None = None,
                    pose: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """One frame of a shot at time t (0..1); ``backdrop`` replaces the plan's scene (e.g. with other products on
    it), ``pose`` the plan's (cx, cy, scale, angle) at t."""
    frame = (plan.scene if backdrop is None else backdrop).copy()
    cx, cy, scale, angle = plan.pose(t) if pose is None else pose
    if plan.shadow:
        draw_shadow(frame, cx, cy, scale, strength=0.25)
    draw_product(frame, look, cx, cy, scale, angle)
    if plan.occluder_seed is not None:
        draw_occluder(frame, np.random.default_rng(plan.occluder_seed))
    frame = frame * plan.light * plan.vignette
    return blur(frame) if plan.blurred else frame


def product_shot(product: Product, rng: np.random.Generator, n: int, size: int, difficulty: float) -> np.ndarray:
    """`n` frames of one shot: pose, zoom and position move linearly; lighting, scene and occluder stay."""
    look = product_look(product)
    plan = plan_shot(rng, size, difficulty)
    frames = np.empty((n, size, size, 3), np.float32)
    for i in range(n):
        frames[i] = draw_shot_frame(look, plan, i / max(1, n - 1))
    return frames


def scene_clip(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """An unrelated scene, slowly panning."""
    scene = random_scene(rng, size)
    step = rng.integers(-2, 3, 2)
    return np.stack([np.roll(scene, (int(step[0]) * i, int(step[1]) * i), (0, 1)) for i in range(n)])


def channel_name(rng: np.random.Generator) -> str:
    return "@" + "".join(rng.choice(BRAND_SYLLABLES, size=int(rng.integers(2, 4))))


def fill_transitions(frames: np.ndarray, kinds: list[str]) -> None:
    """Transition frames cross-fade between the frames around them (black at either end of the video)."""
    black = np.zeros(frames.shape[1:], np.float32)
    for start, stop, kind in runs(kinds):
        if kind != "transition":
            continue
        before = frames[start - 1] if start > 0 else black
        after = frames[stop] if stop < len(kinds) else black
        for i in range(start, stop):
            t = (i - start + 1) / (stop - start + 1)
            frames[i] = before * (1 - t) + after * t


def render_video_frames(product: Product, rng: np.random.Generator, n_frames: int, size: int = 128,
                        difficulty: float = 0.5) -> tuple[np.ndarray, list[str]]:
    """Frames uint8 [T, H, W, 3] of a micro-video about `product`, and each frame's kind (see FRAME_KINDS)."""
    kinds = plan_timeline(rng, n_frames, difficulty)
    frames = np.zeros((n_frames, size, size, 3), np.float32)
    for start, stop, kind in runs(kinds):
        n = stop - start
        if kind == "product":
            frames[start:stop] = product_shot(product, rng, n, size, difficulty)
        elif kind == "black":
            frames[start:stop] = rng.uniform(0, 8)
        elif kind == "logo":
            frames[start:stop] = logo_card(rng, size, channel_name(rng))
        elif kind == "scene":
            frames[start:stop] = scene_clip(rng, n, size)
    fill_transitions(frames, kinds)
    frames += rng.standard_normal(frames.shape, dtype=np.float32) * (1.0 + 4.0 * difficulty)  # sensor noise
    return to_uint8(frames), kinds


def encode_video(frames: np.ndarray, path: str | Path, fps: int, crf: int = 23) -> Path:
    """Write uint8 [T, H, W, 3] frames as H.264/yuv420p MP4, one encoded frame per input frame, bit-exact."""
    t, h, w, _ = frames.shape
    path = Path(path)
    (
        ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{w}x{h}", framerate=fps)
        .output(str(path), vcodec="libx264", pix_fmt="yuv420p", preset="veryfast", crf=crf, threads=1,
                movflags="+faststart", fflags="+bitexact", flags="+bitexact", map_metadata=-1)
        .global_args("-loglevel", "error")
        .overwrite_output()
        .run(input=np.ascontiguousarray(frames, np.uint8).tobytes(), capture_stdout=True, capture_stderr=True)
    )
    return path


def read_video_frames(path: str | Path) -> np.ndarray:
    """Decoded frames uint8 [T, H, W, 3] of an encoded video, or the array of a .npy frames file."""
    path = Path(path)
    if path.suffix == ".npy":
        return np.load(path)
    stream = next(s for s in ffmpeg.probe(str(path))["streams"] if s["codec_type"] == "video")
    w, h = int(stream["width"]), int(stream["height"])
    out, _ = (
        ffmpeg.input(str(path))
        .output("pipe:", format="rawvideo", pix_fmt="rgb24", fps_mode="passthrough")
        .global_args("-loglevel", "error")
        .run(capture_stdout=True, capture_stderr=True)
    )
    return np.frombuffer(out, np.uint8).reshape(-1, h, w, 3)
