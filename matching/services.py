"""Matching logic shared by the API, the admin, the Celery tasks and the commands.

Views and tasks stay thin: they call these functions.
"""
from __future__ import annotations

import functools
import hashlib
import io
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from django.conf import settings
from django.core.files.base import ContentFile
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone
from PIL import Image

from catalog.models import Category, IndexState, Product
from matching import vector_index
from matching.models import Keyframe, Match, MicroVideo, ModelVersion
from ml.video import VideoError, VideoInfo, probe_video, sample_frames

log = logging.getLogger(__name__)


class NoActiveModel(RuntimeError):
    """Raised when nothing can be embedded because no model version is active."""


class NotIndexed(ValueError):
    """Raised when a lookup needs an embedding that does not exist yet."""


class TextSearchUnavailable(RuntimeError):
    """Raised when the active model has no text query head (a bundle built without one)."""


# --- models and indexes ---------------------------------------------------------------------

def active_model_version() -> ModelVersion:
    version = ModelVersion.objects.filter(is_active=True).first()
    if version is None:
        raise NoActiveModel("no active model version: run `manage.py build_model` or `manage.py register_model`")
    return version


@functools.lru_cache(maxsize=2)
def _load_bundle(bundle_path: str, device: str):
    from ml.bundle import ModelBundle  # torch import deferred: the web process needs it for text search only

    log.info("loading model bundle %s on %s", bundle_path, device)
    return ModelBundle.load(bundle_path, device=device)


def get_bundle(version: ModelVersion):
    """The model of a version, loaded once per process (workers call it at start-up)."""
    return _load_bundle(version.bundle_path, settings.MVMATCH_DEVICE)


def product_index(version: ModelVersion) -> vector_index.ProductIndex:
    return vector_index.ProductIndex(_client(), version=version.name, dim=version.embed_dim,
                                     prefix=settings.MILVUS_COLLECTION_PREFIX)


def video_index(version: ModelVersion) -> vector_index.VideoIndex:
    return vector_index.VideoIndex(_client(), version=version.name, dim=version.embed_dim,
                                   prefix=settings.MILVUS_COLLECTION_PREFIX)


def _client():
    uri = settings.MILVUS_URI
    if "://" not in uri:
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
    return vector_index.connect(uri, settings.MILVUS_TOKEN)


def category_ids(category: Category | None) -> tuple[int, int, int]:
    """(upper, middle, lower) ids for the index's filter fields; -1 where unknown."""
    if category is None:
        return -1, -1, -1
    ids = {c.level: c.pk for c in (category, category.parent, category.parent.parent if category.parent else None) if c}
    return ids.get(0, -1), ids.get(1, -1), ids.get(2, -1)


# --- uploads --------------------------------------------------------------------------------

class DuplicateUpload(ValueError):
    """The publisher already uploaded this exact file."""

    def __init__(self, existing: MicroVideo):
        super().__init__(f"this video was already uploaded as video {existing.pk}")
        self.existing = existing


@dataclass
class CheckedUpload:
    sha256: str
    info: VideoInfo


def check_video_upload(uploaded) -> CheckedUpload:
    """Validate an uploaded video before anything is stored. Raises VideoError with the reason."""
    name = getattr(uploaded, "name", "") or ""
    if not name.lower().endswith(settings.MVMATCH_VIDEO_EXTENSIONS):
        raise VideoError(f"unsupported file type {Path(name).suffix or '(none)'}; "
                         f"allowed: {', '.join(settings.MVMATCH_VIDEO_EXTENSIONS)}")
    if uploaded.size == 0:
        raise VideoError("file is empty")
    if uploaded.size > settings.MVMATCH_MAX_UPLOAD_BYTES:
        raise VideoError(f"file is {uploaded.size} bytes; the limit is {settings.MVMATCH_MAX_UPLOAD_BYTES} bytes")
    digest = hashlib.sha256()
    for chunk in uploaded.chunks():
        digest.update(chunk)
    uploaded.seek(0)
    path = getattr(uploaded, "temporary_file_path", None)
    if path:
        info = _probe(path())
    else:  # small uploads live in memory: probe a temporary copy
        with tempfile.NamedTemporaryFile(suffix=Path(name).suffix) as tmp:
            for chunk in uploaded.chunks():
                tmp.write(chunk)
            tmp.flush()
            uploaded.seek(0)
            info = _probe(tmp.name)
    return CheckedUpload(sha256=digest.hexdigest(), info=info)


