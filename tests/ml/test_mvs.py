"""The MVS feature-pickle importer: refuses untrusted pickles, accepts both shapes, trains and evaluates."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from ml.serving.towers import InstanceConfig
from ml.training.mqmc import MQMCConfig, ontology_middle_to_upper
from ml.evaluation.mvs import (MVSFormatError, UntrustedPickleError, load_mvs_splits, load_records, main, records_to_features)
from ml.training.data import FeatureSet
from ml.training.train_instance import TrainConfig, evaluate, train

VISUAL, TEXT = 2048, 768


def mvs_records(num_products: int, seed: int = 0, pooled_every: int = 3) -> list[dict]:
    """Pairs whose four features are noisy views of one latent code per product; shapes vary like the paper's."""
    rng = np.random.default_rng(seed)
    maps = np.random.default_rng(99)
    to_visual, to_text = maps.standard_normal((8, VISUAL)), maps.standard_normal((8, TEXT))
    records = []
    for p in range(num_products):
        latent = rng.standard_normal(8)
        frames = latent @ to_visual + 0.5 * rng.standard_normal((int(rng.integers(2, 6)), VISUAL))
        photos = latent @ to_visual + 0.3 * rng.standard_normal((int(rng.integers(1, 3)), VISUAL))
        middle = p % 30
        records.append({
            "video": frames.mean(0) if p % pooled_every == 0 else frames.astype(np.float32),  # [2048] or [T, 2048]
            "img": photos[0] if p % 2 else torch.tensor(photos, dtype=torch.float32),  # [2048] or [P, 2048]
            "videotext": (latent @ to_text + 0.3 * rng.standard_normal(TEXT)).tolist(),
            "imgtext": (latent @ to_text)[None].astype(np.float32),  # [1, 768]
            "queue_index": np.int64(middle),
            "first_cluster": ontology_middle_to_upper()[middle], "second_cluster": middle, "third_cluster": 7 * p,
        })
    return records


@pytest.fixture
def pickle_path(tmp_path):
    path = tmp_path / "mvs.pkl"
    path.write_bytes(pickle.dumps(mvs_records(60)))
    return path


class Boobytrap:
    def __reduce__(self):
        return (exec, ("raise SystemError('pickle code ran')",))


def test_refuses_to_unpickle_without_the_trust_flag(tmp_path, capsys):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps([Boobytrap()]))
    with pytest.raises(UntrustedPickleError, match="trust"):
        load_records(path)
    with pytest.raises(SystemExit) as exit_info:
        main([str(path), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2 and "--trust-pickle" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemError, match="pickle code ran"):  # what the flag lets through: only for trusted files
        load_records(path, trust=True)


def test_both_shapes_become_padded_feature_sets(pickle_path):
    records = load_records(pickle_path, trust=True)
    records.append({**records[1]})  # a second video of product 1: one gallery entry
    data = records_to_features(records)
    assert data.num_videos == 61 and data.num_products == 60
    assert data.video_frames.shape[::2] == (61, VISUAL) and data.video_caption.shape == (61, TEXT)
    assert data.product_images.shape[::2] == (60, VISUAL) and data.product_text.shape == (60, TEXT)
    assert data.video_frame_mask[0].sum() == 1  # pooled [2048] video: one "frame"
    assert data.video_frame_mask[1].sum() == len(records[1]["video"])
    assert data.product_image_mask[1].sum() == 1 and data.product_image_mask[0].sum() == len(records[0]["img"])
    assert torch.allclose(data.video_frames[1, : len(records[1]["video"])], torch.as_tensor(records[1]["video"]))
    assert data.video_product[-1] == 1
    assert data.product_middle.tolist() == [p % 30 for p in range(60)]
    data.check_categories(ontology_middle_to_upper())


@pytest.mark.parametrize("change, message", [
    (lambda r: r.pop("imgtext"), "lacks 'imgtext'"),
    (lambda r: r.update(video=np.zeros((2, 3, VISUAL))), "shape"),
    (lambda r: r.update(img=np.zeros(512)), "512-d"),
    (lambda r: r.update(videotext=np.zeros((2, TEXT))), "one vector"),
    (lambda r: r.update(queue_index=31), "queue_index 31"),
    (lambda r: r.update(queue_index="bags"), "integer"),
    (lambda r: r.update(video=np.full(VISUAL, np.nan)), "NaN"),
])
def test_malformed_records_get_clear_errors(change, message):
    records = mvs_records(3)
    change(records[2])
    with pytest.raises(MVSFormatError, match=message):
        records_to_features(records)


def test_split_by_product_then_train_and_evaluate_with_paper_dimensions(pickle_path, tmp_path):
    splits = load_mvs_splits([pickle_path], trust=True, val_fraction=0.2, test_fraction=0.2, seed=0)
    assert [splits[s].num_products for s in ("train", "val", "test")] == [36, 12, 12]
    train_rows = {tuple(splits["train"].product_text[i, :4].tolist()) for i in range(36)}
    assert not train_rows & {tuple(splits["test"].product_text[i, :4].tolist()) for i in range(12)}

    instance = InstanceConfig.preset("mqmc-paper", visual_hidden_dim=64, embed_dim=64, proj_dim=32)
    cfg = TrainConfig(method="mqmc", instance=instance, mqmc=MQMCConfig(queue_size=8), lr=3e-3, batch_size=12,
                      epochs=8, progress=False)
    model, history = train(cfg, splits["train"], splits["val"])
    metrics = evaluate(model, splits["test"])
    assert metrics["v2p_R@5"] > 100 * 5 / 12 + 15  # clearly above chance (41.7 %)

    main([str(pickle_path), "--out", str(tmp_path / "pt"), "--trust-pickle", "--val-fraction", "0.2",
          "--test-fraction", "0.2"])
    saved = FeatureSet.load(tmp_path / "pt" / "test.pt")
    assert torch.equal(saved.product_text, splits["test"].product_text)
