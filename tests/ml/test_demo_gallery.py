"""The demo's figures offline (ml.evaluation.demo_gallery) on the tiny end-to-end catalogue and bundle."""
import json

import numpy as np
import pytest

from ml.evaluation import demo_gallery, robustness
from ml.evaluation.metrics import retrieval_ranks
from ml.serving.bundle import ModelBundle
from ml.serving.features import load_photo
from ml.serving.texts import product_text


def test_command_reports_each_bundle_on_a_catalogue_already_generated(bundle, catalogue, tmp_path, capsys):
    """An existing manifest is read, not generated again; the same bundle twice gives the same row."""
    before = sorted(p.name for p in catalogue.root.rglob("*"))
    out = tmp_path / "gallery.json"
    demo_gallery.main(["--bundle", str(bundle), "--bundle", str(bundle), "--data", str(catalogue.root),
                       "--out", str(out)])
    assert sorted(p.name for p in catalogue.root.rglob("*")) == before
    results = json.loads(out.read_text())
    assert len(results) == 2 and results[0]["lines"] == results[1]["lines"]
    own = results[0]["lines"][demo_gallery.OWN]
    videos = catalogue.videos_in("test")
    assert results[0]["products"] == len(catalogue.products_in("test")) and own["videos"] == len(videos)
    ranks = np.array(own["ranks"])
    assert ((1 <= ranks) & (ranks <= results[0]["products"])).all()
    assert own["top1"] == np.mean(ranks <= 1) and own["top10"] == np.mean(ranks <= 10)
    table = capsys.readouterr().out.splitlines()
    assert table[0] == f"| bundle | {demo_gallery.OWN} ({len(videos)}) |"
    assert table[2] == f"| e2e (`{bundle}`) | {own['top1']:.0%} / {own['top10']:.0%} |" == table[3]


def test_index_order_ranks_are_the_served_first_stage(bundle, catalogue):
    """Without re-ranking, a video's rank is its true product's place by the bundle's own embeddings: the
    frames the worker samples, the product photos and texts the ingest task reads."""
    model = ModelBundle.load(bundle)
    products, videos = catalogue.products_in("test"), catalogue.videos_in("test")
    frames = [robustness.sampled_frames(catalogue.root / v.file) for v in videos]
    photos = [[load_photo(catalogue.root / rel) for rel in p.images] for p in products]
    got = demo_gallery.evaluate(bundle, catalogue, photos, frames, rerank_top_n=0)["lines"][demo_gallery.OWN]["ranks"]
    gallery = model.embed_products(photos, [product_text(p.title, p.description) for p in products])
    embedded = model.embed_videos(frames, [v.caption for v in videos])
    column = {p.sku: i for i, p in enumerate(products)}
    truth = np.array([column[v.product_sku] for v in videos])
    np.testing.assert_array_equal(got, retrieval_ranks(embedded.vectors, gallery.vectors, truth)[0])


def test_a_path_that_is_not_a_bundle_is_refused_before_anything_is_generated(bundle, tmp_path, capsys):
    data = tmp_path / "data"
    with pytest.raises(SystemExit) as exit_:
        demo_gallery.main(["--bundle", str(bundle), "--bundle", str(tmp_path / "nothing"), "--data", str(data)])
    assert exit_.value.code == 2 and "is not a model bundle" in capsys.readouterr().err
    assert not data.exists()
