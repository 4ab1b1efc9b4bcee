from django.conf import settings
from rest_framework import serializers

from catalog.serializers import CategoryField
from matching.models import Keyframe, Match, MicroVideo


def _media_url(obj, context) -> str | None:
    from matching.media import url_of

    return url_of(obj, context.get("request"))


class PrivateFileField(serializers.FileField):
    """An upload on the way in; on the way out the URL of the view that serves it after a permission check."""

    def to_representation(self, value) -> str | None:
        return _media_url(value.instance, self.context) if value else None


class KeyframeSerializer(serializers.ModelSerializer):
    image = serializers.SerializerMethodField(help_text="Served after a permission check (matching.media).")

    class Meta:
        model = Keyframe
        fields = ["position", "timestamp", "image", "salient"]

    def get_image(self, obj) -> str | None:
        return _media_url(obj, self.context)


class MicroVideoSerializer(serializers.ModelSerializer):
    """A micro-video. Uploaded with POST; afterwards only ``published`` changes (PATCH)."""

    file = PrivateFileField(help_text="The video (multipart upload); read back as the URL that serves it.")
    category = CategoryField(required=False, allow_null=True, help_text="Optional category hint.")
    keyframes = KeyframeSerializer(many=True, read_only=True)
    model_version = serializers.StringRelatedField(allow_null=True)
    predicted_category = serializers.SlugRelatedField(slug_field="path", read_only=True, allow_null=True,
                                                      help_text="Category the model predicts from frames and caption.")

    class Meta:
        model = MicroVideo
        fields = ["id", "file", "caption", "category", "published", "predicted_category", "predicted_confidence",
                  "status", "error", "duration", "width", "height", "size_bytes", "keyframes", "model_version",
                  "created_at", "indexed_at"]
        read_only_fields = ["status", "error", "duration", "width", "height", "size_bytes", "model_version",
                            "predicted_confidence", "created_at", "indexed_at"]
        extra_kwargs = {"caption": {"allow_blank": True, "required": False, "trim_whitespace": True},
                        "published": {"required": False}}

    def get_fields(self):
        fields = super().get_fields()
        if self.instance is not None:  # an uploaded video's content is fixed: only its visibility changes
            for name, field in fields.items():
                if name != "published":
                    field.read_only = True
        return fields

    def validate_caption(self, value: str) -> str:
        limit = settings.MVMATCH_MAX_CAPTION_CHARS
        if len(value) > limit:
            raise serializers.ValidationError(f"caption is {len(value)} characters; the limit is {limit}")
        return value


class VideoPublishSerializer(serializers.Serializer):
    """What a publisher changes on an uploaded video (PATCH): whether merchants may see it."""

    published = serializers.BooleanField()


class ProductSummarySerializer(serializers.Serializer):
    """A product as a hit: what a publisher sees of a suggested product."""

    id = serializers.IntegerField()
    title = serializers.CharField()
    price = serializers.DecimalField(max_digits=10, decimal_places=2)
    category = serializers.CharField(source="category.path", help_text="Category path.")
    image = serializers.SerializerMethodField(help_text="First photo, served after a permission check.")

    def get_image(self, product) -> str | None:
        image = next(iter(product.images.all()), None)
        return _media_url(image, self.context) if image else None


class VideoSummarySerializer(serializers.Serializer):
    """A micro-video as a hit (only videos the caller may see are ever summarised)."""

    id = serializers.IntegerField()
    caption = serializers.CharField()
    duration = serializers.FloatField(allow_null=True)


def product_summary(p, request) -> dict:
    return ProductSummarySerializer(p, context={"request": request}).data


def video_summary(v) -> dict:
    return VideoSummarySerializer(v).data


class _HitSerializer(serializers.Serializer):
    rank = serializers.IntegerField()
    score = serializers.FloatField(help_text="Final ranking score (index cosine, re-ranked where the model has a "
                                             "second stage).")
    index_score = serializers.FloatField(help_text="Cosine similarity of the two embeddings (first stage).")
    frame_position = serializers.IntegerField(allow_null=True, help_text="Keyframe that drove the match.")
    frame_timestamp = serializers.FloatField(allow_null=True, help_text="Where that keyframe is in the video (s): "
                                                                        "the moment to place the product.")
    model_version = serializers.CharField(source="model_version.name")
    review = serializers.CharField(allow_null=True, help_text="Decision on record for this pair, if any.")


class ProductHitSerializer(_HitSerializer):
    """One ranked ad suggestion for a video."""

    product = ProductSummarySerializer()


class VideoHitSerializer(_HitSerializer):
    """One ranked micro-video for a product."""

    video = VideoSummarySerializer()


class MatchSerializer(serializers.ModelSerializer):
    """A row of the review queue."""

    model_version = serializers.StringRelatedField()

    class Meta:
        model = Match
        fields = ["id", "video", "product", "direction", "rank", "score", "index_score", "frame_position", "status",
                  "model_version", "reviewed_at"]


class HealthSerializer(serializers.Serializer):
    ok = serializers.BooleanField()
    database = serializers.DictField(required=False)
    index = serializers.DictField(required=False)
    broker = serializers.DictField(required=False)
    workers = serializers.DictField(required=False)
    queue = serializers.DictField(required=False, allow_null=True)


class LookupParams(serializers.Serializer):
    k = serializers.IntegerField(min_value=1, max_value=100, default=settings.MVMATCH_SUGGESTIONS)
    category = CategoryField(required=False, help_text="Restrict results to this category's subtree.")


class TextSearchParams(LookupParams):
    q = serializers.CharField(max_length=500, help_text="Free text, e.g. `navy striped backpack`.")


class ScoredProductSerializer(serializers.Serializer):
    score = serializers.FloatField()
    product = ProductSummarySerializer()


class ScoredVideoSerializer(serializers.Serializer):
    score = serializers.FloatField()
    video = VideoSummarySerializer()


class TextSearchSerializer(serializers.Serializer):
    query = serializers.CharField()
    products = ScoredProductSerializer(many=True)
    videos = ScoredVideoSerializer(many=True)
