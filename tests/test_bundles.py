"""Model bundles and the commands around them: a bundle written and loaded again embeds exactly as before;
`register_model` refuses a bundle its workers could not load; `build_model` and `load_demo` run end to end
on tiny configurations."""
import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
from django.core.management import CommandError, call_command

from matching.models import ModelVersion
from ml.serving.bundle import ModelBundle


def embeddings(model: ModelBundle) -> dict[str, np.ndarray | list[bytes]]:
    """What serving computes with a bundle, on fixed inputs: video, product and text-query vectors and the
    second stage's stored features."""
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (8, 64, 64, 3), dtype=np.uint8) for _ in range(2)]
    photos = [[rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)] for _ in range(2)]
    videos = model.embed_videos(frames, ["new bag! #ootd", ""])
    products = model.embed_products(photos, ["Red canvas backpack. Roomy.", "Mango box. Ripe."])
    query = model.embed_text_query("navy striped backpack")
    return {"videos": videos.vectors, "products": products.vectors, "query": query.vectors,
            "video details": [d.to_bytes() for d in videos.details],
            "product details": [d.to_bytes() for d in products.details]}


def test_bundle_written_and_loaded_again_embeds_the_same(bundle, tmp_path):
    first = ModelBundle.load(bundle)
    assert first.regions is not None  # the product default finds the product in each frame (ml.serving.regions)
    before = embeddings(first)
    copy = ModelBundle.write(tmp_path / "copy", first.encoder, first.instance, first.meta, first.text_query,
                             first.two_stage, first.regions)
    again = ModelBundle.load(copy)
    assert again.meta == first.meta
    after = embeddings(again)
    assert not np.allclose(before["videos"][0], before["videos"][1])  # the inputs differ: equality says something
    for key in ("videos", "products", "query"):
        np.testing.assert_array_equal(after[key], before[key], err_msg=key)
    for key in ("video details", "product details"):
        assert after[key] == before[key], key


# --- register_model -------------------------------------------------------------------------------

def _drop_embed_dim(path):
    meta = json.loads((path / "bundle.json").read_text())
    del meta["embed_dim"]
    (path / "bundle.json").write_text(json.dumps(meta))


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.django_db
@pytest.mark.parametrize("breakage, message", [
    (lambda b: (b / "bundle.json").unlink(), "is not a model bundle (no bundle.json)"),
    (lambda b: (b / "bundle.json").write_text("{\"name\": "), "bundle.json is not valid JSON"),
    (_drop_embed_dim, "lacks 'embed_dim'"),
    (lambda b: (b / "encoder.pt").unlink(), "encoder.pt"),
    (lambda b: _truncate(b / "towers.pt"), "is not a usable model bundle"),
    (lambda b: _truncate(b / "two_stage.pt"), "is not a usable model bundle"),
], ids=["no metadata", "metadata not JSON", "no embed_dim", "no encoder", "towers truncated", "second stage truncated"])
def test_register_model_refuses_a_broken_bundle_and_keeps_the_active_version(bundle, tmp_path, breakage, message):
    call_command("register_model", str(bundle), "--name", "good", "--activate")
    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    breakage(broken)
    with pytest.raises(CommandError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call_command("register_model", str(broken), "--name", "broken", "--activate")
    assert list(ModelVersion.objects.values_list("name", "is_active")) == [("good", True)]


# --- build_model and load_demo --------------------------------------------------------------------

@pytest.mark.django_db
def test_build_model_trains_registers_and_activates_a_bundle_once(settings, tmp_path, capsys):
    settings.MVMATCH_MODELS_DIR = tmp_path / "models"
    tiny = ["--data-size", "tiny", "--tower-steps", "1", "--tower-batch", "8", "--epochs", "1",
            "--batch-size", "8", "--queue-size", "8", "--workers", "1"]
    call_command("build_model", "--name", "smoke", *tiny)
    version = ModelVersion.objects.get(name="smoke")
    assert version.is_active and version.embed_dim > 0 and "val" in version.metrics
    assert ModelBundle.load(version.bundle_path).embed_dim == version.embed_dim
    assert "held-out R@1/R@10" in capsys.readouterr().out
    stamp = (tmp_path / "models" / "smoke" / "bundle.json").stat().st_mtime_ns
    call_command("build_model", "--name", "smoke", *tiny)
    assert "use --force to retrain" in capsys.readouterr().out
    assert (tmp_path / "models" / "smoke" / "bundle.json").stat().st_mtime_ns == stamp  # not trained again


@pytest.fixture
def ontology_restored():
    """A transactional test empties every table at its end: load the ontology again for the tests after it."""
    yield
    call_command("load_ontology", verbosity=0)


@pytest.mark.django_db(transaction=True)
def test_load_demo_ingests_the_catalogue_and_reports_against_chance(bundle, settings, tmp_path, eager_tasks,
                                                                     ontology_restored, capsys):
    """The demo loader on the tiny catalogue with one product filmed under every capture preset, its tasks run
    in-process (eager): every product and video indexed, the report written with the truth of each of the
    generator's own videos and a line per capture condition."""
    from matching.indexing import IndexState
    from matching.models import MicroVideo
    from catalog.models import Product
    from ml.datagen import CONDITIONS, SIZES, generate_dataset

    settings.VAR_DIR = tmp_path
    data = tmp_path / "demo-data"
    manifest = generate_dataset(data, replace(SIZES["tiny"], filmed_per_condition=1), seed=0, progress=False)
    own = [v for v in manifest.videos_in("test") if v.capture is None]
    call_command("register_model", str(bundle), "--name", "demo", "--activate")
    call_command("load_demo", "--data", str(data), "--timeout", "120")
    assert Product.objects.filter(status=IndexState.INDEXED).count() == len(manifest.products_in("test"))
    assert MicroVideo.objects.filter(status=IndexState.INDEXED).count() == len(manifest.videos_in("test"))
    assert len(manifest.videos_in("test")) == len(own) + len(CONDITIONS)
    report = json.loads((tmp_path / "demo-report.json").read_text())
    assert report["videos"] == len(own) and report["products"] == len(manifest.products_in("test"))
    assert all(rank is None or 1 <= rank for rank in report["ranks"]) and len(report["truth"]) == report["videos"]
    assert list(report["conditions"]) == list(CONDITIONS)
    assert all(line["videos"] == 1 and 0 <= line["top1"] <= line["top10"] <= 1 for line in report["conditions"].values())
    out = capsys.readouterr().out
    assert "staff login for the admin: admin / mvmatch-demo" in out
    assert all(f"[demo]   {preset:<12} top-1" in out for preset in CONDITIONS)
