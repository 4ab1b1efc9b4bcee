"""Instance towers: the feature shortcut starts at the encoders' own similarity."""
import pytest
import torch
import torch.nn.functional as F

from ml.serving.towers import InstanceConfig, InstanceTower


def test_feature_shortcut_starts_at_the_mean_of_the_raw_cosines():
    torch.manual_seed(0)
    cfg = InstanceConfig(visual_dim=16, text_dim=8, embed_dim=32, visual_hidden_dim=32, proj_dim=24,
                         feature_shortcut=True)
    video, product = InstanceTower(cfg, "mean").eval(), InstanceTower(cfg, "mean").eval()
    frames, caption = torch.randn(5, 4, 16), torch.randn(5, 8)
    photos, text = torch.randn(5, 2, 16), torch.randn(5, 8)
    sim = F.normalize(video.embed(frames, None, caption), dim=1) @ F.normalize(product.embed(photos, None, text), dim=1).T
    raw_visual = F.normalize(frames.mean(1), dim=1) @ F.normalize(photos.mean(1), dim=1).T
    raw_text = F.normalize(caption, dim=1) @ F.normalize(text, dim=1).T
    torch.testing.assert_close(sim, (raw_visual + raw_text) / 2)


def test_feature_shortcut_needs_the_concatenated_width():
    with pytest.raises(ValueError, match="proj_dim"):
        InstanceTower(InstanceConfig(visual_dim=16, text_dim=8, proj_dim=16, feature_shortcut=True), "mean")
