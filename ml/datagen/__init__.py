"""Synthetic micro-video / product data: demo catalogue, test fixtures and the retrieval benchmark.

One seeded generator, parameterised by size (`SIZES`: tiny, demo, full). Products live in the
ontology's lower categories and differ by visual attributes and title words; each has 1-3 rendered
photos. Micro-videos are real H.264 files mixing product shots with noise frames, with noisy
captions; `manifest.json` records every frame's kind. Run `python -m ml.datagen OUT --size demo`.
"""
from .captions import CAPTION_KINDS, make_caption
from .capture import CONDITION_NAMES, CONDITIONS, CapturedVideo, CaptureConditions, render_capture, write_capture
from .config import SIZES, SPLITS, DatasetConfig
from .draw import category_glyph, render_product_photo
from .generate import generate_dataset
from .manifest import FRAME_KINDS, Manifest, Product, Video, load_manifest
from .video import encode_video, plan_timeline, read_video_frames, render_video_frames

__all__ = [
    "CAPTION_KINDS", "CONDITIONS", "CONDITION_NAMES", "CapturedVideo", "CaptureConditions", "FRAME_KINDS", "SIZES",
    "SPLITS", "DatasetConfig", "Manifest", "Product", "Video", "category_glyph",
    "encode_video", "generate_dataset", "load_manifest", "make_caption", "plan_timeline", "read_video_frames",
    "render_capture", "render_product_photo", "render_video_frames", "write_capture",
]