def upload_video(publisher, uploaded, caption: str = "", category: Category | None = None) -> MicroVideo:
    """Check and store an upload, then queue it. Raises VideoError or DuplicateUpload; stores nothing then."""
    checked = check_video_upload(uploaded)
    existing = MicroVideo.objects.filter(publisher=publisher, sha256=checked.sha256).first()
    if existing:
        raise DuplicateUpload(existing)
    try:
        with transaction.atomic():
            video = MicroVideo(publisher=publisher, caption=caption, category=category, sha256=checked.sha256,
                               size_bytes=uploaded.size, original_filename=uploaded.name,
                               duration=checked.info.duration, width=checked.info.width, height=checked.info.height)
            video.file.save(Path(uploaded.name).name, uploaded, save=False)
            video.save()
    except IntegrityError:  # the same upload raced in twice
        video.file.delete(save=False)
        raise DuplicateUpload(MicroVideo.objects.get(publisher=publisher, sha256=checked.sha256))
    queue_video(video)
    return video


def _probe(path: str) -> VideoInfo:
    return probe_video(path, max_bytes=settings.MVMATCH_MAX_UPLOAD_BYTES,
                       max_duration=settings.MVMATCH_MAX_VIDEO_SECONDS)


# --- ingestion ------------------------------------------------------------------------------

def _mark(obj, status: str, error: str = "") -> None:
    obj.status, obj.error = status, error
    obj.save(update_fields=["status", "error", "updated_at"])


def ingest_video(video_id: int) -> str:
    """Probe, sample, embed, index and suggest for one video. Idempotent; input faults mark it failed."""
    video = MicroVideo.objects.select_related("category").get(pk=video_id)
    version = active_model_version()
    if video.status == IndexState.INDEXED and video.model_version_id == version.pk:
        return video.status
    _mark(video, IndexState.PROCESSING)
    try:
        path = video.file.path
        info = _probe(path)
        sampled = sample_frames(path, settings.MVMATCH_FRAMES_PER_VIDEO, settings.MVMATCH_KEYFRAME_SIZE, info=info)
    except VideoError as exc:
        video_index(version).delete([video.pk])  # a re-processed video that now fails must not stay findable
        _mark(video, IndexState.FAILED, str(exc))
        return video.status
    bundle = get_bundle(version)
    embedded = bundle.embed_videos([sampled.frames], [video.caption])
    detail = embedded.details[0] if embedded.details else None
    video_index(version).upsert([video.pk], embedded.vectors[:1], *([i] for i in category_ids(video.category)))
    with transaction.atomic():
        _replace_keyframes(video, sampled.frames, sampled.timestamps, None if detail is None else detail.kept.tolist())
        video.duration, video.width, video.height = info.duration, info.width, info.height
        video.detail = None if detail is None else detail.to_bytes()
        video.predicted_category, video.predicted_confidence = _predicted_category(bundle, detail)
        video.model_version = version
        video.status, video.error, video.indexed_at = IndexState.INDEXED, "", timezone.now()
        video.save()
    suggest_products(video, settings.MVMATCH_SUGGESTIONS)
    return video.status


def _replace_keyframes(video: MicroVideo, frames: np.ndarray, timestamps: list[float],
                       salient: list[bool] | None) -> None:
    for old in video.keyframes.all():
        old.image.delete(save=False)
    video.keyframes.all().delete()
    for position, (frame, ts) in enumerate(zip(frames, timestamps)):
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="JPEG", quality=85)
        kf = Keyframe(video=video, position=position, timestamp=ts, salient=True if salient is None else salient[position])
        kf.image.save(f"v{video.pk}_{position}.jpg", ContentFile(buf.getvalue()), save=False)
        kf.save()


