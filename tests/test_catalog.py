"""The ontology in the database: loading, aliases, and the integrity the database itself enforces."""
import pytest
from django.core.management import call_command
from django.db import IntegrityError, transaction

from catalog.models import Category
from catalog.services import resolve_category
from ml.serving.ontology import UnknownCategory, load_ontology

pytestmark = pytest.mark.django_db


def test_ontology_has_three_levels_with_unique_paths():
    assert Category.objects.filter(level=0).count() == 6
    assert Category.objects.filter(level=1).count() == 30
    assert Category.objects.filter(level=2).count() == len(load_ontology().lower) == 312
    potato = Category.objects.get(path="food/vegetable/potato")
    assert potato.parent.path == "food/vegetable" and potato.upper.path == "food"


def test_loading_twice_changes_nothing(capsys):
    before = list(Category.objects.values_list("pk", "path", "name", "parent_id"))
    call_command("load_ontology")
    assert "0 created, 0 updated" in capsys.readouterr().out
    assert list(Category.objects.values_list("pk", "path", "name", "parent_id")) == before


@pytest.mark.parametrize("ref, path", [
    ("clothes/bags/backpank", "clothes/bags/backpack"),  # the source's spelling still maps
    ("backpank", "clothes/bags/backpack"),
    ("Backpack", "clothes/bags/backpack"),
    ("food/vegatable/potato", "food/vegetable/potato"),
    ("T-shirt ", "clothes/tops/t-shirt"),
])
def test_resolve_accepts_normalised_and_original_names(ref, path):
    assert resolve_category(ref).path == path


def test_resolve_by_id_and_level_check():
    lower = Category.objects.get(path="food/fruits/mango")
    assert resolve_category(str(lower.pk), level=2) == lower
    with pytest.raises(UnknownCategory, match="lower category is required"):
        resolve_category("food/fruits", level=2)


@pytest.mark.parametrize("ref, message", [
    ("clothes/bags/spaceship", "unknown category path"),
    ("spaceship", "unknown category"),
    ("cream", "ambiguous"),
    ("999999", "unknown category id"),
    ("", "category is required"),
])
def test_resolve_rejects_unknown_or_ambiguous(ref, message):
    with pytest.raises(UnknownCategory, match=message):
        resolve_category(ref)


def test_database_rejects_duplicate_paths_and_bad_levels():
    food = Category.objects.get(path="food")
    with pytest.raises(IntegrityError), transaction.atomic():
        Category.objects.create(path="food", level=0, name="x", original_name="x", slug="food2", level_index=99)
    with pytest.raises(IntegrityError), transaction.atomic():  # a middle category must have a parent
        Category.objects.create(path="orphan", level=1, name="x", original_name="x", slug="orphan", level_index=99)
    with pytest.raises(IntegrityError), transaction.atomic():
        Category.objects.create(parent=food, path="food/x", level=7, name="x", original_name="x", slug="x",
                                level_index=99)
