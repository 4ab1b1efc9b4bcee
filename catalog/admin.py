from django.contrib import admin
from django.utils.html import format_html, format_html_join

from catalog.models import Category, Product, ProductImage
from matching import services


def thumbnail(url: str | None, size: int = 96) -> str:
    if not url:
        return "—"
    return format_html('<img src="{}" style="width:{}px;height:{}px;object-fit:cover;border-radius:4px">', url, size, size)


def keyframe_strip(video, size: int = 64) -> str:
    """The video's sampled keyframes in one row, in time order."""
    frames = format_html_join("", "{}", ((thumbnail(kf.image.url, size),) for kf in video.keyframes.all()))
    return format_html('<div style="display:flex;gap:2px;flex-wrap:nowrap">{}</div>', frames) if frames else "—"


def category_filter(level: int, lookup: str):
    """A list filter on one ontology level, titled by the level (the admin would say "by parent" twice)."""

    class CategoryLevelFilter(admin.SimpleListFilter):
        title = f"{Category.Level(level).label} category"
        parameter_name = f"{Category.Level(level).label}_category"

        def lookups(self, request, model_admin):
            return [(c.pk, c.path) for c in Category.objects.filter(level=level)]

        def queryset(self, request, queryset):
            return queryset.filter(**{lookup: self.value()}) if self.value() else queryset

    return CategoryLevelFilter


@admin.register(Category)
class CategoryAdmin(admin.ModelAdmin):
    list_display = ["path", "name", "original_name", "level", "level_index"]
    list_filter = ["level"]
    search_fields = ["path", "name", "original_name"]
    readonly_fields = ["parent", "level", "path", "slug", "level_index"]


class ProductImageInline(admin.TabularInline):
    model = ProductImage
    extra = 0
    fields = ["preview", "image", "position"]
    readonly_fields = ["preview"]

    @admin.display(description="photo")
    def preview(self, obj):
        return thumbnail(obj.image.url if obj.image else None)


@admin.register(Product)
class ProductAdmin(admin.ModelAdmin):
    list_display = ["title", "photo", "category", "price", "merchant", "status", "model_version", "created_at"]
    list_filter = ["status", category_filter(0, "category__parent__parent"), category_filter(1, "category__parent")]
    search_fields = ["title", "description", "sku"]
    autocomplete_fields = ["category"]
    readonly_fields = ["status", "error", "model_version", "indexed_at"]
    inlines = [ProductImageInline]
    actions = ["reindex"]

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("category", "merchant", "model_version").prefetch_related("images")

    @admin.display(description="photo")
    def photo(self, obj):
        image = next(iter(obj.images.all()), None)
        return thumbnail(image.image.url if image else None, 56)

    @admin.action(description="Re-embed and re-index selected products")
    def reindex(self, request, queryset):
        self.message_user(request, f"{services.requeue(queryset)} products queued")