def _predicted_category(bundle, detail) -> tuple[Category | None, float | None]:
    predicted = bundle.two_stage.predicted_category(detail) if detail is not None else None
    if predicted is None:
        return None, None
    index, probability = predicted
    return Category.objects.filter(level=Category.Level.LOWER, level_index=index).first(), probability


def ingest_product(product_id: int) -> str:
    """Embed a product's photos and text, index it and record the videos it fits. Idempotent."""
    product = Product.objects.select_related("category__parent__parent").get(pk=product_id)
    version = active_model_version()
    if product.status == IndexState.INDEXED and product.model_version_id == version.pk:
        return product.status
    _mark(product, IndexState.PROCESSING)
    try:
        photos = [_load_photo(img.image) for img in product.images.all()]
    except (OSError, ValueError) as exc:
        _mark(product, IndexState.FAILED, f"could not read product photo: {exc}")
        return product.status
    if not photos:
        _mark(product, IndexState.FAILED, "product has no photo")
        return product.status
    embedded = get_bundle(version).embed_products([photos], [product.text])
    product_index(version).upsert([product.pk], embedded.vectors[:1], *([i] for i in category_ids(product.category)))
    product.detail = embedded.details[0].to_bytes() if embedded.details else None
    product.model_version = version
    product.status, product.error, product.indexed_at = IndexState.INDEXED, "", timezone.now()
    product.save()
    suggest_videos(product, settings.MVMATCH_SUGGESTIONS)
    return product.status


def _load_photo(field) -> np.ndarray:
    with field.open("rb") as fh, Image.open(fh) as img:
        return np.asarray(img.convert("RGB"))


# --- lookups --------------------------------------------------------------------------------

def suggest_products(video: MicroVideo, k: int, category: Category | None = None) -> list[Match]:
    """Top-k products for a video (ad suggestions), persisted as Match rows for review."""
    return _lookup(video, k, category, Match.Direction.VIDEO_TO_PRODUCT)


def suggest_videos(product: Product, k: int, category: Category | None = None) -> list[Match]:
    """Top-k micro-videos a product fits (placements), persisted as Match rows for review."""
    return _lookup(product, k, category, Match.Direction.PRODUCT_TO_VIDEO)


def _lookup(obj, k: int, category: Category | None, direction: str) -> list[Match]:
    """Rank the other side for obj and record the ranked list as Match rows."""
    from_video = direction == Match.Direction.VIDEO_TO_PRODUCT
    version, rows = rank_for(obj, k, category, from_video, settings.MVMATCH_RERANK_TOP_N)
    return _record(direction, version, {"video_id" if from_video else "product_id": obj.pk}, rows)


def rank_for(obj, k: int, category: Category | None, from_video: bool, rerank_top_n: int
             ) -> tuple[ModelVersion, list[tuple[int, int, float, float, int | None]]]:
    """Search the other side's collection with obj's stored vector (first stage) and reorder its top
    ``rerank_top_n`` with the model's second stage (ml.two_stage; 0: index order). Returns the version
    and the top-k rows (video, product, score, index score, driving frame); writes nothing."""
    version = _indexed_version(obj)
    source, target = (video_index, product_index) if from_video else (product_index, video_index)
    vector = source(version).get([obj.pk]).get(obj.pk)
    if vector is None:
        raise NotIndexed(f"{obj._meta.verbose_name} {obj.pk} has no vector for model {version.name}")
    second = _second_stage(version, obj) if rerank_top_n else None
    hits = target(version).search(vector[None], max(k, rerank_top_n) if second else k, **_filter(category))[0]
    ranked = _rerank_lookup(second, version, obj, hits, from_video) if second and hits else None
    if ranked is None:
        ranked = [(h.id, h.score, h.score, None) for h in hits]
    else:
        ranked = [(row.pk, score, first, frame) for row, score, first, frame in ranked]
    return version, [(obj.pk, cid, score, first, frame) if from_video else (cid, obj.pk, score, first, frame)
                     for cid, score, first, frame in ranked[:k]]


