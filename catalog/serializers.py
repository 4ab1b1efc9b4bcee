from django.conf import settings
from django.db import transaction
from rest_framework import serializers

from catalog.models import Category, Product, ProductImage
from catalog.services import resolve_category
from ml.ontology import UnknownCategory


class CategoryField(serializers.Field):
    """Accepts a category id, a path ("clothes/bags/backpack", source spellings too) or a unique name."""

    def __init__(self, level: int | None = None, **kwargs):
        self.level = level
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        try:
            return resolve_category(data, level=self.level)
        except UnknownCategory as exc:
            raise serializers.ValidationError(str(exc))

    def to_representation(self, value: Category):
        return {"id": value.pk, "path": value.path, "name": value.name}


class CategorySerializer(serializers.ModelSerializer):
    level = serializers.CharField(source="get_level_display")

    class Meta:
        model = Category
        fields = ["id", "path", "name", "original_name", "level", "parent"]


class ProductImageSerializer(serializers.ModelSerializer):
    class Meta:
        model = ProductImage
        fields = ["id", "image", "position"]


class ProductSerializer(serializers.ModelSerializer):
    category = CategoryField(level=Category.Level.LOWER)
    photos = serializers.ListField(
        child=serializers.ImageField(), write_only=True, min_length=1, max_length=10,
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

    def validate_photos(self, photos):
        for photo in photos:
            if photo.size > settings.MVMATCH_MAX_PHOTO_BYTES:
                raise serializers.ValidationError(
                    f"photo {photo.name} is {photo.size} bytes; the limit is {settings.MVMATCH_MAX_PHOTO_BYTES}")
        return photos

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
