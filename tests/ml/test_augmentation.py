"""The image tower's augmentation (ml.training.train_tower.Augmentation) and the instance towers' caption dropout."""
from dataclasses import replace

import pytest
import torch

from ml.training.train_instance import drop_captions
from ml.training.train_tower import AUGMENTATIONS, Augmentation, AugmentationMix, clutter

CAPTURE = AUGMENTATIONS["capture"]
# Every op off: the affine resample is the identity, the colour factors are 1.
OFF = Augmentation(min_scale=1.0, max_aspect=1.0, flip=False, rotation=0.0, jitter=0.0, colour_cast=0.0, paste=0.0,
                   blur=0.0, noise=0.0, cutout=0.0)
OPS = {"crop": dict(min_scale=0.25), "aspect": dict(min_scale=0.5, max_aspect=2.0), "flip": dict(flip=True),
       "rotation": dict(rotation=20.0), "jitter": dict(jitter=0.4), "colour_cast": dict(colour_cast=0.2),
       "paste": dict(paste=1.0), "blur": dict(blur=1.0), "noise": dict(noise=0.1), "cutout": dict(cutout=1.0),
       "overlay": dict(overlay=1.0)}


def photos(n: int = 4, size: int = 32) -> torch.Tensor:
    """Catalogue-like images: a light plain backdrop with a red square covering the middle quarter."""
    x = torch.full((n, 3, size, size), 0.92)
    x[:, :, size // 4: 3 * size // 4, size // 4: 3 * size // 4] = torch.tensor([0.8, 0.1, 0.1]).view(3, 1, 1)
    return x


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_capture_augmentation_keeps_shape_and_range_and_is_seeded():
    pixels = torch.rand(1, 3, 64, 64).repeat(6, 1, 1, 1)
    first = CAPTURE(pixels, seeded(0))
    assert first.shape == pixels.shape and first.dtype == pixels.dtype
    assert first.min() >= 0 and first.max() <= 1
    assert torch.equal(first, CAPTURE(pixels, seeded(0)))
    assert not torch.equal(first, CAPTURE(pixels, seeded(1)))
    assert not torch.allclose(first[0], first[1])  # parameters per image


def test_with_every_op_off_the_images_pass_unchanged():
    pixels = torch.rand(3, 3, 32, 32)
    assert torch.allclose(OFF(pixels, seeded()), pixels, atol=1e-5)


@pytest.mark.parametrize("op", sorted(OPS))
def test_each_op_alone_changes_the_images(op):
    pixels = photos() * torch.rand(4, 3, 32, 32).clamp(min=0.5)  # some texture, so flips and blurs show
    out = replace(OFF, **OPS[op])(pixels, seeded())
    assert out.shape == pixels.shape and out.min() >= 0 and out.max() <= 1
    assert not torch.allclose(out, pixels, atol=1e-3)


def test_overlay_covers_part_of_each_image_with_flat_marks():
    pixels = photos(16, 64)
    out = replace(OFF, overlay=1.0)(pixels, seeded())
    covered = (out - pixels).abs().amax(dim=1).gt(1e-6).float().mean(dim=(1, 2))
    assert covered.min() > 0.01 and covered.max() < 0.5  # a banner and stickers, not a new image
    half = replace(OFF, overlay=0.5)(pixels, seeded(3))
    assert torch.equal(half, replace(OFF, overlay=0.5)(pixels, seeded(3)))
    assert 0 < (half - pixels).abs().flatten(1).amax(dim=1).gt(1e-4).sum() < 16  # a share of the images


@pytest.mark.parametrize("side", [0.3, 0.5, 0.8])
def test_paste_puts_the_product_at_the_configured_scale(side):
    aug = replace(OFF, paste=1.0, paste_scale=(side, side), paste_out=0.0)
    pixels = photos(8, 64)
    out, alpha = aug.paste_onto_clutter(pixels, seeded())
    # The plain backdrop is keyed out: only the red square (a quarter of the photo) lands, at side^2 of its area.
    assert alpha.mean(dim=(1, 2, 3)).tolist() == pytest.approx([0.25 * side ** 2] * 8, abs=0.02)
    red = (out[:, 0] > 0.7) & (out[:, 1] < 0.2) & (out[:, 2] < 0.2)
    assert (red.float().mean(dim=(1, 2)) >= 0.25 * side ** 2 * 0.8).all()
    assert not torch.allclose(out[alpha.expand_as(out) < 0.01], torch.tensor(0.92), atol=0.05)  # clutter, not backdrop


def test_paste_of_a_frame_without_a_plain_border_places_the_whole_frame_partly_out_of_view():
    frames = torch.rand(64, 3, 32, 32)
    aug = replace(OFF, paste=1.0, paste_scale=(0.5, 0.5), paste_out=0.5)
    _, alpha = aug.paste_onto_clutter(frames, seeded())
    coverage = alpha.mean(dim=(1, 2, 3))
    assert coverage.max() == pytest.approx(0.25, abs=0.03)  # the whole frame, a quarter of the area
    assert coverage.min() < 0.2  # some are partly out of frame


def test_paste_share_leaves_the_other_images_untouched():
    pixels = photos(200)
    out = replace(OFF, paste=0.3)(pixels, seeded())
    untouched = torch.isclose(out, pixels, atol=1e-5).flatten(1).all(dim=1).float().mean()
    assert untouched.item() == pytest.approx(0.7, abs=0.1)


def test_a_mix_sends_each_image_through_one_choice_by_weight_and_is_seeded():
    pixels = photos(400)
    mix = AugmentationMix(((OFF, 1.0), (replace(OFF, cutout=1.0, cutout_size=0.9), 3.0)))
    out = mix(pixels, seeded(5))
    untouched = torch.isclose(out, pixels, atol=1e-5).flatten(1).all(dim=1).float().mean()
    assert untouched.item() == pytest.approx(0.25, abs=0.06)
    assert torch.equal(out, mix(pixels, seeded(5)))
    assert not torch.equal(out, mix(pixels, seeded(6)))
    assert torch.allclose(AugmentationMix(((OFF, 1.0),))(pixels, seeded()), pixels, atol=1e-5)


def test_clutter_is_textured_and_seeded():
    first = clutter(4, 32, 32, seeded(3))
    assert first.shape == (4, 3, 32, 32) and first.min() >= 0 and first.max() <= 1
    assert torch.equal(first, clutter(4, 32, 32, seeded(3)))
    assert (first.flatten(1).std(dim=1) > 0.05).all()


def test_caption_dropout_swaps_a_share_of_captions_for_the_blank_one():
    from ml.training.data import PairBatch

    n = 1000
    batch = PairBatch(video_frames=torch.zeros(n, 2, 4), video_frame_mask=torch.ones(n, 2, dtype=torch.bool),
                      video_caption=torch.ones(n, 3), product_images=torch.zeros(n, 1, 4),
                      product_image_mask=torch.ones(n, 1, dtype=torch.bool), product_text=torch.zeros(n, 3),
                      middle=torch.zeros(n, dtype=torch.long), product_index=torch.arange(n))
    torch.manual_seed(0)
    out = drop_captions(batch, 0.3, torch.full((3,), -1.0))
    blank = (out.video_caption == -1).all(dim=1)
    assert blank.float().mean().item() == pytest.approx(0.3, abs=0.05)
    assert (out.video_caption[~blank] == 1).all()