def _second_stage(version: ModelVersion, obj):
    """The version's second stage, if it has one and obj has its stored features."""
    if obj.detail is None:
        return None
    return get_bundle(version).two_stage


def _rerank_lookup(second, version: ModelVersion, obj, hits, from_video: bool):
    """`_rerank` of a video's product candidates or a product's video candidates."""
    from ml.two_stage import ProductDetail, VideoDetail

    if from_video:
        query = VideoDetail.from_bytes(obj.detail)
        return _rerank(version, hits, Product, lambda products, first: second.rank_products(
            query, [ProductDetail.from_bytes(p.detail) for p in products],
            [category_levels(p.category) for p in products], first))
    query = ProductDetail.from_bytes(obj.detail)
    return _rerank(version, hits, MicroVideo, lambda videos, first: second.rank_videos(
        query, [VideoDetail.from_bytes(v.detail) for v in videos], first, [category_levels(obj.category)]))


def _rerank(version: ModelVersion, hits, model, rank) -> list[tuple[object, float, float, int | None]] | None:
    """The index's candidates (rows of ``model``) reordered by ``rank(rows, index scores) -> ml.two_stage.Ranked``,
    as (row, final score, index score, driving frame), best first; None if a candidate lacks this version's
    stored features (a build without a second stage, or re-embedded by another version since): index order then."""
    rows = model.objects.filter(pk__in=[h.id for h in hits])
    if model is Product:
        rows = rows.select_related("category__parent__parent")  # category_levels walks up the tree
    found = {row.pk: row for row in rows}
    hits = [h for h in hits if h.id in found]  # the index may name rows deleted since
    if not hits or any(found[h.id].detail is None or found[h.id].model_version_id != version.pk for h in hits):
        return None
    candidates = [found[h.id] for h in hits]
    ranked = rank(candidates, [h.score for h in hits])
    frame = ranked.frame
    return [(candidates[i], float(ranked.score[i]), hits[i].score, None if frame is None else int(frame[i]))
            for i in ranked.order.tolist()]


def category_levels(category: Category | None) -> tuple[int, int, int]:
    """(upper, middle, lower) positions of a category's path in its levels (the model's class indices); -1 unknown."""
    out = [-1, -1, -1]
    while category is not None:
        out[category.level] = category.level_index
        category = category.parent
    return tuple(out)


@dataclass
class TextSearchResult:
    products: list[tuple[Product, float]]  # best first, with cosine scores
    videos: list[tuple[MicroVideo, float]]


def search_text(query: str, k: int, category: Category | None = None) -> TextSearchResult:
    """Products and micro-videos for a free-text query, through the active model's query head and
    the same Milvus collections the suggestions use."""
    query = query.strip()
    if not query:
        raise ValueError("the query is empty")
    version = active_model_version()
    bundle = get_bundle(version)
    if bundle.text_query is None:
        raise TextSearchUnavailable(f"model {version.name} has no text query head: rebuild or register one with it")
    embedded = bundle.embed_text_query(query, detail=bool(settings.MVMATCH_RERANK_TOP_N))
    found = {}
    for model, index in ((Product, product_index), (MicroVideo, video_index)):
        rerank = model is MicroVideo and embedded.details is not None  # the re-ranking head scores videos vs text
        hits = index(version).search(embedded.vectors, max(k, settings.MVMATCH_RERANK_TOP_N) if rerank else k,
                                     **_filter(category))[0]
        ranked = _rerank_text(bundle.two_stage, version, embedded.details[0], hits) if rerank and hits else None
        if ranked is not None:
            found[model] = [(row, score) for row, score, _, _ in ranked[:k]]
        else:
            live = model.objects.in_bulk([h.id for h in hits])  # the index may name rows deleted since
            found[model] = [(live[h.id], h.score) for h in hits if h.id in live][:k]
    return TextSearchResult(found[Product], found[MicroVideo])


