"""Capture conditions (ml.datagen.capture), caption kinds and the dataset mixes: each does what it says, alone."""
import json
from dataclasses import replace

import numpy as np
import pytest

from ml.datagen import SIZES, generate_dataset, load_manifest, render_video_frames
from ml.datagen.capture import (CONDITION_NAMES, CONDITIONS, DEFAULT_CRF, cluttered_background, render_capture,
                                write_capture)
from ml.datagen.captions import CAPTION_KINDS, make_caption
from ml.datagen.catalog import ontology, sample_products
from ml.datagen.draw import studio_background
from ml.datagen.vocab import SYNONYMS, TITLE_WORDS
from ml.serving.video import probe_video, sample_frames

SIZE, FRAMES = 64, 16


@pytest.fixture(scope="module")
def products():
    return sample_products(SIZES["tiny"], 0)


def capture(products, preset, seed=7, **changes):
    conditions = replace(CONDITIONS[preset], **changes)
    return render_capture(products[0], np.random.default_rng(seed), FRAMES, SIZE, conditions=conditions,
                          others=products)


@pytest.fixture(scope="module")
def clean(products):
    return capture(products, "clean")


def filmed(video):
    return np.array([k in ("product", "scene") for k in video.kinds])


def test_clean_is_the_generators_own_video_and_seeded(products, clean):
    frames, kinds = render_video_frames(products[0], np.random.default_rng(7), FRAMES, SIZE)
    assert np.array_equal(clean.frames, frames) and clean.kinds == kinds and clean.crf == DEFAULT_CRF
    assert np.array_equal(capture(products, "all").frames, capture(products, "all").frames)
    other_seed = capture(products, "all", seed=8).frames
    assert not np.array_equal(other_seed[:FRAMES], capture(products, "all").frames[:FRAMES])


def test_presets_switch_on_one_condition_each():
    assert CONDITIONS["clean"].active == ()
    assert CONDITIONS["all"].active == CONDITION_NAMES
    for name in CONDITION_NAMES:
        assert CONDITIONS[name].active == (name,)


@pytest.mark.parametrize("name", ["clutter", "small", "distractors"])
def test_shot_conditions_change_only_product_shots(products, clean, name):
    video = capture(products, name)
    shots = np.array([k == "product" for k in clean.kinds])
    other = np.array([k in ("black", "logo", "scene") for k in clean.kinds])  # transitions fade from the shots
    assert video.kinds == clean.kinds and other.any()
    assert np.array_equal(video.frames[other], clean.frames[other])
    assert all(not np.array_equal(a, b) for a, b in zip(video.frames[shots], clean.frames[shots]))


@pytest.mark.parametrize("name", ["shake", "light", "motion_blur"])
def test_camera_conditions_change_only_filmed_frames(products, clean, name):
    video = capture(products, name)
    untouched = ~filmed(clean)
    # transitions cross-fade from filmed frames; black and logo frames next to no filmed frame stay as they were
    for i in np.flatnonzero(untouched):
        if clean.kinds[i] in ("black", "logo"):
            assert np.array_equal(video.frames[i], clean.frames[i])
    assert all(not np.array_equal(a, b) for a, b in zip(video.frames[filmed(clean)], clean.frames[filmed(clean)]))


def test_small_puts_the_product_at_20_to_60_percent_and_sometimes_over_the_edge(products, clean):
    shares, crossing = [], 0
    for seed in range(6):
        video = capture(products, "small", seed=seed)
        for box in filter(None, video.product_boxes):
            x0, y0, x1, y1 = box
            shares.append(max(x1 - x0, y1 - y0) / video.footage_size)
            crossing += x0 < 0 or y0 < 0 or x1 > SIZE or y1 > SIZE
    assert 0.19 <= min(shares) and max(shares) <= 0.61
    assert crossing > 0
    clean_shares = [max(b[2] - b[0], b[3] - b[1]) / SIZE for b in clean.product_boxes if b]
    assert np.mean(clean_shares) > np.mean(shares)


def test_clutter_backdrop_is_busier_than_the_studio():
    def edges(img):
        return np.abs(np.diff(img, axis=1)).mean()

    rng = np.random.default_rng(0)
    assert edges(cluttered_background(rng, SIZE)) > 3 * edges(studio_background(rng, SIZE))


def test_distractors_are_other_products(products, clean):
    video = capture(products, "distractors")
    assert 1 <= len(video.distractors) <= 3 and products[0].sku not in video.distractors
    assert set(video.distractors) <= {p.sku for p in products}
    with pytest.raises(ValueError):
        render_capture(products[0], np.random.default_rng(0), FRAMES, SIZE, conditions=CONDITIONS["distractors"])


def test_noise_adds_sensor_noise(products, clean):
    diff = capture(products, "noise").frames.astype(float) - clean.frames.astype(float)
    assert 5 < diff.std() < 30 and abs(diff.mean()) < 3


