"""Model versions: which trained bundle embeds new uploads, and where each bundle lives."""
from pathlib import Path

from django.db import transaction

from matching.models import ModelVersion
from ml.bundle import read_meta


@transaction.atomic
def register_bundle(bundle_dir, *, name: str | None = None, activate: bool = False) -> ModelVersion:
    path = Path(bundle_dir).resolve()
    meta = read_meta(path)
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
