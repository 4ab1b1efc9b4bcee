"""Catalog logic that views, commands and tasks share."""
from pathlib import Path

from django.conf import settings
from django.db import transaction

from catalog.models import Category
from ml.serving.ontology import BUNDLED_PATH, Ontology, UnknownCategory, normalise_name, slugify

SHARED_ONTOLOGY = settings.BASE_DIR.parent / "shared" / "ontology" / "mqmc_ontology.json"


def default_ontology_path() -> Path:
    """The shared ontology when it sits beside the checkout, otherwise the copy bundled in ml/data."""
    return SHARED_ONTOLOGY if SHARED_ONTOLOGY.exists() else BUNDLED_PATH


@transaction.atomic
def sync_ontology(ontology: Ontology) -> dict[str, int]:
    """Create or update every category by path; running it twice changes nothing."""
    created = updated = 0
    by_path: dict[str, Category] = {}
    for node in ontology.nodes:  # pre-order: parents come first
        fields = {
            "parent": by_path[node.parent.path] if node.parent else None,
            "level": node.level,
            "name": node.name,
            "original_name": node.original_name,
            "slug": node.path.rsplit("/", 1)[-1],
            "level_index": node.level_index,
        }
        obj = Category.objects.filter(path=node.path).first()
        if obj is None:
            obj = Category.objects.create(path=node.path, **fields)
            created += 1
        elif any(getattr(obj, k) != v for k, v in fields.items()):
            for k, v in fields.items():
                setattr(obj, k, v)
            obj.save()
            updated += 1
        by_path[node.path] = obj
    return {"created": created, "updated": updated, "total": len(ontology)}


def resolve_category(ref, *, level: int | None = None) -> Category:
    """A category from its id, its path (original spellings accepted) or a unique name.

    Raises UnknownCategory with a message fit for an API response.
    """
    if isinstance(ref, Category):
        category = ref
    elif isinstance(ref, int) or (isinstance(ref, str) and ref.strip().isdigit()):
        # An id too long for the database's integer is no id (and would overflow the query).
        category = Category.objects.filter(pk=int(ref)).first() if int(ref) < 2 ** 63 else None
        if category is None:
            raise UnknownCategory(f"unknown category id {ref}")
    else:
        ref = str(ref).strip()
        if not ref:
            raise UnknownCategory("category is required")
        if "/" in ref:
            path = "/".join(slugify(part) for part in ref.strip("/").split("/"))
            category = Category.objects.filter(path=path).first()
            if category is None:
                raise UnknownCategory(f"unknown category path {ref!r}")
        else:
            matches = list(Category.objects.filter(name=normalise_name(ref))) or list(
                Category.objects.filter(original_name__iexact=ref)
            )
            if not matches:
                raise UnknownCategory(f"unknown category {ref!r}")
            if len(matches) > 1:
                raise UnknownCategory(
                    f"category name {ref!r} is ambiguous; use a path: " + ", ".join(m.path for m in matches)
                )
            category = matches[0]
    if level is not None and category.level != level:
        raise UnknownCategory(
            f"category {category.path!r} is a {category.get_level_display()} category; "
            f"a {Category.Level(level).label} category is required"
        )
    return category
