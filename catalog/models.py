"""Products, their photos, and the 3-level category ontology they are filed under."""
from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q

from matching.indexing import IndexedItem
from ml.serving.texts import product_text


class Category(models.Model):
    """One node of the ontology. Loaded by `manage.py load_ontology`; ids are what the index filters on."""

    class Level(models.IntegerChoices):
        UPPER = 0, "upper"
        MIDDLE = 1, "middle"
        LOWER = 2, "lower"

    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="children")
    level = models.PositiveSmallIntegerField(choices=Level.choices)
    name = models.CharField(max_length=100, help_text="Normalised display name.")
    original_name = models.CharField(max_length=100, help_text="Spelling in the source ontology (an alias).")
    slug = models.SlugField(max_length=100)
    path = models.CharField(max_length=300, unique=True)
    level_index = models.PositiveIntegerField(help_text="Position among the categories of its level (MQMC queue id).")

    class Meta:
        verbose_name_plural = "categories"
        ordering = ["path"]
        constraints = [
            models.CheckConstraint(condition=Q(level__in=[0, 1, 2]), name="category_level_valid"),
            models.CheckConstraint(
                condition=(Q(level=0) & Q(parent__isnull=True)) | (Q(level__gt=0) & Q(parent__isnull=False)),
                name="category_parent_matches_level",
            ),
            models.UniqueConstraint(fields=["parent", "slug"], name="category_unique_slug_per_parent"),
            models.UniqueConstraint(fields=["level", "level_index"], name="category_unique_level_index"),
        ]

    def __str__(self) -> str:
        return self.path

    @property
    def upper(self) -> "Category":
        return self.ancestor(Category.Level.UPPER)

    @property
    def middle(self) -> "Category":
        return self.ancestor(Category.Level.MIDDLE)

    def ancestor(self, level: int) -> "Category":
        node = self
        while node.level > level:
            node = node.parent
        return node


class Product(IndexedItem):
    merchant = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="products")
    sku = models.CharField(max_length=64, blank=True, help_text="Merchant's own reference (optional).")
    title = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    price = models.DecimalField(max_digits=10, decimal_places=2, validators=[MinValueValidator(0)])
    category = models.ForeignKey(
        Category, on_delete=models.PROTECT, related_name="products", limit_choices_to={"level": Category.Level.LOWER}
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [models.CheckConstraint(condition=Q(price__gte=0), name="product_price_non_negative")]

    def __str__(self) -> str:
        return self.title

    @property
    def text(self) -> str:
        """What the text tower reads for a product (the same function builds the training texts)."""
        return product_text(self.title, self.description)


class ProductImage(models.Model):
    product = models.ForeignKey(Product, on_delete=models.CASCADE, related_name="images")
    image = models.ImageField(upload_to="products/%Y/%m/")
    position = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["product", "position", "id"]

    def __str__(self) -> str:
        return f"{self.product} #{self.position}"
