"""The robustness command (ml.evaluation.robustness) end to end on a tiny bundle, and its serving-path pieces."""
import json

import numpy as np
import pytest

from ml.datagen import CONDITIONS, SIZES
from ml.datagen.capture import render_capture, write_capture
from ml.datagen.catalog import sample_products
from ml.datagen.draw import render_product_photo
from ml.evaluation import robustness
from ml.evaluation.metrics import retrieval_ranks
from ml.serving.bundle import ModelBundle
from ml.serving.texts import product_text


def test_command_writes_every_row_with_chance(bundle, tmp_path, capsys):
    out, doc = tmp_path / "out", tmp_path / "docs" / "robustness.md"
    robustness.main(["--bundle", str(bundle), "--baseline", str(bundle), "--out", str(out), "--doc", str(doc),
                     "--products", "2", "--seed", "99", "--video-size", "32", "--seconds", "1", "1.5",
                     "--frames", "2", "--workers", "2"])
    assert capsys.readouterr().err == ""  # quiet when stderr is not a terminal
    text = doc.read_text()
    results = json.loads((out / "results.json").read_text())
    assert results["setup"]["seed"] == 99 and results["setup"]["products"] == 2
    assert "seed 99" in text and "in " in text and "Machine:" in text
    assert ("| row | model R@1 | model R@10 | model MdR | baseline R@1 | baseline R@10 | baseline MdR "
            "| chance R@1 | chance R@10 | chance MdR |") in text
    rows = robustness.benchmark_rows()
    assert [r.name for r in rows] == [*CONDITIONS, "caption: hashtags", "caption: none", "visual only (empty caption)",
                                      "all, visual only"]
    for row in rows:
        line = next(line for line in text.splitlines() if line.startswith(f"| {row.name} |"))
        cells = [c.strip() for c in line.split("|")[2:-2]]
        assert len(cells) == 9 and cells[-3:] == ["50.0", "100.0", "1.5"]  # chance over 2 products
        for model in results["models"]:
            metrics = model["rows"][row.name]
            assert all(1 <= r <= 2 for r in metrics["ranks"]) and len(metrics["ranks"]) == 2
    for preset in CONDITIONS:  # real files, one per product and preset
        assert len(list((out / "data" / "videos" / preset).glob("*.mp4"))) == 2


@pytest.fixture(scope="module")
def served(bundle, tmp_path_factory):
    """A loaded bundle, 4 products and a video each made and sampled as the command does."""
    root = tmp_path_factory.mktemp("served")
    products = sample_products(SIZES["tiny"], 5)[:4]
    frames = []
    for i, p in enumerate(products):
        video = render_capture(p, np.random.default_rng(i), 12, 32, conditions=CONDITIONS["vertical"])
        frames.append(robustness.sampled_frames(write_capture(video, root / f"{i}.mp4", fps=8), 3))
    model = ModelBundle.load(bundle)
    gallery = model.embed_products([[render_product_photo(p, 0, 64)] for p in products],
                                   [product_text(p.title, p.description) for p in products])
    return model, products, frames, gallery


def test_cached_features_embed_videos_as_the_bundle_does(served):
    model, products, frames, _ = served
    captions = ["my new bag #fyp", "", "link in bio", "#haul"]
    expected = model.embed_videos(frames, captions)
    feats, mask = robustness.frame_features(model, frames)
    got = robustness.embed_videos_from(model, feats, mask, model.encoder.encode_texts(captions),
                                       [bool(c) for c in captions])
    np.testing.assert_allclose(got.vectors, expected.vectors, atol=1e-5)
    assert [d.caption is None for d in got.details] == [d.caption is None for d in expected.details]


def test_ranks_without_second_stage_are_the_index_order(served):
    model, products, frames, gallery = served
    videos = model.embed_videos(frames, [""] * len(frames))
    levels = [robustness.category_levels(p) for p in products]
    index_only = robustness.served_ranks(model, videos, gallery, levels, top_n=0)
    np.testing.assert_array_equal(index_only, retrieval_ranks(videos.vectors, gallery.vectors, np.arange(4))[0])
    assert all(level >= 0 for lv in levels for level in lv)
    # the whole gallery re-ranked: each video's rank is its product's place by the second stage's final score
    reranked = robustness.served_ranks(model, videos, gallery, levels, top_n=4)
    first = videos.vectors @ gallery.vectors.T
    for v in range(4):
        score = model.two_stage.rank_products(videos.details[v], gallery.details, levels, first[v].tolist()).score
        assert reranked[v] == 1 + int((score > score[v]).sum())