def test_motion_blur_smooths_filmed_frames(products, clean):
    video = capture(products, "motion_blur", blur_length=(0.2, 0.2))
    mask = filmed(clean)

    def detail(frames):  # edge strength on 2x2 means (the sensor noise added after the blur averages out)
        f = frames.astype(float).reshape(len(frames), SIZE // 2, 2, SIZE // 2, 2, 3).mean((2, 4))
        return np.abs(np.diff(f, axis=1)).mean() + np.abs(np.diff(f, axis=2)).mean()

    assert detail(video.frames[mask]) < 0.9 * detail(clean.frames[mask])


def test_light_flickers_brightness_between_frames(products, clean):
    video = capture(products, "light")
    mask = filmed(clean)
    ratio = video.frames[mask].mean(axis=(1, 2, 3)) / clean.frames[mask].mean(axis=(1, 2, 3))
    assert ratio.std() > 0.05


def test_overlay_covers_part_of_every_frame(products, clean):
    changed = np.abs(capture(products, "overlay").frames.astype(int) - clean.frames).max(-1) > 30
    share = changed.mean(axis=(1, 2))
    assert (share > 0.01).all() and (share < 0.6).all()


def test_cards_wrap_the_same_footage(products, clean):
    video = capture(products, "cards")
    intro = next(i for i in range(len(video.kinds)) if np.array_equal(video.frames[i], clean.frames[0]))
    outro = len(video.frames) - intro - FRAMES
    assert intro >= 1 and outro >= 1
    assert video.kinds[:intro] == ["logo"] * intro and video.kinds[-outro:] == ["logo"] * outro
    assert np.array_equal(video.frames[intro:intro + FRAMES], clean.frames)


def test_vertical_frames_are_9_16_or_letterboxed_squares_and_serving_samples_them(products, clean, tmp_path):
    tall = capture(products, "vertical", framings=("9:16",), letterboxes=("colour",))
    t, h, w, _ = tall.frames.shape
    assert (w, h) == (SIZE, 114) and h % 2 == 0 and t == FRAMES
    assert (tall.frames[:, :4] == tall.frames[0, 0, 0]).all()  # a flat bar on top
    square = capture(products, "vertical", framings=("1:1",), letterboxes=("blur",))
    assert square.frames.shape[1:3] == (SIZE, SIZE)
    top = (SIZE - 36) // 2  # 16:9 footage (64 x 36) in the middle
    assert np.array_equal(square.frames[:, top:top + 36], clean.frames[:, top:top + 36])
    assert not np.array_equal(square.frames[:, :top], clean.frames[:, :top])
    path = write_capture(tall, tmp_path / "tall.mp4", fps=8)
    info = probe_video(path)
    assert (info.width, info.height) == (SIZE, 114)
    assert sample_frames(path, 4, 32, info=info).frames.shape == (4, 32, 32, 3)  # serving crops the centre square


def test_compression_encodes_the_same_frames_smaller(products, clean, tmp_path):
    video = capture(products, "compression")
    assert np.array_equal(video.frames, clean.frames) and video.crf > clean.crf
    small = write_capture(video, tmp_path / "crf.mp4", fps=8).stat().st_size
    assert small < 0.8 * write_capture(clean, tmp_path / "clean.mp4", fps=8).stat().st_size


def product_words(product) -> set[str]:
    """Every word a caption could use to name the product: attributes, their title words and synonyms, category."""
    attrs = product.attributes
    phrases = [attrs[k] for k in ("colour", "accent_colour", "pattern", "texture", "shape", "brand", "model")]
    phrases += [TITLE_WORDS[k][attrs[k]] for k in TITLE_WORDS]
    category = ontology().get(product.category_path)
    phrases += [category.name, category.parent.name]
    phrases += [s for p in list(phrases) for s in SYNONYMS.get(p, [])]
    return {w.lower().strip("#@") for p in phrases for w in p.split() if len(w) > 2}


def caption_words(caption: str) -> set[str]:
    return {w.lower().strip("#@!?.,") for w in caption.split()}


def test_caption_kinds_carry_or_omit_product_words(products):
    rng = np.random.default_rng(0)
    with_words = 0
    for i in range(60):
        product = products[i % len(products)]
        words = product_words(product)
        assert not caption_words(make_caption(product, rng, kind="hashtags")) & words
        assert not caption_words(make_caption(product, rng, kind="none")) & words
        assert make_caption(product, rng, kind="empty") == ""
        with_words += bool(caption_words(make_caption(product, rng, kind="product_words")) & words)
    tags = make_caption(products[0], rng, kind="hashtags").split()
    assert sum(t.startswith("#") for t in tags) >= 2 and any(not t.startswith("#") for t in tags)
    assert with_words > 40
    assert set(CAPTION_KINDS) == {"product_words", "hashtags", "none", "empty"}
    with pytest.raises(ValueError):
        make_caption(products[0], rng, kind="emoji")


def test_dataset_mixes_apply_to_train_and_val_only(tmp_path):
    tiny = SIZES["tiny"]
    plain = generate_dataset(tmp_path / "plain", tiny, seed=2, progress=False)
    mixes = replace(tiny, capture_mix={"vertical": 1.0}, caption_mix={"empty": 1.0})
    mixed = generate_dataset(tmp_path / "mixed", mixes, seed=2, progress=False)
    raw = json.loads((tmp_path / "plain" / "manifest.json").read_text())
    assert all("capture" not in v for v in raw["videos"]) and "capture_mix" not in raw["generator"]
    for before, after in zip(plain.videos, mixed.videos):
        if after.split == "test":
            assert after == before
            assert (tmp_path / "mixed" / after.file).read_bytes() == (tmp_path / "plain" / before.file).read_bytes()
        else:
            assert (after.capture, after.caption_kind, after.caption) == ("vertical", "empty", "")
            info = probe_video(tmp_path / "mixed" / after.file)
            assert info.width == 128 and info.height in (128, 228)
    assert load_manifest(tmp_path / "mixed").generator["capture_mix"] == {"vertical": 1.0}
    with pytest.raises(ValueError):
        generate_dataset(tmp_path / "bad", replace(tiny, capture_mix={"fog": 1.0}), seed=2, progress=False)