def _rerank_text(second, version: ModelVersion, query, hits):
    from ml.two_stage import VideoDetail

    return _rerank(version, hits, MicroVideo, lambda videos, first: second.rank_videos(
        query, [VideoDetail.from_bytes(v.detail) for v in videos], first))


def _indexed_version(obj) -> ModelVersion:
    if obj.status != IndexState.INDEXED or obj.model_version is None:
        raise NotIndexed(f"{obj._meta.verbose_name} {obj.pk} is {obj.status}, not indexed yet")
    return obj.model_version


def _filter(category: Category | None) -> dict:
    if category is None:
        return {}
    return {("upper_id", "middle_id", "lower_ids")[category.level]: category.pk if category.level < 2 else [category.pk]}


@transaction.atomic
def _record(direction: str, version: ModelVersion, anchor: dict,
            rows: list[tuple[int, int, float, float, int | None]]) -> list[Match]:
    """Upsert the ranked list of one query, rows = (video, product, score, index score, driving frame);
    reviewed decisions are kept, pending rows that fell out are removed."""
    # Ids from the index may name rows deleted since; keep only live ones.
    live_videos = set(MicroVideo.objects.filter(pk__in={r[0] for r in rows}).values_list("pk", flat=True))
    live_products = set(Product.objects.filter(pk__in={r[1] for r in rows}).values_list("pk", flat=True))
    rows = [r for r in rows if r[0] in live_videos and r[1] in live_products]
    matches = []
    for rank, (video_id, product_id, score, index_score, frame) in enumerate(rows, start=1):
        match, _ = Match.objects.update_or_create(
            video_id=video_id, product_id=product_id, direction=direction, model_version=version,
            defaults={"score": float(score), "index_score": float(index_score), "frame_position": frame, "rank": rank},
        )
        matches.append(match)
    Match.objects.filter(**anchor, direction=direction, model_version=version,
                         status=Match.Review.PENDING).exclude(pk__in=[m.pk for m in matches]).delete()
    return matches


def review(matches: QuerySet[Match], user, status: str) -> int:
    """Approve or reject; who decided and when is kept on each row."""
    if status not in (Match.Review.APPROVED, Match.Review.REJECTED):
        raise ValueError(f"unknown review status {status!r}")
    return matches.update(status=status, reviewed_by=user, reviewed_at=timezone.now())


# --- queueing and deletion ------------------------------------------------------------------

def requeue(queryset) -> int:
    """Mark products or videos queued and send them to the workers again (admin actions, `reindex`)."""
    queue = queue_product if queryset.model is Product else queue_video
    ids = list(queryset.values_list("pk", flat=True))
    queryset.model.objects.filter(pk__in=ids).update(status=IndexState.QUEUED, error="")
    for obj in queryset.model.objects.filter(pk__in=ids):
        queue(obj)
    return len(ids)


def queue_video(video: MicroVideo) -> None:
    """Send the video to the workers once the row is committed (a worker must be able to read it)."""
    from workers.tasks import ingest_video as task

    transaction.on_commit(lambda: task.delay(video.pk))


def queue_product(product: Product) -> None:
    from workers.tasks import ingest_product as task

    transaction.on_commit(lambda: task.delay(product.pk))


def delete_video(video: MicroVideo) -> None:
    """Remove the video's vectors from every model's index, then its row and files."""
    for version in ModelVersion.objects.all():
        video_index(version).delete([video.pk])
    for kf in video.keyframes.all():
        kf.image.delete(save=False)
    video.file.delete(save=False)
    video.delete()


def delete_product(product: Product) -> None:
    for version in ModelVersion.objects.all():
        product_index(version).delete([product.pk])
    for img in product.images.all():
        img.image.delete(save=False)
    product.delete()
