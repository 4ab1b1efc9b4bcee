"""Model versions: which trained bundle embeds new uploads, and where each bundle lives."""
import json
from pathlib import Path

from django.db import transaction

from matching.models import ModelVersion
from ml.serving.bundle import META_FILE, ModelBundle


def loadable_meta(path: Path) -> dict:
    """A bundle's metadata, once the whole bundle loads: a version the workers cannot load must not become
    the one every upload is embedded with. Raises FileNotFoundError or ValueError with the reason."""
    try:
        return ModelBundle.load(path).meta
    except FileNotFoundError:
        raise
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path / META_FILE} is not valid JSON: {exc}") from exc
    except ValueError:
        raise
    except Exception as exc:  # torch.load on a damaged file raises several types
        raise ValueError(f"{path} is not a usable model bundle: {type(exc).__name__}: {exc}") from exc


@transaction.atomic
def register_bundle(bundle_dir, *, name: str | None = None, activate: bool = False) -> ModelVersion:
    path = Path(bundle_dir).resolve()
    meta = loadable_meta(path)
    metrics = dict(meta.get("metrics", {}))
    if meta.get("second_stage"):  # validation before / after re-ranking + boost, tuned weights
        metrics["second_stage"] = meta["second_stage"]
    version, _ = ModelVersion.objects.update_or_create(
        name=name or meta["name"],
        defaults={"bundle_path": str(path), "embed_dim": meta["embed_dim"], "metrics": metrics},
    )
    if activate:
        ModelVersion.objects.exclude(pk=version.pk).update(is_active=False)
        version.is_active = True
        version.save(update_fields=["is_active"])
    return version
