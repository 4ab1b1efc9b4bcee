import logging

from django.contrib import admin, messages
from django.utils.html import format_html, format_html_join

from catalog.models import Category, Product, ProductImage
from matching import services
from matching.admin_actions import recompute_matches
from matching.media import url_of

log = logging.getLogger(__name__)

def thumbnail(url: str | None, size: int = 96, style: str = "", title: str = "") -> str:
    if not url:
        return "—"
    return format_html('<img src="{}" title="{}" style="width:{}px;height:{}px;object-fit:cover;border-radius:4px;{}">',
                       url, title, size, size, style)


def keyframe_strip(video, size: int = 64, driving: int | None = None) -> str:
    """The video's sampled keyframes in one row, in time order. Frames the stored embedding does not pool
    (not salient) are faded; ``driving``, the frame that drove a match, is outlined."""

    def frame(kf) -> str:
        style = "" if kf.salient else "opacity:.35;"
        title = f"frame {kf.position} at {kf.timestamp:.1f} s" + ("" if kf.salient else " (not salient)")
        if kf.position == driving:
            style += "outline:3px solid #e8590c;outline-offset:-3px;"
            title += ": drove this match"
        return thumbnail(url_of(kf), size, style, title)

    frames = format_html_join("", "{}", ((frame(kf),) for kf in video.keyframes.all()))
    return format_html('<div style="display:flex;gap:2px;flex-wrap:nowrap">{}</div>', frames) if frames else "—"


class TextSearchMixin:
    """The admin search box by words and by meaning: rows whose fields contain the words, plus the
    active model's text-search hits (`services.search_text`) among the rows the filters keep."""

    text_search_k = 20

    def get_search_results(self, request, queryset, search_term):
        found, may_have_duplicates = super().get_search_results(request, queryset, search_term)
        if not search_term.strip():
            return found, may_have_duplicates
        try:
            result = services.search_text(search_term, self.text_search_k)
        except Exception as exc:  # the word search still answers when the model or the index cannot
            log.warning("admin text search failed: %s", exc)
            messages.warning(request, f"Search by meaning is unavailable ({exc}); showing word matches only.")
            return found, may_have_duplicates
        hits = result.products if self.model is Product else result.videos
        return found | queryset.filter(pk__in=[obj.pk for obj, _ in hits]), may_have_duplicates


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
        return thumbnail(url_of(obj) if obj.pk else None)


@admin.register(Product)
class ProductAdmin(TextSearchMixin, admin.ModelAdmin):
    list_display = ["title", "photo", "category", "price", "merchant", "status", "model_version", "created_at"]
    list_filter = ["status", category_filter(0, "category__parent__parent"), category_filter(1, "category__parent")]
    search_fields = ["title", "description", "sku"]
    autocomplete_fields = ["category"]
    readonly_fields = ["status", "error", "model_version", "indexed_at"]
    inlines = [ProductImageInline]
    actions = ["reindex", recompute_matches]

    def get_queryset(self, request):
        return (super().get_queryset(request).select_related("category", "merchant", "model_version")
                .prefetch_related("images").defer("detail"))

    @admin.display(description="photo")
    def photo(self, obj):
        image = next(iter(obj.images.all()), None)
        return thumbnail(url_of(image) if image else None, 56)

    @admin.action(description="Re-embed and re-index selected products", permissions=["change"])
    def reindex(self, request, queryset):
        self.message_user(request, f"{services.requeue(queryset)} products queued")
