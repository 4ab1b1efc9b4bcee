"""The towers a bundle ships: exported from a trained model without its training state, loaded by serving
code alone, from a new bundle (towers.pt) and from an old one (instance.pt, a training checkpoint)."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ml.serving.bundle import load_towers
from ml.serving.towers import InstanceConfig, InstanceTowers, embed_products, embed_videos
from ml.training.mqmc import MQMCConfig
from ml.training.train_instance import TrainConfig, export_towers, train

MIDDLE_TO_UPPER = (0, 0, 1, 1)
TINY = InstanceConfig(visual_dim=16, text_dim=16, visual_hidden_dim=32, embed_dim=32, proj_dim=16)
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(params=[TINY, InstanceConfig(**{**TINY.__dict__, "video_prototypes": 2})], ids=["plain", "prototypes"])
def trained(request, clip_like, tmp_path):
    data, _, _ = clip_like(32)
    cfg = TrainConfig(method="mqmc", instance=request.param, epochs=2, batch_size=16, progress=False,
                      mqmc=MQMCConfig(queue_size=16, middle_to_upper=MIDDLE_TO_UPPER))
    model, _ = train(cfg, data, data, out_dir=tmp_path / "run")
    return model.eval(), cfg, data, tmp_path / "run"


def vectors(model, data):
    return (embed_videos(model, data.video_frames, data.video_caption, data.video_frame_mask),
            embed_products(model, data.product_images, data.product_text, data.product_image_mask))


def test_exported_towers_embed_as_the_trained_model_and_carry_no_training_state(trained):
    model, cfg, data, _ = trained
    towers = export_towers(model, cfg)
    for a, b in zip(vectors(model, data), vectors(towers, data)):
        np.testing.assert_array_equal(a, b)
    keys = set(towers.state_dict())
    assert keys and all(k.startswith(("video_tower.", "product_tower.")) for k in keys)
    assert any("queue" in k or "key_head" in k for k in model.state_dict())  # what was left behind


def test_serving_loads_new_and_legacy_bundles_to_the_same_vectors(trained, tmp_path):
    model, cfg, data, run = trained
    towers = export_towers(model, cfg)
    new, legacy = tmp_path / "new", tmp_path / "legacy"
    new.mkdir(), legacy.mkdir()
    torch.save(towers.state_dict(), new / "towers.pt")
    shutil.copyfile(run / "last.pt", legacy / "instance.pt")  # the old bundle format: a training checkpoint
    expected = vectors(model, data)
    for path, meta in ((new, {"instance": towers.config_dict()}), (legacy, {})):
        loaded = load_towers(path, meta)
        assert isinstance(loaded, InstanceTowers) and not loaded.training
        for a, b in zip(expected, vectors(loaded, data)):
            np.testing.assert_array_equal(a, b)
    assert (new / "towers.pt").stat().st_size < (legacy / "instance.pt").stat().st_size


def test_a_bundle_without_towers_or_their_config_is_refused_with_the_reason(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither towers.pt nor instance.pt"):
        load_towers(tmp_path, {})
    torch.save(InstanceTowers(TINY).state_dict(), tmp_path / "towers.pt")
    with pytest.raises(ValueError, match="lacks 'instance'"):
        load_towers(tmp_path, {})
    (tmp_path / "towers.pt").unlink()
    torch.save({"weights": torch.zeros(1)}, tmp_path / "instance.pt")
    with pytest.raises(ValueError, match="not an instance-tower checkpoint"):
        load_towers(tmp_path, {})


def test_loading_a_legacy_bundle_imports_no_training_code(trained, tmp_path):
    """In a fresh interpreter, as a worker would: the modules loaded are serving modules only."""
    _, _, _, run = trained
    (tmp_path / "b").mkdir()
    shutil.copyfile(run / "last.pt", tmp_path / "b" / "instance.pt")
    script = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from ml.serving.bundle import load_towers\n"
        f"load_towers(Path({str(tmp_path / 'b')!r}), {{}})\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('ml'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert "ml.serving.towers" in loaded
    assert not [m for m in loaded if m.startswith(("ml.training", "ml.evaluation", "ml.datagen"))], loaded
