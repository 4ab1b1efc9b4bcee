from django.conf import settings
from django.db import transaction
from drf_spectacular.extensions import OpenApiSerializerFieldExtension
from rest_framework import serializers

from catalog.models import Category, Product, ProductImage
from catalog.photos import PhotoError, check_photo
from catalog.services import resolve_category
from ml.serving.ontology import UnknownCategory

MAX_ID = 2**63 - 1  # the database's integer range; a longer number is no id


class CategoryField(serializers.Field):
    """Accepts a category id, a path ("clothes/bags/backpack", source spellings too) or a unique name;
    answers with the category object (id, path, name)."""

    def __init__(self, level: int | None = None, **kwargs):
        self.level = level
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, (int, str)):
            raise serializers.ValidationError("a category id, path or name is required")
        text = str(data).strip()
        if "\x00" in text or len(text) > 300:
            raise serializers.ValidationError("not a category id, path or name")
        if text.isdigit() and int(text) > MAX_ID:
            raise serializers.ValidationError(f"unknown category id {text}")
        try:
            return resolve_category(data, level=self.level)
        except UnknownCategory as exc:
            raise serializers.ValidationError(str(exc))

    def to_representation(self, value: Category):
        return {"id": value.pk, "path": value.path, "name": value.name}


class CategoryFieldSchema(OpenApiSerializerFieldExtension):
    """The schema of CategoryField: an id or a path/name in requests, an object in responses."""

    target_class = CategoryField

    def map_serializer_field(self, auto_schema, direction):
        nullable = {"nullable": True} if self.target.allow_null else {}
        if direction == "request":
            return {"oneOf": [{"type": "integer", "minimum": 1}, {"type": "string", "minLength": 1}],
                    "description": "Category id, path (clothes/bags/backpack) or unique name.", **nullable}
        return {"type": "object", "required": ["id", "path", "name"], **nullable,
                "properties": {"id": {"type": "integer"}, "path": {"type": "string"}, "name": {"type": "string"}}}


class CategoryFilterParams(serializers.Serializer):
    """Query parameters of the category list."""

    level = serializers.ChoiceField(choices=[label for _, label in Category.Level.choices], required=False)
    parent = serializers.IntegerField(min_value=1, max_value=MAX_ID, required=False, help_text="A category id.")

    def validate_level(self, value: str) -> int:
        return {label: level for level, label in Category.Level.choices}[value]


class CategorySerializer(serializers.ModelSerializer):
    level = serializers.CharField(source="get_level_display")

    class Meta:
        model = Category
        fields = ["id", "path", "name", "original_name", "level", "parent"]


class ProductImageSerializer(serializers.ModelSerializer):
    image = serializers.SerializerMethodField(help_text="Served after a permission check (matching.media).")

    class Meta:
        model = ProductImage
        fields = ["id", "image", "position"]

    def get_image(self, obj) -> str | None:
        from matching.media import url_of

        return url_of(obj, self.context.get("request"))


class PhotoField(serializers.ImageField):
    """An image whose byte size and pixel count (from its header) are checked before Pillow verifies it."""

    def to_internal_value(self, data):
        name = getattr(data, "name", "photo")
        size = getattr(data, "size", None)
        if size is not None and size > settings.MVMATCH_MAX_PHOTO_BYTES:
            raise serializers.ValidationError(
                f"photo {name} is {size} bytes; the limit is {settings.MVMATCH_MAX_PHOTO_BYTES}")
        if hasattr(data, "seek"):
            try:
                check_photo(data, f"photo {name}")
            except PhotoError as exc:
                raise serializers.ValidationError(str(exc))
            except OSError:
                data.seek(0)  # not an image: the image field's own check says so
        return super().to_internal_value(data)


class ProductSerializer(serializers.ModelSerializer):
    category = CategoryField(level=Category.Level.LOWER)
    photos = serializers.ListField(
        child=PhotoField(), write_only=True, min_length=1, max_length=settings.MVMATCH_MAX_PHOTOS,
        help_text="One or more product photos (multipart).",
    )
    images = ProductImageSerializer(many=True, read_only=True)

    class Meta:
        model = Product
        fields = ["id", "sku", "title", "description", "price", "category", "photos", "images",
                  "status", "error", "created_at", "indexed_at"]
        read_only_fields = ["status", "error", "created_at", "indexed_at"]

    def validate_title(self, value: str) -> str:
        if not value.strip():
            raise serializers.ValidationError("title must not be blank")
        return value.strip()

    def get_fields(self):
        fields = super().get_fields()
        if self.instance is not None:  # photos are optional when updating
            fields["photos"].required = False
        return fields

    @transaction.atomic
    def create(self, validated_data):
        photos = validated_data.pop("photos")
        product = Product.objects.create(**validated_data)
        for position, photo in enumerate(photos):
            ProductImage.objects.create(product=product, image=photo, position=position)
        return product

    @transaction.atomic
    def update(self, instance, validated_data):
        photos = validated_data.pop("photos", None)
        product = super().update(instance, validated_data)
        if photos:
            for old in product.images.all():
                old.image.delete(save=False)
            product.images.all().delete()
            for position, photo in enumerate(photos):
                ProductImage.objects.create(product=product, image=photo, position=position)
        return product
