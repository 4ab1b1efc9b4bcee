from django.conf import settings
from rest_framework import serializers

from catalog.serializers import CategoryField
from matching.models import Keyframe, Match, MicroVideo


class KeyframeSerializer(serializers.ModelSerializer):
    class Meta:
        model = Keyframe
        fields = ["position", "timestamp", "image", "salient"]


class MicroVideoSerializer(serializers.ModelSerializer):
    category = CategoryField(required=False, allow_null=True, help_text="Optional category hint.")
    keyframes = KeyframeSerializer(many=True, read_only=True)
    model_version = serializers.StringRelatedField()
    predicted_category = serializers.SlugRelatedField(slug_field="path", read_only=True,
                                                      help_text="Category the model predicts from frames and caption.")

    class Meta:
        model = MicroVideo
        fields = ["id", "file", "caption", "category", "predicted_category", "predicted_confidence", "status", "error",
                  "duration", "width", "height", "size_bytes", "keyframes", "model_version", "created_at", "indexed_at"]
        read_only_fields = ["status", "error", "duration", "width", "height", "size_bytes", "model_version",
                            "predicted_confidence", "created_at", "indexed_at"]
        extra_kwargs = {"caption": {"allow_blank": True, "required": False, "trim_whitespace": True}}

    def validate_caption(self, value: str) -> str:
        limit = settings.MVMATCH_MAX_CAPTION_CHARS
        if len(value) > limit:
            raise serializers.ValidationError(f"caption is {len(value)} characters; the limit is {limit}")
        return value


def product_summary(p, request) -> dict:
    image = p.images.first()
    return {"id": p.pk, "title": p.title, "price": str(p.price), "category": p.category.path,
            "image": request.build_absolute_uri(image.image.url) if image else None}


def video_summary(v) -> dict:
    return {"id": v.pk, "caption": v.caption, "duration": v.duration}


class ProductHitSerializer(serializers.ModelSerializer):
    """One ranked ad suggestion for a video."""

    product = serializers.SerializerMethodField()

    class Meta:
        model = Match
        fields = ["rank", "score", "index_score", "frame_position", "product", "status", "model_version"]

    def get_product(self, match):
        return product_summary(match.product, self.context["request"])


class VideoHitSerializer(serializers.ModelSerializer):
    """One ranked micro-video for a product."""

    video = serializers.SerializerMethodField()

    class Meta:
        model = Match
        fields = ["rank", "score", "index_score", "frame_position", "video", "status", "model_version"]

    def get_video(self, match):
        return video_summary(match.video)


class LookupParams(serializers.Serializer):
    k = serializers.IntegerField(min_value=1, max_value=100, default=settings.MVMATCH_SUGGESTIONS)
    category = CategoryField(required=False, help_text="Restrict results to this category's subtree.")


class TextSearchParams(LookupParams):
    q = serializers.CharField(max_length=500, help_text="Free text, e.g. `navy striped backpack`.")


class ScoredProductSerializer(serializers.Serializer):
    score = serializers.FloatField()
    product = serializers.DictField()


class ScoredVideoSerializer(serializers.Serializer):
    score = serializers.FloatField()
    video = serializers.DictField()


class TextSearchSerializer(serializers.Serializer):
    query = serializers.CharField()
    products = ScoredProductSerializer(many=True)
    videos = ScoredVideoSerializer(many=True)
