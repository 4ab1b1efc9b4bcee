"""The synthetic data generator: reproducible, real decodable videos, noise frames, splits, captions."""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace

import ffmpeg
import numpy as np
import pytest

from ml.datagen import (CONDITIONS, FRAME_KINDS, SIZES, encode_video, generate_dataset, load_manifest, make_caption,
                        plan_timeline, read_video_frames, render_product_photo, render_video_frames)
from ml.datagen.__main__ import main as cli_main
from ml.datagen.catalog import sample_products, visible_key
from ml.datagen.generate import plan_videos
from ml.datagen.draw import category_glyph
from ml.serving.ontology import load_ontology

TINY = SIZES["tiny"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    cli_main([str(out), "--size", "tiny", "--seed", "3"])
    return out


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return load_manifest(tiny_dir)


def dataset_files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_dataset_whatever_the_worker_count(tiny_dir, tmp_path):
    again = generate_dataset(tmp_path / "again", TINY, seed=3, workers=2, progress=False)
    first, second = dataset_files(tiny_dir), dataset_files(again.root)
    assert first.keys() == second.keys()
    assert any(k.endswith(".jpg") for k in first) and any(k.endswith(".mp4") for k in first)
    assert [k for k in first if first[k] != second[k]] == []  # manifest, photos and videos byte-identical


def test_other_seed_gives_other_catalogue():
    a, b = sample_products(TINY, 0), sample_products(TINY, 1)
    assert [p.title for p in a] != [p.title for p in b]


def test_manifest_records_products_videos_and_files(tiny):
    assert len(tiny.products) == 12 and len(tiny.videos) == 8
    for p in tiny.products:
        assert p.title and p.description and p.price > 0
        assert {"colour", "pattern", "texture", "shape", "brand"} <= p.attributes.keys()
        assert 1 <= len(p.images) <= 2 and all(tiny.path(i).stat().st_size > 0 for i in p.images)
    for v in tiny.videos:
        assert tiny.product(v.product_sku).split == v.split
        assert v.fps == TINY.fps and set(v.frame_kinds) <= set(FRAME_KINDS)
    assert tiny.chance_r1("test") == pytest.approx(1 / len(tiny.products_in("test")))


def test_videos_are_h264_files_with_the_recorded_frame_count_and_duration(tiny):
    for v in tiny.videos:
        probe = ffmpeg.probe(str(tiny.path(v.file)), count_frames=None)
        (stream,) = [s for s in probe["streams"] if s["codec_type"] == "video"]
        assert (stream["codec_name"], stream["pix_fmt"]) == ("h264", "yuv420p")
        assert int(stream["width"]) == int(stream["height"]) == TINY.video_size
        assert int(stream["nb_read_frames"]) == len(v.frame_kinds)
        assert float(probe["format"]["duration"]) == pytest.approx(len(v.frame_kinds) / v.fps, abs=0.01)
        assert TINY.seconds[0] <= len(v.frame_kinds) / v.fps <= TINY.seconds[1]


def test_frame_kinds_line_up_with_the_decoded_frames(tiny):
    for v in tiny.videos:
        frames = read_video_frames(tiny.path(v.file))
        assert frames.shape[0] == len(v.frame_kinds)
        kinds = np.array(v.frame_kinds)
        brightness = frames.reshape(len(frames), -1).mean(1)
        assert (brightness[kinds == "black"] < 15).all()
        assert (brightness[kinds == "product"] > 25).all()


def test_at_least_a_third_of_frames_are_noise(tiny):
    for v in tiny.videos:
        assert sum(k != "product" for k in v.frame_kinds) >= len(v.frame_kinds) / 3
    rng = np.random.default_rng(0)
    for n in [3, 7, 16, 24, 32]:
        for difficulty in [0.0, 1.0]:
            kinds = plan_timeline(rng, n, difficulty)
            assert len(kinds) == n and "product" in kinds
            assert sum(k != "product" for k in kinds) >= math.ceil(n / 3)


def test_splits_are_disjoint_by_product_and_categories_are_lower_ontology_paths(tiny):
    onto = load_ontology()
    for manifest_products in [tiny.products, sample_products(SIZES["full"], 0)]:
        by_split = {}
        for p in manifest_products:
            by_split.setdefault(p.split, set()).add(p.sku)
            category = onto.get(p.category_path)
            assert category.level == 2 and category.path == p.category_path
        assert sum(map(len, by_split.values())) == len(manifest_products)  # skus unique, one split each
        assert set(by_split) == {"train", "val", "test"}


def test_full_size_has_a_large_test_gallery_with_same_category_negatives():
    products = sample_products(SIZES["full"], 0)
    test = [p for p in products if p.split == "test"]
    assert len(test) >= 1000
    per_category = Counter(p.category_path for p in test)
    assert len(per_category) == len(load_ontology().lower) and min(per_category.values()) >= 2
    looks = Counter((p.category_path, visible_key(p.attributes)) for p in products)
    assert max(looks.values()) == 1  # products of a category never look the same


def test_demo_size_matches_the_demo_plan():
    products = sample_products(SIZES["demo"], 0)
    assert len(products) == 60 and len({p.category_path for p in products}) == 20


def test_filmed_videos_show_the_same_products_under_every_preset_and_leave_the_split_videos_alone():
    config = SIZES["demo"]
    products = sample_products(config, 0)
    plain = plan_videos(products, replace(config, filmed_per_condition=0), 0)
    planned = plan_videos(products, config, 0)
    filmed = planned[len(plain):]
    assert planned[:len(plain)] == plain and len(plain) == 24
    assert Counter(v.capture for v in filmed) == {preset: config.filmed_per_condition for preset in CONDITIONS}
    assert len({v.product_sku for v in filmed}) == config.filmed_per_condition
    assert all(v.split == "test" and v.file.endswith(".mp4") for v in filmed)
    assert len({v.key for v in planned}) == len({v.file for v in planned}) == len(planned)


def test_captions_are_noisy_and_sometimes_empty():
    products = sample_products(SIZES["demo"], 0)
    rng = np.random.default_rng(0)
    captions = [make_caption(p, rng, 0.5) for p in products for _ in range(20)]
    empty = sum(c == "" for c in captions) / len(captions)
    assert 0.02 < empty < 0.4
    assert sum("#" in c for c in captions) > 0.7 * len(captions)
    assert len(set(captions)) > 0.8 * len(captions)
    assert all(c != p.title for c, p in zip(captions, [p for p in products for _ in range(20)]))


def test_caption_difficulty_lowers_product_mentions():
    products = sample_products(SIZES["demo"], 0)

    def colour_mentions(difficulty):
        rng = np.random.default_rng(1)
        return sum(p.attributes["colour"] in make_caption(p, rng, difficulty) for p in products for _ in range(10))

    assert colour_mentions(0.0) > 1.5 * colour_mentions(1.0)


def test_render_video_frames_returns_frames_and_kinds_without_encoding():
    product = sample_products(TINY, 0)[0]
    frames, kinds = render_video_frames(product, np.random.default_rng(0), 20, size=64)
    assert frames.shape == (20, 64, 64, 3) and frames.dtype == np.uint8 and len(kinds) == 20
    again, _ = render_video_frames(product, np.random.default_rng(0), 20, size=64)
    assert np.array_equal(frames, again)


def test_encode_then_decode_keeps_every_frame(tmp_path):
    frames = np.zeros((10, 32, 48, 3), np.uint8)
    frames[:, :, :, 0] = np.arange(10)[:, None, None] * 25
    decoded = read_video_frames(encode_video(frames, tmp_path / "ramp.mp4", fps=8))
    assert decoded.shape == frames.shape
    assert np.abs(decoded.astype(int) - frames).mean() < 6


def test_photos_follow_category_and_attributes():
    a, b = sample_products(TINY, 0)[:2]  # same lower category, different attributes
    assert a.category_path == b.category_path
    photo = render_product_photo(a, 0, 96)
    assert photo.shape == (96, 96, 3) and photo.dtype == np.uint8
    assert np.array_equal(photo, render_product_photo(a, 0, 96))
    assert not np.array_equal(photo, render_product_photo(b, 0, 96))
    assert not np.array_equal(photo, render_product_photo(a, 1, 96))  # another pose
    assert category_glyph(a.category_path) == category_glyph(a.category_path)
    assert category_glyph("clothes/bags/backpack").family != category_glyph("food/fruits/apple").family


def test_frames_as_npy_keeps_test_videos_encoded(tmp_path):
    config = TINY.with_overrides(frames_as_npy=True, videos={"train": 1, "val": 1, "test": 1})
    manifest = generate_dataset(tmp_path, config, seed=0, progress=False)
    for v in manifest.videos:
        assert v.file.endswith(".mp4" if v.split == "test" else ".npy")
        assert read_video_frames(manifest.path(v.file)).shape[0] == len(v.frame_kinds)
