from django.contrib import admin
from django.utils.html import format_html

from catalog.admin import TextSearchMixin, category_filter, keyframe_strip, thumbnail
from matching import services
from matching.admin_actions import recompute_matches
from matching.media import url_of
from matching.models import Keyframe, Match, MatchDecision, MicroVideo, ModelVersion

admin.site.index_template = "admin/mvmatch_index.html"  # the front page starts with the system's health


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ["name", "is_active", "embed_dim", "bundle_path", "created_at"]
    readonly_fields = ["metrics"]


class KeyframeInline(admin.TabularInline):
    model = Keyframe
    extra = 0
    fields = ["preview", "position", "timestamp", "salient"]
    readonly_fields = fields
    can_delete = False

    @admin.display(description="keyframe")
    def preview(self, obj):
        return thumbnail(url_of(obj), 128)


@admin.register(MicroVideo)
class MicroVideoAdmin(TextSearchMixin, admin.ModelAdmin):
    list_display = ["id", "frames", "caption_short", "predicted", "publisher", "status", "error", "duration",
                    "created_at"]
    list_filter = ["status", "model_version"]
    search_fields = ["caption", "original_filename"]
    readonly_fields = ["sha256", "size_bytes", "duration", "width", "height", "status", "error", "model_version",
                       "predicted_category", "predicted_confidence", "indexed_at"]
    inlines = [KeyframeInline]
    actions = ["reindex", recompute_matches]

    def get_queryset(self, request):
        return (super().get_queryset(request).select_related("publisher", "predicted_category")
                .prefetch_related("keyframes").defer("detail"))

    @admin.display(description="keyframes")
    def frames(self, obj):
        return keyframe_strip(obj, 40)

    @admin.display(description="predicted category", ordering="predicted_category__path")
    def predicted(self, obj):
        if obj.predicted_category is None:
            return "—"
        return f"{obj.predicted_category.path} ({100 * obj.predicted_confidence:.0f} %)"

    @admin.display(description="caption")
    def caption_short(self, obj):
        return obj.caption[:60]

    @admin.action(description="Re-process selected videos", permissions=["change"])
    def reindex(self, request, queryset):
        self.message_user(request, f"{services.requeue(queryset)} videos queued")


class ScoreFilter(admin.SimpleListFilter):
    title = "score"
    parameter_name = "score"
    BANDS = {"high": (0.8, None), "mid": (0.5, 0.8), "low": (None, 0.5)}

    def lookups(self, request, model_admin):
        return [("high", "≥ 0.8"), ("mid", "0.5 – 0.8"), ("low", "< 0.5")]

    def queryset(self, request, queryset):
        if self.value() not in self.BANDS:
            return queryset
        low, high = self.BANDS[self.value()]
        if low is not None:
            queryset = queryset.filter(score__gte=low)
        if high is not None:
            queryset = queryset.filter(score__lt=high)
        return queryset


class MatchDecisionInline(admin.TabularInline):
    """The match's decision history (audit): read-only, newest first."""

    model = MatchDecision
    extra = 0
    fields = readonly_fields = ["decided_at", "username", "before", "after"]
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(MatchDecision)
class MatchDecisionAdmin(admin.ModelAdmin):
    """Every review decision: who, when, from what to what. Written only by services.review."""

    list_display = ["decided_at", "username", "match", "before", "after"]
    list_filter = ["after", "username"]
    readonly_fields = ["match", "user", "username", "decided_at", "before", "after"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Match)
class MatchAdmin(admin.ModelAdmin):
    """Review queue: the video's keyframes and the product's photo side by side."""

    list_display = ["video_frames", "product_photo", "product_title", "category", "score_display", "rank",
                    "direction", "model_version", "status", "reviewed_by", "reviewed_at"]
    list_filter = ["status", "direction", ScoreFilter, category_filter(0, "product__category__parent__parent"),
                   category_filter(1, "product__category__parent"), "model_version"]
    search_fields = ["product__title", "video__caption"]
    readonly_fields = ["video", "product", "direction", "score", "index_score", "frame_position", "rank",
                       "model_version", "status", "reviewed_by", "reviewed_at", "side_by_side"]
    fields = ["side_by_side", "video", "product", "direction", "score", "index_score", "frame_position", "rank",
              "model_version", "status", "reviewed_by", "reviewed_at"]
    actions = ["approve", "reject"]
    inlines = [MatchDecisionInline]
    list_per_page = 25

    def get_queryset(self, request):
        return (super().get_queryset(request)
                .select_related("video", "product__category", "model_version", "reviewed_by")
                .defer("video__detail", "product__detail")
                .prefetch_related("video__keyframes", "product__images"))

    def has_add_permission(self, request):
        return False  # matches come from the model, not from hand entry

    @admin.display(description="video keyframes")
    def video_frames(self, obj):
        return keyframe_strip(obj.video, 48, obj.frame_position)

    @admin.display(description="product photo")
    def product_photo(self, obj):
        image = next(iter(obj.product.images.all()), None)
        return thumbnail(url_of(image) if image else None, 72)

    @admin.display(description="product", ordering="product__title")
    def product_title(self, obj):
        return obj.product.title

    @admin.display(description="category", ordering="product__category__path")
    def category(self, obj):
        return obj.product.category.path

    @admin.display(description="score", ordering="score")
    def score_display(self, obj):
        return format_html("{}", f"{obj.score:.3f}")

    @admin.display(description="side by side")
    def side_by_side(self, obj):
        image = next(iter(obj.product.images.all()), None)
        return format_html('<div style="display:flex;gap:24px;align-items:flex-start">'
                           '<div><b>video {}</b><br>{}<p>{}</p></div><div><b>{}</b><br>{}</div></div>',
                           obj.video_id, keyframe_strip(obj.video, 128, obj.frame_position), obj.video.caption,
                           obj.product.title, thumbnail(url_of(image) if image else None, 256))

    @admin.action(description="Approve selected matches", permissions=["change"])
    def approve(self, request, queryset):
        n = services.review(queryset, request.user, Match.Review.APPROVED)
        self.message_user(request, f"{n} matches approved")

    @admin.action(description="Reject selected matches", permissions=["change"])
    def reject(self, request, queryset):
        n = services.review(queryset, request.user, Match.Review.REJECTED)
        self.message_user(request, f"{n} matches rejected")
