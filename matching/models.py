"""Micro-videos, their keyframes, the model versions that embed them, and the matches staff review."""
from django.conf import settings
from django.db import models
from django.db.models import Q

from catalog.models import Category, Product
from matching.indexing import IndexedItem


class ModelVersion(models.Model):
    """A trained model bundle (encoder + instance towers). Each vector in the index was made by one."""

    name = models.CharField(max_length=100, unique=True)
    bundle_path = models.CharField(max_length=500, help_text="Directory holding the checkpoints (see ml.serving.bundle).")
    embed_dim = models.PositiveIntegerField()
    is_active = models.BooleanField(default=False)
    metrics = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["is_active"], condition=Q(is_active=True), name="one_active_model_version")
        ]

    def __str__(self) -> str:
        return self.name + (" (active)" if self.is_active else "")


class MicroVideo(IndexedItem):
    publisher = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="videos")
    file = models.FileField(upload_to="videos/%Y/%m/")
    original_filename = models.CharField(max_length=255, blank=True)
    caption = models.TextField(blank=True, help_text="Caption and hashtags as the publisher wrote them.")
    sha256 = models.CharField(max_length=64)
    size_bytes = models.BigIntegerField(default=0)
    duration = models.FloatField(null=True, blank=True)
    width = models.PositiveIntegerField(null=True, blank=True)
    height = models.PositiveIntegerField(null=True, blank=True)
    category = models.ForeignKey(
        Category, null=True, blank=True, on_delete=models.SET_NULL, related_name="videos",
        help_text="Optional category hint from the publisher.",
    )
    predicted_category = models.ForeignKey(
        Category, null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="Most likely lower category, predicted by the model from frames and caption.",
    )
    predicted_confidence = models.FloatField(null=True, blank=True)
    published = models.BooleanField(
        default=False, help_text="Set by the publisher: merchants' lookups and text search show published videos only.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    processing_fields = IndexedItem.processing_fields + (
        "duration", "width", "height", "predicted_category", "predicted_confidence")

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["publisher", "sha256"], name="video_unique_upload_per_publisher")]

    def __str__(self) -> str:
        return f"video {self.pk}: {self.caption[:40] or self.original_filename}"


class Keyframe(models.Model):
    video = models.ForeignKey(MicroVideo, on_delete=models.CASCADE, related_name="keyframes")
    position = models.PositiveSmallIntegerField()
    timestamp = models.FloatField()
    image = models.ImageField(upload_to="keyframes/%Y/%m/")
    salient = models.BooleanField(default=True, help_text="Pooled into the video's stored embedding (salient frame).")

    class Meta:
        ordering = ["video", "position"]
        constraints = [models.UniqueConstraint(fields=["video", "position"], name="keyframe_unique_position")]


class Match(models.Model):
    class Direction(models.TextChoices):
        VIDEO_TO_PRODUCT = "v2p", "video → product (ad suggestion)"
        PRODUCT_TO_VIDEO = "p2v", "product → video (placement)"

    class Review(models.TextChoices):
        PENDING = "pending"
        APPROVED = "approved"
        REJECTED = "rejected"

    video = models.ForeignKey(MicroVideo, on_delete=models.CASCADE, related_name="matches")
    product = models.ForeignKey(Product, on_delete=models.CASCADE, related_name="matches")
    direction = models.CharField(max_length=3, choices=Direction.choices)
    score = models.FloatField(help_text="Ranking score: the index cosine plus re-ranking and category boost where on.")
    index_score = models.FloatField(null=True, blank=True,
                                    help_text="Cosine similarity of the two instance embeddings (first stage).")
    frame_position = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="Keyframe that drove the match (highest re-ranking weight, or most salient).")
    rank = models.PositiveSmallIntegerField(help_text="1 = best, within the query's list.")
    model_version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="matches")
    status = models.CharField(max_length=10, choices=Review.choices, default=Review.PENDING)
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="reviewed_matches"
    )
    reviewed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "matches"
        ordering = ["video", "direction", "rank"]
        constraints = [
            models.UniqueConstraint(
                fields=["video", "product", "direction", "model_version"], name="match_unique_pair_per_model"
            ),
            models.CheckConstraint(condition=Q(rank__gte=1), name="match_rank_positive"),
            models.CheckConstraint(
                condition=Q(status="pending", reviewed_at__isnull=True)
                | Q(status__in=["approved", "rejected"], reviewed_at__isnull=False),
                name="match_review_recorded",
            ),
        ]
        indexes = [models.Index(fields=["status", "score"])]

    def __str__(self) -> str:
        return f"{self.video_id} ↔ {self.product_id} ({self.get_direction_display()}, #{self.rank})"


class MatchDecision(models.Model):
    """One review decision on a match, kept for audit: who changed it, when, from what to what."""

    match = models.ForeignKey(Match, on_delete=models.CASCADE, related_name="decisions")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    username = models.CharField(max_length=150, help_text="Kept if the account is deleted later.")
    decided_at = models.DateTimeField(auto_now_add=True)
    before = models.CharField(max_length=10, choices=Match.Review.choices)
    after = models.CharField(max_length=10, choices=Match.Review.choices)

    class Meta:
        ordering = ["-decided_at", "-id"]

    def __str__(self) -> str:
        return f"{self.username}: {self.before} → {self.after} ({self.decided_at:%Y-%m-%d %H:%M})"


class WorkerHeartbeat(models.Model):
    """A running Celery worker's sign of life, written by the worker itself every few seconds (workers.celery).

    Kept in the database so that health checks, uploads and the reconciler can tell whether anything
    will process the queue and whose claims are dead, whatever the broker."""

    worker = models.CharField(max_length=100, unique=True, help_text="Worker instance: node name and process id.")
    hostname = models.CharField(max_length=100, help_text="Celery node name (celery@host).")
    queues = models.CharField(max_length=200, blank=True)
    started_at = models.DateTimeField()
    last_seen = models.DateTimeField()

    class Meta:
        ordering = ["hostname", "worker"]

    def __str__(self) -> str:
        return self.worker
